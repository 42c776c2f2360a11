"""Camera keypoints: a position-keeping read-out of the primary camera for the action expert.

Why it exists: the action queries of a small model trained from scratch spread their attention
almost evenly over the camera's ViT patches (``bench/action_attention.py``: entropy 3.96–4.11
against 4.16 for uniform over 64 patches), so they read the frame's *average* patch — what is in
the scene, not where. A few-pixel puck inside a 16 px patch is lost. This module keeps "where":

- a small convolutional stack on the camera's pixels (stride 4: a 32 × 32 map for 128 px frames)
  ends in ``num_keypoints`` heat maps; a spatial softmax turns each into its expected image
  coordinate (x, y in [−1, 1]) and its peak probability (deep spatial autoencoders, Finn et al.
  2016; diffusion policy's spatial-softmax pooling);
- a small MLP reads the keypoints into ``targets`` positions (e.g. the object's and the goal's xyz,
  normalised by ``target_mean`` / ``target_std``); it is trained on simulator labels by
  :mod:`emcot.training.keypoints`, so at run time the policy needs only pixels;
- keypoints, peaks and positions map through a zero-initialised linear layer into the state
  token (:func:`emcot.model.embedding.embed_plan`), the input the action expert demonstrably reads.
  A freshly attached module therefore leaves the policy's outputs unchanged until it learns.

With ``trainable`` False (the default) the localisation part runs without gradients while the
policy trains, so it stays the localiser it was fitted to be; the embedding always trains.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from emcot.experts.embeddings import zero_init
from emcot.io_utils import AT_LEAST_ONE, check_fields, dataclass_from_dict

# GroupNorm groups of the conv stack: batch-independent statistics, so one frame at run time is
# normalised exactly as a training batch is.
_NORM_GROUPS = 8


@dataclass
class KeypointConfig:
    """Sizes of :class:`CameraKeypoints` and the normalisation of its position targets.

    ``channels``: width of the conv stack (a multiple of 16; its first layer has half). ``num_keypoints``: heat maps / image
    points. ``targets``: positions the head regresses (6 = object xyz + goal xyz). ``target_mean``
    / ``target_std``: their normalisation (empty: identity), set by the keypoint trainer.
    ``head_hidden``: width of the read-out MLP. ``trainable``: whether the conv stack and head
    train with the policy (else only the embedding into the state token does).
    """

    num_keypoints: int = 16
    channels: int = 32
    targets: int = 6
    head_hidden: int = 128
    target_mean: tuple[float, ...] = field(default_factory=tuple)
    target_std: tuple[float, ...] = field(default_factory=tuple)
    trainable: bool = False

    def __post_init__(self) -> None:
        check_fields(
            self, "keypoints", num_keypoints=AT_LEAST_ONE, channels=AT_LEAST_ONE, targets=AT_LEAST_ONE,
            head_hidden=AT_LEAST_ONE,
        )  # fmt: skip
        if self.channels % (2 * _NORM_GROUPS):  # the first layer has half the channels
            raise ValueError(
                f"keypoints.channels must be a multiple of {2 * _NORM_GROUPS}, got {self.channels}"
            )
        self.target_mean = tuple(float(v) for v in self.target_mean)
        self.target_std = tuple(float(v) for v in self.target_std)
        for name in ("target_mean", "target_std"):
            values = getattr(self, name)
            if values and len(values) != self.targets:
                raise ValueError(
                    f"keypoints.{name} needs {self.targets} values (one per target), got {len(values)}"
                )
        if len(self.target_mean) != len(self.target_std):
            raise ValueError("keypoints.target_mean and target_std must both be set or both be empty")
        if any(v <= 0 for v in self.target_std):
            raise ValueError(f"keypoints.target_std must be positive, got {self.target_std}")

    @property
    def feature_dim(self) -> int:
        """Width of what enters the state token: x, y and peak per keypoint, plus the positions."""
        return 3 * self.num_keypoints + self.targets

    def to_dict(self) -> dict:
        """JSON-safe dictionary."""
        out = asdict(self)
        out["target_mean"], out["target_std"] = list(self.target_mean), list(self.target_std)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> KeypointConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        return dataclass_from_dict(cls, data, label="Unknown keypoints keys")


class Keypoints(NamedTuple):
    """What :meth:`CameraKeypoints.locate` finds in a batch of N frames."""

    points: torch.Tensor  # [N, K, 2] expected (x, y) per heat map, in [-1, 1] (x to the right)
    peaks: torch.Tensor  # [N, K] the largest softmax probability of each heat map
    positions: torch.Tensor  # [N, targets] normalised positions read from the keypoints


def spatial_softmax(logits: torch.Tensor, temperature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected (x, y) in [−1, 1] ``[N, K, 2]`` and peak probability ``[N, K]`` of heat maps ``[N, K, h, w]``."""
    n, k, h, w = logits.shape
    probs = torch.softmax(logits.reshape(n, k, h * w) / temperature, dim=-1)
    # Cell centres, so a map peaked on the left-most column sits at −1 + 1/w, not −1.
    xs = (torch.arange(w, device=logits.device, dtype=probs.dtype) + 0.5) / w * 2 - 1
    ys = (torch.arange(h, device=logits.device, dtype=probs.dtype) + 0.5) / h * 2 - 1
    grid = torch.stack([xs.repeat(h), ys.repeat_interleave(w)], dim=-1)  # [h*w, 2] row-major
    return probs @ grid, probs.amax(dim=-1)


