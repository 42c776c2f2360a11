"""Image preprocessing for the understanding encoder: resize to a patch grid, normalise, patchify.

Patch layout (the one :class:`emcot.tokenizers.vision.VisionEncoder` expects): patches are taken
row-major over the grid, and each patch is flattened channels-first, i.e. element
``c * p * p + i * p + j`` is channel ``c`` at row ``i``, column ``j`` inside the patch, the order of
a ``Conv2d`` weight ``[D, 3, p, p]`` reshaped to ``[D, 3 * p * p]``. (BAGEL and SigLIP2 flatten
channels-last; :mod:`emcot.tokenizers.vision_convert` reorders SigLIP2 weights accordingly.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from emcot.tokenizers.vision_config import VisionEncoderConfig


def validate_rgb_uint8(image: np.ndarray, what: str = "image") -> None:
    """Raise ValueError unless ``image`` is a uint8 numpy array of shape (H, W, 3)."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{what} must be a numpy array (H, W, 3) uint8, got {type(image).__name__}.")
    if image.dtype != np.uint8:
        raise ValueError(
            f"{what} must have dtype uint8 (0..255), got {image.dtype}; convert with "
            "np.clip(x * 255, 0, 255).astype(np.uint8) if it is a float image in [0, 1]."
        )
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{what} must have shape (H, W, 3) RGB, got {image.shape}.")


def patchify(pixels: Tensor, patch_size: int) -> Tensor:
    """[3, H, W] → [(H/p)*(W/p), 3*p*p], row-major patches, channels-first inside each patch."""
    channels, height, width = pixels.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"Image size {(height, width)} is not a multiple of patch_size {patch_size}.")
    rows, cols = height // patch_size, width // patch_size
    grid = pixels.reshape(channels, rows, patch_size, cols, patch_size).permute(1, 3, 0, 2, 4)
    return grid.reshape(rows * cols, channels * patch_size * patch_size)


def unpatchify(patches: Tensor, grid_hw: tuple[int, int], patch_size: int) -> Tensor:
    """Exact inverse of :func:`patchify`: [h*w, 3*p*p] → [3, h*p, w*p]."""
    rows, cols = grid_hw
    grid = patches.reshape(rows, cols, 3, patch_size, patch_size).permute(2, 0, 3, 1, 4)
    return grid.reshape(3, rows * patch_size, cols * patch_size)


class VisionImageProcessor:
    """Resize (aspect kept, sides multiples of the patch), normalise and patchify RGB images.

    Sizing, in the spirit of BAGEL's ``MaxLongEdgeMinShortEdgeResize``: scale so the long side is
    at most ``max_side_px`` (never upscaling for that), then up so the short side is at least
    ``min_side_px``; the long-side cap wins if both cannot hold. Each side is then rounded to a
    multiple of ``patch_size`` (at least one patch). In "table" position mode the long-side limit
    is also ``max_grid`` patches, because the learned table has no rows beyond that.
    """

    def __init__(self, config: VisionEncoderConfig) -> None:
        self.config = config
        self.mean = torch.tensor(config.image_mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(config.image_std, dtype=torch.float32).view(3, 1, 1)

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """Pixel size (H, W) an image of ``height × width`` is resized to."""
        cfg = self.config
        p = cfg.patch_size
        max_cells = cfg.max_side_px // p
        if cfg.position_mode == "table":
            max_cells = min(max_cells, cfg.max_grid)
        max_px = max_cells * p
        long_side, short_side = max(height, width), min(height, width)
        scale = min(max_px / long_side, 1.0)
        scale = max(scale, cfg.min_side_px / short_side)
        scale = min(scale, max_px / long_side)

        def cells(side: int) -> int:
            return int(min(max(round(side * scale / p), 1), max_cells))

        return cells(height) * p, cells(width) * p

    def __call__(self, image: np.ndarray) -> tuple[Tensor, tuple[int, int]]:
        """uint8 (H, W, 3) → (patches [h*w, 3*p*p] float32, patch grid (h, w))."""
        validate_rgb_uint8(image)
        out_h, out_w = self.target_size(image.shape[0], image.shape[1])
        if (out_h, out_w) != image.shape[:2]:
            image = np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.Resampling.BICUBIC))
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
        pixels = (pixels - self.mean) / self.std
        p = self.config.patch_size
        return patchify(pixels, p), (out_h // p, out_w // p)

    def cameras(
        self, images: Mapping[str, np.ndarray], order: Sequence[str] | None = None
    ) -> tuple[Tensor, list[tuple[int, int]]]:
        """Preprocess several cameras → (concatenated patches, one grid per camera, in ``order``).

        ``order`` defaults to the mapping's own order; every named camera must be present.
        """
        names = list(images) if order is None else list(order)
        if not names:
            raise ValueError("No camera images given; pass at least one name → (H, W, 3) uint8 image.")
        missing = [n for n in names if n not in images]
        if missing:
            raise ValueError(f"Missing camera(s) {missing}; the observation has {sorted(images)}.")
        patches, grids = [], []
        for name in names:
            validate_rgb_uint8(images[name], what=f"camera {name!r}")
            cam_patches, grid = self(images[name])
            patches.append(cam_patches)
            grids.append(grid)
        return torch.cat(patches), grids
