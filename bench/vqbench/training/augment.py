"""Augmented views of the training chips, each one labelled by the teacher.

A view is described by seven numbers (``VIEW_COLUMNS``): a horizontal flip, a shift in pixels
along x and y, a scale factor, a rotation in degrees and brightness and contrast factors.
View 0 of every image is the chip itself and view 1 its flip. Views 2 and up are drawn once
from a seeded generator within the ranges of ``AugmentConfig``. The teacher labels every view
before training (``vqbench.training.data.label_views``). Student and encoder therefore learn
the teacher's output for exactly the image they see, not its output for the unaugmented chip.

``render_views`` turns chips and view parameters into the float images that both the teacher
and the trainer read, so labels and training inputs come from one function. Views without a
warp or colour change (the chip and its flip) are copied exactly, not resampled.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from vqbench.training.config import AugmentConfig

#: Columns of a view's parameter row.
VIEW_COLUMNS = ("flip", "shift_x_px", "shift_y_px", "scale", "rotation_deg", "brightness", "contrast")
IDENTITY_VIEW = (0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0)
FLIP_VIEW = (1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0)


def chip_and_flip_params(n_images: int) -> np.ndarray:
    """Return (n_images, 2, 7) parameters of the two fixed views: the chip and its flip."""
    return np.broadcast_to(np.array([IDENTITY_VIEW, FLIP_VIEW], dtype=np.float32), (n_images, 2, len(VIEW_COLUMNS)))


def draw_view_params(n_images: int, augment: AugmentConfig, seed: int) -> np.ndarray:
    """Return (n_images, 2 + extra_views, 7) view parameters: the chip, its flip, then random views."""
    rng = np.random.default_rng([seed, 7])
    extra = augment.extra_views
    params = np.empty((n_images, 2 + extra, len(VIEW_COLUMNS)), dtype=np.float32)
    params[:, 0] = IDENTITY_VIEW
    params[:, 1] = FLIP_VIEW
    if extra:
        shape = (n_images, extra)

        def uniform(limit: float) -> np.ndarray:
            return rng.uniform(-limit, limit, size=shape)

        params[:, 2:, 0] = rng.integers(0, 2, size=shape)
        params[:, 2:, 1] = uniform(augment.max_shift_px)
        params[:, 2:, 2] = uniform(augment.max_shift_px)
        params[:, 2:, 3] = 1.0 + uniform(augment.max_scale)
        params[:, 2:, 4] = uniform(augment.max_rotation_deg)
        params[:, 2:, 5] = 1.0 + uniform(augment.max_brightness)
        params[:, 2:, 6] = 1.0 + uniform(augment.max_contrast)
    return params


def view_params_sha256(params: np.ndarray) -> str:
    """Fingerprint of a parameter array (part of the cache key of the teacher's labels)."""
    return hashlib.sha256(np.ascontiguousarray(params, dtype=np.float32).tobytes()).hexdigest()


def render_views(chips: np.ndarray, params: np.ndarray) -> torch.Tensor:
    """Render (N, H, W, 3) uint8 chips under (N, 7) view parameters as (N, 3, H, W) float on 0..255."""
    images = torch.from_numpy(np.array(chips, dtype=np.uint8)).permute(0, 3, 1, 2).float()
    table = torch.from_numpy(np.array(params, dtype=np.float32))  # a copy: cached arrays are read-only
    flip, shift_x, shift_y, scale, rotation, brightness, contrast = table.unbind(1)
    warped = (shift_x != 0) | (shift_y != 0) | (scale != 1) | (rotation != 0)
    flipped = (flip > 0.5) & ~warped
    images[flipped] = images[flipped].flip(3)
    if warped.any():
        images[warped] = _warp(images[warped], table[warped])
    coloured = (brightness != 1) | (contrast != 1)
    if coloured.any():
        subset = images[coloured]
        mean = subset.mean(dim=(1, 2, 3), keepdim=True)
        gain_b = brightness[coloured].view(-1, 1, 1, 1)
        gain_c = contrast[coloured].view(-1, 1, 1, 1)
        images[coloured] = ((subset - mean) * gain_c + mean * gain_b).clamp(0.0, 255.0)
    return images


def _warp(images: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Resample images: shift, then scale and rotate about the centre, then mirror (bilinear, border fill)."""
    n, _, height, width = images.shape
    flip, shift_x, shift_y, scale, rotation = table[:, 0], table[:, 1], table[:, 2], table[:, 3], table[:, 4]
    angle = torch.deg2rad(rotation)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    mirror = torch.where(flip > 0.5, -1.0, 1.0)
    # affine_grid maps output coordinates to input coordinates on the [-1, 1] square, so theta
    # is the inverse: input = rotate_and_scale^-1(mirror(output)) - shift.
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * mirror
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * mirror
    theta[:, 1, 1] = cos
    theta[:, 0, 2] = -2.0 * shift_x / width
    theta[:, 1, 2] = -2.0 * shift_y / height
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
