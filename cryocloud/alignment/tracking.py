"""Patch tracking: follow a grid of image patches from the tilt nearest 0 deg outward through the series.

Patches are taken on a grid from the reference tilt in the coarse-aligned frame. Each step
correlates a patch of tilt j with the same region of its outward neighbour i, stretched
perpendicular to the tilt axis by cos(t_i) / cos(t_j) (see `coarse`); a patch is dropped when
its correlation score falls below `min_score` or it leaves the usable disk of the image. The
result is the position of every tracked point in every raw image, the input of the projection
model fit (`axis.fit_projection_model`).
"""

from __future__ import annotations

import numpy as np

from cryocloud.alignment.coarse import outward_pairs, reference_index, stretch_factor
from cryocloud.alignment.correlate import find_shifts
from cryocloud.alignment.images import aligned_view, disk_window
from cryocloud.geometry import rotation_2d


def patch_grid(radius: float, patch: int, spacing: float) -> np.ndarray:
    """Patch centres (P, 2) as integer (x, y) px relative to the centre, whose patch fits in the disk."""
    reach = radius - patch / np.sqrt(2.0)
    n = int(np.floor(reach / spacing))
    g = np.arange(-n, n + 1) * spacing
    xy = np.stack(np.meshgrid(g, g, indexing="xy"), axis=-1).reshape(-1, 2)
    return np.round(xy[np.hypot(xy[:, 0], xy[:, 1]) <= reach]).astype(np.float64)


def _extract(image: np.ndarray, centres_xy: np.ndarray, patch: int) -> np.ndarray:
    """Patches (P, patch, patch) of `image` centred on integer positions (x, y) relative to its centre."""
    half = patch // 2
    off = np.arange(patch) - half
    ys = centres_xy[:, 1].astype(np.int64)[:, None] + image.shape[0] // 2 + off[None, :]
    xs = centres_xy[:, 0].astype(np.int64)[:, None] + image.shape[1] // 2 + off[None, :]
    return image[ys[:, :, None], xs[:, None, :]]


def track_patches(
    images: np.ndarray,
    angles_deg: np.ndarray,
    axis_deg: float,
    shifts: np.ndarray,
    *,
    radius: float,
    patch: int,
    spacing: float | None = None,
    min_score: float = 0.2,
) -> np.ndarray:
    """Raw-image positions (T, P, 2) in px relative to the centre of tracked points; NaN where lost.

    images: prepared, angle-sorted (T, y, x); shifts: current aligned-frame shifts d (T, 2) px;
    radius: usable disk (px) around the centre; patch: patch size (px, even).
    """
    n_t = len(angles_deg)
    grid = patch_grid(radius, patch, spacing or patch / 2)
    pos = np.full((n_t, len(grid), 2), np.nan)
    ref = reference_index(angles_deg)
    pos[ref] = grid
    taper = disk_window((patch, patch), patch / 2 - patch / 8, patch / 8)
    reach = radius - patch / np.sqrt(2.0)
    views = {}
    for i, j in outward_pairs(angles_deg):
        if j not in views:
            views[j] = aligned_view(images[j], axis_deg, shifts[j])
        active = np.flatnonzero(np.all(np.isfinite(pos[j]), axis=1))
        if active.size == 0:
            continue
        k = stretch_factor(angles_deg[i], angles_deg[j])
        stretched = aligned_view(images[i], axis_deg, shifts[i], k)
        centres = np.round(pos[j, active])
        delta, score = find_shifts(
            _extract(views[j], centres, patch) * taper, _extract(stretched, centres, patch) * taper, max_shift=patch / 4
        )
        moved = pos[j, active] + delta
        new = np.stack([k * moved[:, 0], moved[:, 1]], axis=-1)
        keep = (score >= min_score) & (np.hypot(new[:, 0], new[:, 1]) <= reach)
        pos[i, active[keep]] = new[keep]
    r = rotation_2d(axis_deg)
    return (pos + shifts[:, None, :]) @ r.T
