"""Refinement by projection matching: reconstruct, reproject, correlate each tilt with its reprojection.

The prepared images are resampled into the aligned frame with the current (axis, d), reconstructed
by weighted back-projection (`cryocloud.reconstruct.reconstruct`, a volume of `thickness` px) and
reprojected with `cryocloud.project.project_volume`. The correlation peak delta of tilt t against
its reprojection is the remaining error of its aligned-frame shift: d_t += delta. The tilt-axis
angle is refined by maximising the mean correlation score over a few trial angles (parabola
through the best three), the raw-frame shifts held fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryocloud.alignment.axis import remove_gauge
from cryocloud.alignment.correlate import find_shifts
from cryocloud.alignment.images import aligned_view
from cryocloud.geometry import rotation_2d
from cryocloud.model import TiltSeries
from cryocloud.project import project_volume
from cryocloud.reconstruct import reconstruct


@dataclass(frozen=True)
class MatchResult:
    """One projection-matching pass: shift corrections delta (T, 2) px and correlation scores (T,)."""

    delta: np.ndarray
    scores: np.ndarray


def aligned_stack(images: np.ndarray, axis_deg: float, shifts: np.ndarray) -> np.ndarray:
    """Prepared raw images (T, y, x) resampled into the aligned frame with aligned-frame shifts d (T, 2)."""
    return np.stack([aligned_view(img, axis_deg, d) for img, d in zip(images, shifts)])


def match_once(
    images: np.ndarray, angles_deg: np.ndarray, axis_deg: float, shifts: np.ndarray, window: np.ndarray, thickness: int
) -> MatchResult:
    """Reconstruct from the current alignment, reproject, and correlate every tilt with its reprojection."""
    aligned = aligned_stack(images, axis_deg, shifts)
    ts = TiltSeries.from_array(aligned, tilt_angles=angles_deg, pixel_size=1.0)
    volume = reconstruct(ts, thickness_px=thickness, filter="radial").data.data.compute(scheduler="sync")
    reprojection = project_volume(volume, angles_deg)
    delta, scores = find_shifts(reprojection * window, aligned * window, max_shift=8.0)
    return MatchResult(delta, scores)


def refine_shifts(
    images: np.ndarray,
    angles_deg: np.ndarray,
    axis_deg: float,
    shifts: np.ndarray,
    window: np.ndarray,
    thickness: int,
    *,
    iterations: int,
    tolerance: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Projection-matching iterations; returns aligned-frame shifts (T, 2) and the last corrections |delta| (T,) px.

    Stops early when every correction is below `tolerance` px.
    """
    d = np.array(shifts, dtype=np.float64)
    moved = np.full(len(d), np.nan)
    for _ in range(iterations):
        step = match_once(images, angles_deg, axis_deg, d, window, thickness)
        d = remove_gauge(d + step.delta, angles_deg)
        moved = np.hypot(step.delta[:, 0], step.delta[:, 1])
        if moved.max() < tolerance:
            break
    return d, moved


def refine_axis(
    images: np.ndarray,
    angles_deg: np.ndarray,
    axis_deg: float,
    shifts: np.ndarray,
    window: np.ndarray,
    thickness: int,
    *,
    step_deg: float = 0.5,
) -> float:
    """Axis angle (deg) maximising the mean projection-matching score around `axis_deg` (+-2 steps).

    The raw-frame shifts s = R(axis) d are kept while the axis angle varies.
    """
    raw_shifts = np.asarray(shifts) @ rotation_2d(axis_deg).T
    trials = axis_deg + step_deg * np.arange(-2, 3)

    def score(a: float) -> float:
        d = raw_shifts @ rotation_2d(a)
        return float(np.mean(match_once(images, angles_deg, a, d, window, thickness).scores))

    values = np.array([score(a) for a in trials])
    best = int(np.argmax(values))
    if best in (0, len(trials) - 1):
        return float(trials[best])
    cm, c0, cp = values[best - 1 : best + 2]
    denom = cm - 2 * c0 + cp
    return float(trials[best] + (0.5 * step_deg * (cm - cp) / denom if denom < 0 else 0.0))
