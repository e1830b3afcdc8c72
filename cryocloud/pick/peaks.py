"""Peak extraction from score maps: false-alarm threshold and non-maximum suppression.

Threshold (Rickgauer et al. 2017; pytom-match-pick): with N_search = voxels searched x
orientations and sigma the standard deviation of the search's scores, a Gaussian null gives
n_false expected false peaks above

    threshold = erfcinv(2 n_false / N_search) sqrt(2) sigma.

Candidates are local maxima (3x3x3) above the threshold, found chunk by chunk on the lazy score
map; a greedy non-maximum suppression then keeps the highest and drops every candidate within
the particle radius of a kept one. Only the candidate lists are computed. sigma is the standard
deviation of every score evaluated (voxels x orientations, accumulated by the search), not of the
map of maxima.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage
from scipy.spatial import cKDTree
from scipy.special import erfcinv

from cryocloud.errors import ModelError
from cryocloud.model import Particles, pixel_size_of


def false_alarm_threshold(sigma: float, n_search: float, n_false: float = 1.0) -> float:
    """Score above which `n_false` false detections are expected among `n_search` Gaussian scores."""
    if not 0 < n_false < n_search / 2:
        raise ModelError("n_false", f"expected 0 < n_false < N_search / 2 = {n_search / 2:g}, got {n_false}")
    return float(erfcinv(2.0 * n_false / n_search) * np.sqrt(2.0) * sigma)


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
    tomogram: str = "",
    class_name: str = "",
) -> tuple[Particles, float | None]:
    """Particles (positions in A, rotations, scores) picked from a score map; and the threshold used.

    Give `n_false` (expected false positives, the statistical cut-off; needs the search's
    `score_std` and `n_search` = voxels x orientations, see MatchResult.score_std) and/or `number`
    (keep the best `number`). Positions are voxel indices times the voxel size (voxel (0,0,0) at 0 A).
    """
    if n_false is None and number is None:
        raise ModelError("n_false", "give a false-alarm count or a number of particles to extract")
    px = pixel_size_of(scores)
    threshold = None
    if n_false is not None:
        if score_std is None or n_search is None:
            raise ModelError("score_std", "the false-alarm cut-off needs the search's score standard deviation and N_search")
        threshold = false_alarm_threshold(score_std, n_search, n_false)
    positions, values = candidates(scores, threshold if threshold is not None else 1e-12)
    keep = non_maximum_suppression(positions, values, radius_a / px, number)
    zyx = positions[keep]
    values_at = orientation.data.vindex if isinstance(orientation.data, da.Array) else np.asarray(orientation.values)
    idx = values_at[tuple(zyx.T)] if len(zyx) else np.zeros(0, np.int64)
    idx = np.asarray(idx.compute() if isinstance(idx, da.Array) else idx, dtype=np.int64)
    particles = Particles.create(zyx[:, ::-1] * px, rotations[idx] if len(idx) else np.zeros((0, 3, 3)), values[keep], tomogram, class_name)
    return particles, threshold