def _conv(c_in: int, c_out: int, kernel: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2),
        nn.GroupNorm(_NORM_GROUPS, c_out),
        nn.SiLU(),
    ]


class CameraKeypoints(nn.Module):
    """``forward(pixels [N, 3, H, W]) -> [N, hidden]``: the state-token offset of each frame
    (see the module docstring); :meth:`locate` gives the keypoints and positions themselves."""

    def __init__(self, config: KeypointConfig, hidden_size: int) -> None:
        super().__init__()
        self.config = config
        c, k = config.channels, config.num_keypoints
        self.features = nn.Sequential(
            *_conv(3, c // 2, 5, 2),
            *_conv(c // 2, c, 3, 2),
            *_conv(c, c, 3, 1),
            *_conv(c, c, 3, 1),
            nn.Conv2d(c, k, 1),
        )
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.head = nn.Sequential(
            nn.Linear(3 * k, config.head_hidden), nn.SiLU(), nn.Linear(config.head_hidden, config.targets)
        )
        self.embed = zero_init(nn.Linear(config.feature_dim, hidden_size))

    def locate(self, pixels: torch.Tensor) -> Keypoints:
        """Keypoints, peaks and normalised positions of normalised frames ``[N, 3, H, W]``."""
        points, peaks = spatial_softmax(self.features(pixels), self.log_temperature.exp())
        read = torch.cat([points.flatten(1), peaks], dim=1)
        return Keypoints(points, peaks, self.head(read))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.trainable):
            found = self.locate(pixels)
        features = torch.cat([found.points.flatten(1), found.peaks, found.positions], dim=1)
        return self.embed(features)

    def normalise(self, positions: torch.Tensor) -> torch.Tensor:
        """Positions in their own units (e.g. metres) → the head's normalised targets."""
        mean, std = self._stats(positions)
        return (positions - mean) / std

    def denormalise(self, positions: torch.Tensor) -> torch.Tensor:
        """The head's normalised outputs → positions in their own units."""
        mean, std = self._stats(positions)
        return positions * std + mean

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        if not cfg.target_mean:
            return torch.zeros((), device=like.device), torch.ones((), device=like.device)
        return (
            torch.tensor(cfg.target_mean, device=like.device, dtype=like.dtype),
            torch.tensor(cfg.target_std, device=like.device, dtype=like.dtype),
        )
