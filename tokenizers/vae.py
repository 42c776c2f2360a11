"""Subgoal latent codec: a FLUX-style ``diffusers.AutoencoderKL`` plus 2×2 latent patchify.

Latents are normalised as ``(z - shift_factor) * scaling_factor`` (FLUX: shift 0.1159, scale
0.3611), and every ``patch_size × patch_size`` latent patch becomes one generation token, so with
the FLUX VAE (8× downsample) one token covers 16×16 pixels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from emcot.io_utils import AT_LEAST_ONE, POSITIVE, check_fields, dataclass_from_dict

if TYPE_CHECKING:
    # The defining module, not the package root: under TYPE_CHECKING diffusers' __init__ binds the
    # name to a torch-less dummy, which has none of the nn.Module / VAE methods.
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of the autoencoder and geometry of the subgoal latents.

    ``image_size`` is the (H, W) subgoal resolution; both sides must be multiples of
    ``downsample * patch_size``. ``sample_posterior``: draw ``z`` from the posterior instead of
    taking its mean while the codec is in training mode (BAGEL samples in training).
    """

    latent_channels: int = 16
    scaling_factor: float = 0.3611
    shift_factor: float = 0.1159
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    image_size: tuple[int, int] = (256, 256)
    patch_size: int = 2
    sample_posterior: bool = True
    mid_block_attention: bool = True
    use_quant_conv: bool = False

    def __post_init__(self) -> None:
        check_fields(self, scaling_factor=POSITIVE, norm_num_groups=AT_LEAST_ONE)
        if not self.block_out_channels:
            raise ValueError("VAEConfig.block_out_channels needs at least one entry.")
        bad_groups = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad_groups:
            raise ValueError(
                f"VAEConfig: norm_num_groups ({self.norm_num_groups}) must divide every block_out_channels "
                f"entry; {bad_groups} do not."
            )
        if self.latent_channels < 1 or self.patch_size < 1 or self.layers_per_block < 1:
            raise ValueError("VAEConfig: latent_channels, patch_size and layers_per_block must be >= 1.")
        if self.scaling_factor <= 0:
            raise ValueError(f"VAEConfig.scaling_factor must be positive, got {self.scaling_factor}.")
        unit = self.downsample * self.patch_size
        if any(s < unit or s % unit for s in self.image_size):
            raise ValueError(
                f"VAEConfig.image_size {self.image_size} must be positive multiples of downsample*patch_size "
                f"= {unit} px (one latent token)."
            )

    @property
    def downsample(self) -> int:
        """Pixel-to-latent stride: ``2 ** (len(block_out_channels) - 1)``."""
        return 2 ** (len(self.block_out_channels) - 1)

    def replace(self, **changes: Any) -> VAEConfig:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["block_out_channels"] = list(self.block_out_channels)
        out["image_size"] = list(self.image_size)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise so typos are not silently dropped."""
        return dataclass_from_dict(cls, data, label="unknown keys", where=" for VAEConfig")

    @classmethod
    def flux(cls, image_size: tuple[int, int] = (256, 256)) -> VAEConfig:
        """The FLUX.1 AutoencoderKL (84 M parameters, 16 latent channels, 8× downsample)."""
        return cls(image_size=image_size)

    @classmethod
    def tiny(cls, image_size: tuple[int, int] = (32, 32)) -> VAEConfig:
        """A ~180 k-parameter VAE (2× downsample, ~4 ms encode+decode at 32 px on CPU); 64-wide tokens like FLUX."""
        return cls(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, image_size=image_size)

    @classmethod
    def small(cls, image_size: tuple[int, int] = (64, 64)) -> VAEConfig:
        """A 0.96 M-parameter VAE for CPU policies: 4× downsample, 8 latent channels (6× compression).

        At 64 px a frame is a 16×16×8 latent, 64 generation tokens of 32 values. Widths chosen by
        measurement on 2 CPU cores (64 px; encode / decode of one frame; one AdamW step at batch 16):
        (16, 32, 64): 0.69 M, 2.9 / 5.5 ms, 0.22 s; **(32, 64, 64): 0.96 M, 3.9–4.7 / 8.7–9.6 ms,
        0.34–0.43 s**; (32, 64, 128): 2.7 M, 5.5 / 11.0 ms, 0.53 s. The chosen one trains to 36.4 dB
        PSNR on held-out Meta-World ``corner2`` episodes in 1500 steps (12 min; the mean frame scores
        20.8 dB), and its 14 ms round trip leaves the control loop's budget to the transformer.
        Its scale/shift are the FLUX placeholders until ``emcot.training.codec.calibrated`` fits them.

        The policy's subgoal targets are posterior *means* (``sample_posterior=False``): with the
        tiny KL weight a Meta-World codec uses 2–3 of its 8 channels, and the posterior std of the
        rest stays ≈ 1 (0.5–0.7 on the used ones) against a mean std of 0.03–0.8. Sampled targets
        were dominated by that noise — their std was 2.46 after calibrating the means to 1, and a
        stage-1 run's subgoal loss stalled at ~3.8 against 7.2 for predicting zero — while the
        decoder reconstructs means and samples alike (37.0 vs 36.5 dB).
        """
        return cls(
            latent_channels=8,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            norm_num_groups=8,
            image_size=image_size,
            sample_posterior=False,
        )

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the equivalent ``diffusers.AutoencoderKL``."""
        depth = len(self.block_out_channels)
        return dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * depth,
            up_block_types=("UpDecoderBlock2D",) * depth,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            act_fn="silu",
            latent_channels=self.latent_channels,
            norm_num_groups=self.norm_num_groups,
            sample_size=max(self.image_size),
            scaling_factor=self.scaling_factor,
            shift_factor=self.shift_factor,
            force_upcast=False,
            use_quant_conv=self.use_quant_conv,
            use_post_quant_conv=self.use_quant_conv,
            mid_block_add_attention=self.mid_block_attention,
        )


