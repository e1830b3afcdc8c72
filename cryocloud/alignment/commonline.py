"""Global tilt-axis search from the common line, before any tracking (the idea of AreTomo's axis search).

Every projection of a single-axis tilt series, summed along the direction perpendicular to the tilt
axis, gives the same 1-D profile along the axis: the specimen's projection onto the axis (in Fourier
space, the central sections of all tilts share the line along the axis). At a wrong axis angle the
sums mix positions along the axis that move differently with tilt, so neighbouring tilts' profiles
disagree. The score of an angle is the mean, over all pairs of tilts, of the peak normalised
cross-correlation of their profiles (a shift along the axis is allowed: the y shifts are not known
yet). Each profile sums a rectangle |x'| <= h cos t, |y'| <= h of the aligned view, so that every tilt
sums the same area of a thin specimen even when it is wider than the field (measured on a slab twice
the field's width: a fixed disk biased the axis by 1-2 deg, these windows by < 1 deg).

The score is scanned within HALF_RANGE_DEG of the guess (on the simulated cryo twin a straight feature
gives a higher maximum 25 deg away from the axis; a scan that ends at the edge of the range is
reported), then its maximum is located by Brent's method (`search.maximise`) to a stated tolerance. Its
standard error is the delta method's with a jackknife over tilts (pairs sharing a tilt are not independent).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from cryocloud.alignment.images import aligned_view
from cryocloud.alignment.search import AngleSearch, maximise

SCAN_STEP_DEG = 1.0  # the scan's step (deg)
HALF_RANGE_DEG = 10.0  # the scan covers the guess +- this (deg): straight features (membranes, edges) give maxima elsewhere
TOLERANCE_DEG = 0.02  # Brent's method locates the maximum to this (deg)


def _ramp(n: int, half: float, edge: float) -> np.ndarray:
    """1-D window (n,): 1 within `half` px of the centre index, falling linearly to 0 over `edge` px."""
    x = np.abs(np.arange(n) - n // 2)
    return np.clip((half + edge - x) / edge, 0.0, 1.0).astype(np.float32)


def axis_profiles(images: np.ndarray, angles_deg: np.ndarray, axis_deg: float, half_size: float) -> np.ndarray:
    """Profiles (T, y) along the tilt axis at `axis_deg`: each image seen in the aligned frame and summed over x
    within |x'| <= half_size cos(t), |y'| <= half_size (the same specimen area at every tilt); zero mean, unit norm."""
    _, ny, nx = images.shape
    edge = max(2.0, 0.03 * min(ny, nx))
    wy = _ramp(ny, half_size - edge, edge)
    prof = []
    for img, t in zip(images, angles_deg):
        wx = _ramp(nx, half_size * np.cos(np.deg2rad(t)) - edge, edge)
        prof.append((aligned_view(img, axis_deg, np.zeros(2)) * wx[None, :]).sum(axis=1) * wy)
    prof = np.stack(prof)
    prof -= prof.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(prof, axis=1, keepdims=True)
    return prof / np.where(norm > 0, norm, 1.0)


def pair_scores(profiles: np.ndarray, max_shift: int) -> np.ndarray:
    """Peak normalised cross-correlation of every pair of profiles (in `np.triu_indices(T, 1)` order), shifts
    within `max_shift` px."""
    n = profiles.shape[1]
    f = scipy.fft.rfft(profiles, n=2 * n, axis=1)
    lags = np.r_[0 : max_shift + 1, 2 * n - max_shift : 2 * n]
    i, j = np.triu_indices(len(profiles), 1)
    return scipy.fft.irfft(f[j] * np.conj(f[i]), n=2 * n, axis=1)[:, lags].max(axis=1)


def jackknife_error(pair_values: np.ndarray, n_tilts: int) -> float:
    """Standard error of the mean of per-pair values, by leaving out one tilt (and all its pairs) at a time:
    pairs that share a tilt are not independent."""
    i, j = np.triu_indices(n_tilts, 1)
    total, count = pair_values.sum(), len(pair_values)
    per_tilt = np.bincount(i, pair_values, n_tilts) + np.bincount(j, pair_values, n_tilts)
    left_out = (total - per_tilt) / (count - (n_tilts - 1))
    return float(np.sqrt((n_tilts - 1) / n_tilts * np.sum((left_out - left_out.mean()) ** 2)))


def common_line_axis(
    images: np.ndarray, angles_deg: np.ndarray, guess_deg: float, *, half_range_deg: float = HALF_RANGE_DEG, max_shift: int | None = None
) -> AngleSearch:
    """Tilt-axis angle (deg) of images (T, y, x) at tilt angles (T,) from the common line, within `half_range_deg`
    of `guess_deg` (at_bound: the best scanned angle lies at the edge of that range).

    The images are normalised (zero mean, unit variance), not band-passed: the profiles need the specimen's
    low frequencies. `max_shift`: largest shift along the axis between two tilts (px, default an eighth of
    the image).
    """
    n = min(images.shape[1:])
    shift = int(max_shift if max_shift is not None else n // 8)
    half_size = 0.42 * n / np.sqrt(2.0)  # the square fits in the raw image at any axis angle

    def scores(a: float) -> np.ndarray:
        return pair_scores(axis_profiles(images, angles_deg, a, half_size), shift)

    scan = guess_deg + np.arange(-half_range_deg, half_range_deg + SCAN_STEP_DEG / 2, SCAN_STEP_DEG)
    k = int(np.argmax([np.mean(scores(a)) for a in scan]))
    found = maximise(scores, float(scan[k]), step=SCAN_STEP_DEG / 2, bound=SCAN_STEP_DEG * 1.5, tolerance=TOLERANCE_DEG, h=0.25,
                     standard_error=lambda slopes: jackknife_error(slopes, len(images)))
    at_edge = k in (0, len(scan) - 1) or found.at_bound
    return AngleSearch(found.angle_deg, found.sigma_deg, found.evaluations + len(scan), at_edge)
