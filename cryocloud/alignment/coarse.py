"""Coarse alignment: cross-correlation of cosine-stretched neighbours, accumulated outward from 0 deg.

Tilt i and its neighbour j towards 0 deg are viewed in the aligned frame (tilt axis along y);
tilt i is stretched perpendicular to the axis by k = cos(t_i) / cos(t_j) so that the specimen
plane looks as in tilt j. With current aligned-frame shifts d (see `images.aligned_view`), the
correlation peak delta of the stretched tilt i against tilt j gives the update
d_i += (k delta_x, delta_y). The chain starts at the tilt nearest 0 deg and runs outward on both
sides, so every tilt is compared with its most similar neighbour.
"""

from __future__ import annotations

import numpy as np

from cryocloud.alignment.correlate import find_shifts
from cryocloud.alignment.images import aligned_view


def reference_index(angles_deg: np.ndarray) -> int:
    """Index of the tilt nearest 0 deg."""
    return int(np.argmin(np.abs(angles_deg)))


def outward_pairs(angles_deg: np.ndarray) -> list[tuple[int, int]]:
    """(i, j) pairs of angle-sorted tilts: j is the neighbour of i towards the reference, in chain order."""
    ref = reference_index(angles_deg)
    up = [(i, i - 1) for i in range(ref + 1, len(angles_deg))]
    down = [(i, i + 1) for i in range(ref - 1, -1, -1)]
    return up + down


def stretch_factor(angle_i: float, angle_j: float) -> float:
    """k = cos(t_i) / cos(t_j): the x' scale of tilt i relative to tilt j for the specimen plane."""
    return float(np.cos(np.deg2rad(angle_i)) / np.cos(np.deg2rad(angle_j)))


def coarse_align(
    images: np.ndarray,
    angles_deg: np.ndarray,
    axis_deg: float,
    window: np.ndarray,
    *,
    shifts: np.ndarray | None = None,
    max_shift: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Aligned-frame shifts d (T, 2) in px of angle-sorted prepared images (T, y, x), and peak scores (T,).

    `shifts` are the starting shifts (default 0); the reference tilt keeps its shift. `window`
    (y, x) masks both images before correlation.
    """
    d = np.zeros((len(angles_deg), 2)) if shifts is None else np.array(shifts, dtype=np.float64)
    scores = np.ones(len(angles_deg))
    for i, j in outward_pairs(angles_deg):
        k = stretch_factor(angles_deg[i], angles_deg[j])
        ref = aligned_view(images[j], axis_deg, d[j]) * window
        img = aligned_view(images[i], axis_deg, d[i], k) * window
        delta, score = find_shifts(ref, img, max_shift=max_shift)
        d[i] += (k * delta[0], delta[1])
        scores[i] = score
    return d, scores