def resize_rgb(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Validated uint8 (H, W, 3) image, bicubically resized to ``size_hw`` (unchanged when already that size)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(
            f"image must be a uint8 numpy array (H, W, 3), got {getattr(image, 'dtype', type(image).__name__)}."
        )
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"image must have shape (H, W, 3) RGB, got {image.shape}.")
    height, width = size_hw
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))


def to_unit_range(image: np.ndarray) -> Tensor:
    """uint8 (H, W, 3) → float [3, H, W] in [-1, 1], the VAE's input range."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 127.5 - 1.0


class LatentCodec(nn.Module):
    """Pixels ⇄ normalised VAE latents ⇄ generation tokens. Frozen unless ``trainable=True``.

    Token layout (BAGEL's, so its ``vae2llm`` weights apply unchanged): tokens are latent patches in
    row-major order, each flattened channels-last, element ``(i * p + j) * C + c``.
    """

    def __init__(self, vae: AutoencoderKL, config: VAEConfig, trainable: bool = False) -> None:
        super().__init__()
        self.config = config
        self.vae = vae
        self.vae.requires_grad_(trainable)

    @classmethod
    def from_config(cls, config: VAEConfig, trainable: bool = False) -> LatentCodec:
        """Randomly initialised codec with the architecture of ``config``."""
        # diffusers is imported on first use: it takes seconds, and `import emcot` should not.
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

        return cls(AutoencoderKL(**config.diffusers_kwargs()), config, trainable)

    @classmethod
    def from_pretrained(cls, folder: str | Path, trainable: bool = False, **overrides: Any) -> LatentCodec:
        """Load a diffusers ``AutoencoderKL`` folder; scale/shift come from its config when set.

        ``overrides`` set codec-only fields such as ``image_size``, ``patch_size`` or ``sample_posterior``.
        """
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"{folder} has no config.json; pass a diffusers AutoencoderKL folder (save_pretrained)."
            )
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(folder)
        vc = vae.config
        if tuple(vc.down_block_types) != ("DownEncoderBlock2D",) * len(vc.block_out_channels):
            raise ValueError(
                f"Unsupported AutoencoderKL down blocks {vc.down_block_types}; expected DownEncoderBlock2D."
            )
        inferred = dict(
            latent_channels=vc.latent_channels,
            scaling_factor=vc.scaling_factor,
            shift_factor=vc.shift_factor if vc.shift_factor is not None else 0.0,
            block_out_channels=tuple(vc.block_out_channels),
            layers_per_block=vc.layers_per_block,
            norm_num_groups=vc.norm_num_groups,
            mid_block_attention=vc.mid_block_add_attention,
            use_quant_conv=vc.use_quant_conv,
        )
        clash = sorted(set(overrides) & set(inferred))
        if clash:
            raise ValueError(f"{clash} are read from the checkpoint's config.json and cannot be overridden.")
        return cls(vae, VAEConfig(**inferred, **overrides), trainable)

    @property
    def token_dim(self) -> int:
        """Width of one generation token, ``latent_channels * patch_size**2``."""
        return self.config.latent_channels * self.config.patch_size**2

    @property
    def num_tokens(self) -> int:
        """Tokens per subgoal image at the configured ``image_size``."""
        rows, cols = self.grid_for(self.config.image_size)
        return rows * cols

    def grid_for(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Token grid (rows, cols) of an image of pixel size ``image_hw``."""
        unit = self.config.downsample * self.config.patch_size
        height, width = image_hw
        if height < unit or width < unit or height % unit or width % unit:
            raise ValueError(
                f"Image size {tuple(image_hw)} must be positive multiples of {unit} px "
                "(VAE downsample x latent patch); resize with LatentCodec.preprocess."
            )
        return height // unit, width // unit

    def encode(
        self, images: Tensor, generator: torch.Generator | None = None, sample: bool | None = None
    ) -> Tensor:
        """Images [B, 3, H, W] in [-1, 1] → normalised latents [B, C, H/d, W/d].

        ``sample=None`` samples the posterior only if ``config.sample_posterior`` and the module is
        in training mode; otherwise the posterior mean is used.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [B, 3, H, W], got {tuple(images.shape)}.")
        if not images.is_floating_point():
            raise ValueError(
                f"images must be float in [-1, 1], got {images.dtype}; use LatentCodec.preprocess."
            )
        d = self.config.downsample
        if images.shape[2] % d or images.shape[3] % d:
            raise ValueError(
                f"Image size {tuple(images.shape[2:])} must be a multiple of the VAE downsample {d}."
            )
        if sample is None:
            sample = self.config.sample_posterior and self.training
        param = next(self.vae.parameters())
        posterior = self.vae.encode(images.to(device=param.device, dtype=param.dtype)).latent_dist
        z = posterior.sample(generator=generator) if sample else posterior.mean
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents [B, C, h, w] → images [B, 3, h*d, w*d], nominally in [-1, 1]."""
        if latents.ndim != 4 or latents.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"latents must have shape [B, {self.config.latent_channels}, h, w], got {tuple(latents.shape)}."
            )
        param = next(self.vae.parameters())
        z = (
            latents.to(device=param.device, dtype=param.dtype) / self.config.scaling_factor
            + self.config.shift_factor
        )
        return self.vae.decode(z).sample

    def patchify(self, latents: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Latents [B, C, h, w] → (tokens [B, (h/p)*(w/p), C*p*p], grid (h/p, w/p))."""
        batch, channels, height, width = latents.shape
        p = self.config.patch_size
        if channels != self.config.latent_channels or height % p or width % p:
            raise ValueError(
                f"latents [B, C, h, w] need C={self.config.latent_channels} and h, w multiples of {p}; "
                f"got {tuple(latents.shape)}."
            )
        rows, cols = height // p, width // p
        tokens = latents.reshape(batch, channels, rows, p, cols, p).permute(0, 2, 4, 3, 5, 1)
        return tokens.reshape(batch, rows * cols, p * p * channels), (rows, cols)

    def unpatchify(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """Exact inverse of :meth:`patchify`: tokens [B, rows*cols, C*p*p] → latents [B, C, rows*p, cols*p]."""
        rows, cols = grid
        p, channels = self.config.patch_size, self.config.latent_channels
        if tokens.ndim != 3 or tokens.shape[1] != rows * cols or tokens.shape[2] != self.token_dim:
            raise ValueError(
                f"tokens must have shape [B, {rows * cols}, {self.token_dim}] for grid {tuple(grid)}, "
                f"got {tuple(tokens.shape)}."
            )
        latents = tokens.reshape(tokens.shape[0], rows, cols, p, p, channels).permute(0, 5, 1, 3, 2, 4)
        return latents.reshape(tokens.shape[0], channels, rows * p, cols * p)

    def preprocess(self, image: np.ndarray) -> Tensor:
        """uint8 (H, W, 3) → float [3, H', W'] in [-1, 1] at ``config.image_size`` (bicubic, no crop)."""
        return to_unit_range(resize_rgb(image, self.config.image_size))

    @staticmethod
    def postprocess(image: Tensor) -> Image.Image:
        """Float [3, H, W] in [-1, 1] (clipped) → RGB PIL image."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image must have shape [3, H, W], got {tuple(image.shape)}.")
        pixels = ((image.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())
