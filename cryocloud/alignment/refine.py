"""Refinement by projection matching: reconstruct, reproject, correlate each tilt with its reprojection.

The prepared images are resampled into the aligned frame with the current (axis, d), reconstructed
by weighted back-projection (`cryocloud.reconstruct.reconstruct`, a volume of `thickness` px) and
reprojected with `cryocloud.project.project_volume`. The correlation peak delta of tilt t against
its reprojection is the remaining error of its aligned-frame shift: d_t += delta, repeated until every
correction is below SHIFT_TOLERANCE_PX. The tilt-axis angle is refined by maximising the mean
correlation score (bracketing, then Brent's method to AXIS_TOLERANCE_DEG, within
AXIS_SEARCH_BOUND_DEG of the start), the raw-frame shifts held fixed. Every search says whether it
converged or stopped at its bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryocloud.alignment.axis import remove_gauge
from cryocloud.alignment.correlate import find_shifts
from cryocloud.alignment.images import aligned_view
from cryocloud.alignment.search import AngleSearch, maximise
from cryocloud.geometry import rotation_2d
from cryocloud.model import TiltSeries
from cryocloud.project import project_volume
from cryocloud.reconstruct import reconstruct

SHIFT_TOLERANCE_PX = 0.05  # projection matching stops when every correction is smaller (px of the images matched)
AXIS_TOLERANCE_DEG = 0.02  # the axis search locates the score's maximum to this (deg)
AXIS_SEARCH_BOUND_DEG = 1.0  # the axis search moves the axis at most this far (deg; its score is flat); reaching it is reported


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
    tolerance: float = SHIFT_TOLERANCE_PX,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Projection-matching iterations until every correction is below `tolerance` px, at most `iterations`.

    Returns aligned-frame shifts (T, 2), the last corrections |delta| (T,) px and whether they fell
    below the tolerance (False: stopped at the iteration cap).
    """
    d = np.array(shifts, dtype=np.float64)
    moved = np.full(len(d), np.nan)
    for _ in range(iterations):
        step = match_once(images, angles_deg, axis_deg, d, window, thickness)
        d = remove_gauge(d + step.delta, angles_deg)
        moved = np.hypot(step.delta[:, 0], step.delta[:, 1])
        if moved.max() < tolerance:
            return d, moved, True
    return d, moved, False


def refine_axis(
    images: np.ndarray,
    angles_deg: np.ndarray,
    axis_deg: float,
    shifts: np.ndarray,
    window: np.ndarray,
    thickness: int,
    *,
    step_deg: float = 0.5,
    max_change_deg: float = AXIS_SEARCH_BOUND_DEG,
    tolerance_deg: float = AXIS_TOLERANCE_DEG,
) -> AngleSearch:
    """Axis angle (deg) maximising the mean projection-matching score, within `max_change_deg` of `axis_deg`.

    The maximum is bracketed (downhill steps from `step_deg`, growing), then located by Brent's bounded
    method to `tolerance_deg`. The raw-frame shifts s = R(axis) d are kept while the axis angle varies.
    The standard error comes from the per-tilt scores at the optimum +- 0.25 deg (`search.delta_sigma`).
    """
    raw_shifts = np.asarray(shifts) @ rotation_2d(axis_deg).T

    def scores(a: float) -> np.ndarray:
        return match_once(images, angles_deg, a, raw_shifts @ rotation_2d(a), window, thickness).scores

    return maximise(scores, axis_deg, step=step_deg, bound=max_change_deg, tolerance=tolerance_deg, h=0.25)
