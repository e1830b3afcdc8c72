"""Peak extraction from score maps: false-alarm threshold and non-maximum suppression.

Threshold (Rickgauer et al. 2017; pytom-match-pick): with N_search = voxels searched x
orientations and sigma the standard deviation of the search's scores, a Gaussian null gives
n_false expected false peaks above

    threshold = erfcinv(2 n_false / N_search) sqrt(2) sigma.

Candidates are local maxima (3x3x3) above the threshold, found chunk by chunk on the lazy score
map; a greedy non-maximum suppression then keeps the highest and drops every candidate within
the minimum distance of a kept one (callers pass the particle's diameter: closer picks would be
overlapping particles, and the secondary peaks of the score around a particle lie there). Only the candidate lists are computed. sigma is the standard
deviation of every score evaluated (voxels x orientations, accumulated by the search), not of the
map of maxima.

Local sigma (`local_sigma="block"` or `"slab"`): where the score's spread varies across the volume
(denoised input: flat ice next to a high-contrast specimen) one global sigma lets the tails of the
wider regions through. The search keeps its score moments per sub-volume block (`BlockMoments`);
each block b (or each z slab of blocks) gets its own sigma_b and its candidates the threshold
t_b = erfcinv(2 n_false / N_search) sqrt(2) sigma_b. With a Gaussian null of spread sigma_b in
block b, the expected false count is sum_b N_b P(score > t_b) = sum_b N_b n_false / N_search
= n_false: N_search stays the whole search's, so n_false is still the expected total.
With `sigma_floor` (default) sigma_b is never taken below the global sigma: the cut-off is raised
where the local spread is wider and kept elsewhere, so the expected false count is at most n_false
under the local null and under the global one alike. Block sigmas include the particles' own
scores, and their tails are not Gaussian on denoised input (secondary peaks next to particles): a
lowered cut-off in quiet blocks admits those (benchmark denoise-pick), the floor does not.

Robust cut-off from the best-score map (`MapNoise`, cut-off method "robust-sigma"): the search's
sigma counts voxels x orientations as independent trials, but the orientations of a small template
are strongly correlated (a 20 deg search of beta-tubulin at 10.5 A: 1,908 orientations, yet the
median best score is only 0.9 sigma), and on a dense specimen (a microtubule wall) every score of
the dense region enters that sigma. Both raise the cut-off above every true peak. The best-score
map itself is the statistic that is cut: its background is the majority of its voxels and fills
its lower half, so its noise is estimated there, away from the dense regions' high scores:

    median m,  sigma_r = m - q(0.1587)   (a normal's one-sigma quantile below the median)
    threshold = m + erfcinv(2 n_false / V) sqrt(2) sigma_r,   V = voxels searched

A dense fraction f of the voxels, all above the background, moves the median only to the
background's 0.5 / (1 - f) quantile (+0.14 sigma at f = 0.1, +0.43 at f = 0.25), where it would
enter a moment-based sigma with its whole spread. Each voxel counts as one trial (neighbours correlate over the search resolution: fewer
independent trials, a conservative count); a best score's right skew (a maximum over orientations)
works the other way. On noise searched as the microtubule (phase-randomised crop, 20 deg) and on
coloured noise it kept the false picks at or below n_false (tests/test_pick_robust_cutoff.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import dask
import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage
from scipy.spatial import cKDTree
from scipy.special import erfcinv
from scipy.stats import norm

from cryocloud.errors import ModelError
from cryocloud.model import Particles, pixel_size_of

LocalSigma = Literal["global", "block", "slab"]
LOCAL_SIGMA_MODES = ("global", "block", "slab")


def _check_local_sigma(mode: str) -> None:
    if mode not in LOCAL_SIGMA_MODES:
        raise ModelError("local_sigma", f"expected one of {', '.join(LOCAL_SIGMA_MODES)}, got {mode!r}")


def sigma_of(moments: np.ndarray) -> np.ndarray:
    """Standard deviation from moments (..., 3) = (sum, sum of squares, count); NaN where count is 0."""
    moments = np.asarray(moments, dtype=np.float64)
    total, total2, count = moments[..., 0], moments[..., 1], moments[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        return np.where(count > 0, np.sqrt(np.maximum(total2 / count - mean * mean, 0.0)), np.nan)


@dataclass(frozen=True)
class BlockMoments:
    """Score moments per sub-volume block of a search: `moments` (nz, ny, nx, 3) (sum, sum of
    squares, count of every score evaluated in the block's core, voxels x orientations) and `edges`
    the blocks' core boundaries per axis (z, y, x), each (n + 1,) voxel indices from 0 to the
    volume's edge."""

    moments: np.ndarray
    edges: tuple[np.ndarray, np.ndarray, np.ndarray]

    def __post_init__(self):
        grid = tuple(len(e) - 1 for e in self.edges)
        if np.shape(self.moments) != (*grid, 3):
            raise ModelError("block_moments", f"has shape {np.shape(self.moments)}, expected {(*grid, 3)} for block edges of {grid} blocks")

    def total(self) -> tuple[float, float]:
        """(global standard deviation, N_search) of all the blocks together."""
        summed = np.asarray(self.moments, dtype=np.float64).reshape(-1, 3).sum(axis=0)
        return float(sigma_of(summed)), float(summed[2])

    def sigma_blocks(self, mode: LocalSigma, floor: bool = False) -> np.ndarray:
        """sigma per block (nz, ny, nx): "block" each block's own, "slab" the blocks of one z row
        together, "global" all; blocks without scores (count 0) take the global sigma; `floor`:
        none below the global sigma."""
        _check_local_sigma(mode)
        moments = np.asarray(self.moments, dtype=np.float64)
        if mode == "slab":
            moments = np.broadcast_to(moments.sum(axis=(1, 2), keepdims=True), moments.shape)
        elif mode == "global":
            moments = np.broadcast_to(moments.sum(axis=(0, 1, 2), keepdims=True), moments.shape)
        sigma, overall = sigma_of(moments), self.total()[0]
        sigma = np.where(np.isfinite(sigma), sigma, overall)
        return np.maximum(sigma, overall) if floor else sigma

    def at(self, zyx: np.ndarray, mode: LocalSigma, floor: bool = False) -> np.ndarray:
        """sigma at voxel indices `zyx` (M, 3): that of the block whose core holds each voxel."""
        zyx = np.asarray(zyx, dtype=np.int64).reshape(-1, 3)
        index = tuple(np.clip(np.searchsorted(e, zyx[:, a], side="right") - 1, 0, len(e) - 2) for a, e in enumerate(self.edges))
        return self.sigma_blocks(mode, floor)[index]


#: how the false-alarm cut-off is estimated: "robust-sigma" from the best-score map's lower half (MapNoise);
#: "search-sigma" from the standard deviation of every score evaluated (voxels x orientations)
CutoffMethod = Literal["robust-sigma", "search-sigma"]
CUTOFF_METHODS = ("robust-sigma", "search-sigma")
#: the histogram bins over the best-score map's range from which its quantiles are read
MAP_NOISE_BINS = 1 << 16


@dataclass(frozen=True)
class MapNoise:
    """The background noise of a best-score map from its lower half: the `median` score, `sigma` =
    median - the 15.87 % quantile (a normal's one-sigma point below the median) and `n_voxels`, the
    voxels searched (the trials of the cut-off). Module docstring."""

    median: float
    sigma: float
    n_voxels: float

    def threshold(self, n_false: float = 1.0) -> float:
        """Score above which `n_false` false picks are expected among the searched voxels."""
        return self.median + false_alarm_threshold(self.sigma, self.n_voxels, n_false)


def map_noise(scores: xr.DataArray, n_voxels: float | None = None) -> MapNoise:
    """`MapNoise` of a best-score map (z, y, x), lazy or not, in two passes (range, histogram of
    `MAP_NOISE_BINS` bins). `n_voxels`: the voxels searched when a tomogram mask left some out
    (their scores are exactly 0 and are left out of the quantiles); None: all."""
    values = scores.data if isinstance(scores.data, da.Array) else da.from_array(np.asarray(scores.values))
    size = float(values.size)
    searched = size if n_voxels is None else float(n_voxels)
    if searched < size:
        values = da.where(values == 0, np.nan, values)
    lo, hi = (float(v) for v in dask.compute(da.nanmin(values), da.nanmax(values)))
    if not np.isfinite(lo) or hi <= lo:
        raise ModelError("scores", f"has no spread (min {lo}, max {hi}); expected a template-matching score map")
    counts, edges = da.histogram(values, bins=MAP_NOISE_BINS, range=(lo, hi))
    cumulative = np.cumsum(np.asarray(counts.compute(), dtype=np.float64))
    cumulative /= cumulative[-1]
    median, lower = np.interp([0.5, norm.cdf(-1.0)], np.concatenate([[0.0], cumulative]), np.asarray(edges))
    return MapNoise(float(median), float(median - lower), searched)


def false_alarm_threshold(sigma: float, n_search: float, n_false: float = 1.0) -> float:
    """Score above which `n_false` false detections are expected among `n_search` Gaussian scores."""
    if not 0 < n_false < n_search / 2:
        raise ModelError("n_false", f"expected 0 < n_false < N_search / 2 = {n_search / 2:g}, got {n_false}")
    return float(erfcinv(2.0 * n_false / n_search) * np.sqrt(2.0) * sigma)


def search_sigma_threshold(score_std: float, n_search: float, n_false: float, block_moments: BlockMoments | None = None,
                           local_sigma: LocalSigma = "slab", sigma_floor: bool = True) -> float:
    """The search sigma's cut-off (method "search-sigma"): that of `score_std`, or with `block_moments`
    the lowest of the blocks' (`local_sigma`, `sigma_floor`; module docstring)."""
    lowest = score_std if block_moments is None else float(np.min(block_moments.sigma_blocks(local_sigma, sigma_floor)))
    return false_alarm_threshold(lowest, n_search, n_false)


def _local_maxima(block: np.ndarray, threshold: float) -> np.ndarray:
    peak = (block == ndimage.maximum_filter(block, size=3, mode="nearest")) & (block >= threshold)
    return np.where(peak, block, -np.inf).astype(np.float32)


def _candidates(block: np.ndarray, offset: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    idx = np.nonzero(np.isfinite(block))
    return np.stack(idx, axis=-1) + np.asarray(offset), block[idx]


def candidates(scores: xr.DataArray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima (M, 3) voxel indices (z, y, x) and their scores, above `threshold`."""
    values = scores.data if isinstance(scores.data, da.Array) else da.from_array(np.asarray(scores.values))
    maxima = values.map_overlap(_local_maxima, depth=1, boundary="none", threshold=threshold, dtype=np.float32)
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in maxima.chunks]
    parts = [
        dask.delayed(_candidates)(blk, tuple(int(starts[a][i]) for a, i in enumerate(index)))
        for index, blk in zip(np.ndindex(*maxima.numblocks), maxima.to_delayed().ravel())
    ]
    found = dask.compute(*parts)
    positions = np.concatenate([p for p, _ in found]) if found else np.zeros((0, 3), np.int64)
    values_out = np.concatenate([v for _, v in found]) if found else np.zeros(0, np.float32)
    return positions.astype(np.int64), values_out


def non_maximum_suppression(positions: np.ndarray, values: np.ndarray, radius: float, max_number: int | None = None) -> np.ndarray:
    """Indices of kept candidates, best first: none within `radius` (voxels) of a better kept one."""
    order = np.argsort(-values, kind="stable")
    tree = cKDTree(positions)
    suppressed = np.zeros(len(positions), dtype=bool)
    kept = []
    for i in order:
        if suppressed[i]:
            continue
        kept.append(i)
        if max_number is not None and len(kept) >= max_number:
            break
        suppressed[tree.query_ball_point(positions[i], radius)] = True
    return np.asarray(kept, dtype=np.int64)


def extract_peaks(
    scores: xr.DataArray,
    orientation: xr.DataArray,
    rotations: np.ndarray,
    *,
    radius_a: float,
    n_false: float | None = 1.0,
    number: int | None = None,
    score_std: float | None = None,
    n_search: float | None = None,
    block_moments: BlockMoments | None = None,
    local_sigma: LocalSigma = "slab",
    sigma_floor: bool = True,
    tomogram: str = "",
    class_name: str = "",
    avoid: Sequence[tuple[np.ndarray, float]] = (),
    null_threshold: float | None = None,
    map_noise: MapNoise | None = None,
) -> tuple[Particles, float | None]:
    """Particles (positions in A, rotations, scores) picked from a score map; and the threshold used.

    `radius_a`: the minimum distance between picks (A). Give `n_false` (expected false positives, the statistical cut-off; needs the search's
    `score_std` and `n_search` = voxels x orientations, see MatchResult.score_std) and/or `number`
    (keep the best `number`). `local_sigma` "block" / "slab" (default; needs `block_moments`, the search's
    moments per block; without them, results of older searches, the global sigma is used): each
    block's (z slab's) candidates are cut at the threshold of that block's own sigma, with
    `sigma_floor` never below the global sigma's (module docstring); the threshold returned is
    then the lowest of them. `avoid`: pairs (voxel indices (M, 3) on the score map's grid, radius in
    A); candidates within the radius of any of those voxels are dropped before the suppression, so
    they cannot suppress a particle next to them (gold fiducials,
    `cryocloud.segment.fiducials.fiducial_voxels`, with the particle's radius; segmented membranes
    with half a voxel: no pick centred on them). `null_threshold`: an empirical
    cut-off for the same n_false (`cryocloud.pick.null.empirical_threshold`, from a search of the
    tomogram's noise); every pick must clear it as well, and the threshold returned is never below
    it. `map_noise` (`map_noise(scores)`): the n_false cut-off is the robust one of the best-score
    map (`MapNoise.threshold`, cut-off method "robust-sigma") instead of the search sigma's, for
    every voxel alike (`local_sigma`, `score_std` and `n_search` are then not used). Positions are the score map's x, y, z coordinates (A) at the picked voxels (a binned pyramid
    level starts half a level-0 voxel per binning from 0); voxel indices times the voxel size when it
    has none.
    """
    if n_false is None and number is None:
        raise ModelError("n_false", "give a false-alarm count or a number of particles to extract")
    _check_local_sigma(local_sigma)
    px = pixel_size_of(scores)
    threshold = None
    local = n_false is not None and map_noise is None and local_sigma != "global" and block_moments is not None
    if n_false is not None:
        if map_noise is not None:
            threshold = map_noise.threshold(n_false)
        elif score_std is None or n_search is None:
            raise ModelError("score_std", "the false-alarm cut-off needs the search's score standard deviation and N_search")
        else:
            threshold = search_sigma_threshold(score_std, n_search, n_false, block_moments if local else None, local_sigma, sigma_floor)
        if null_threshold is not None:
            threshold = max(threshold, float(null_threshold))
    elif null_threshold is not None:
        raise ModelError("null_threshold", "is an n_false cut-off; give n_false with it")
    positions, values = candidates(scores, threshold if threshold is not None else 1e-12)
    if local and len(positions):
        above = values >= false_alarm_threshold(1.0, n_search, n_false) * block_moments.at(positions, local_sigma, sigma_floor)
        positions, values = positions[above], values[above]
    for avoid_zyx, avoid_radius_a in avoid:
        if len(avoid_zyx) and len(positions):
            radius = avoid_radius_a / px
            clear = cKDTree(np.asarray(avoid_zyx, dtype=np.float64)).query(positions, distance_upper_bound=radius)[0] > radius
            positions, values = positions[clear], values[clear]
    keep = non_maximum_suppression(positions, values, radius_a / px, number)
    zyx = positions[keep]
    values_at = orientation.data.vindex if isinstance(orientation.data, da.Array) else np.asarray(orientation.values)
    idx = values_at[tuple(zyx.T)] if len(zyx) else np.zeros(0, np.int64)
    idx = np.asarray(idx.compute() if isinstance(idx, da.Array) else idx, dtype=np.int64)
    origin = np.array([float(scores.coords[d].values[0]) if d in scores.coords else 0.0 for d in "xyz"])
    particles = Particles.create(zyx[:, ::-1] * px + origin, rotations[idx] if len(idx) else np.zeros((0, 3, 3)), values[keep], tomogram, class_name)
    return particles, threshold
