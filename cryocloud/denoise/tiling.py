"""Overlapping tiles for volume filters, and the seam metric that checks their stitching.

`map_tiles` runs a block function on cubic tiles of a Dask volume (z, y, x), each extended by
`depth` voxels on every side (neighbouring data inside the volume, a mirror image at its faces)
and cropped back after the function ran: a filter whose reach is below `depth` gives the same
voxels as on the whole volume, so no seam shows.

`seam_jump` measures seams: along each axis, the mean absolute difference between neighbouring
planes (z, y or x) is computed for every pair of planes; the pairs that straddle a tile border are
compared with the others. A seam (a step or a discontinuity in the noise texture at tile borders)
makes the border differences larger than the interior ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import dask.array as da
import numpy as np

from cryocloud.errors import ModelError


def cubic_chunks(shape: tuple[int, ...], tile: int, multiple: int = 1) -> tuple[int, ...]:
    """Chunk edge per axis: `tile` voxels (rounded down to a multiple of `multiple`), at most the axis."""
    if tile < 1:
        raise ModelError("tile", f"expected a positive number of voxels, got {tile}")
    edge = max(multiple, tile // multiple * multiple)
    return tuple(min(edge, n) for n in shape)


def map_tiles(
    data: da.Array,
    block_fn: Callable[[np.ndarray], np.ndarray],
    *,
    tile: int,
    depth: int,
    multiple: int = 1,
) -> da.Array:
    """Apply `block_fn` (float32 block (z, y, x) -> same shape) to overlapping tiles of `data`.

    tile: tile edge (voxels) of the output chunks; depth: overlap added on each side (clipped to
    the smallest chunk, as Dask requires); multiple: tile edges and depth are kept multiples of
    it (e.g. 4 for a network with two 2x poolings, so every tile sees the same pooling grid).
    Lazy: returns a float32 Dask array chunked in tiles.
    """
    if depth < 0:
        raise ModelError("depth", f"expected a non-negative overlap in voxels, got {depth}")
    arr = da.asarray(data).astype(np.float32)
    chunks = cubic_chunks(arr.shape, tile, multiple)
    arr = arr.rechunk(chunks)
    smallest = min(min(c) for c in arr.chunks)
    depth = min(depth, smallest) // multiple * multiple if multiple > 1 else min(depth, smallest)
    if depth == 0:
        return arr.map_blocks(block_fn, dtype=np.float32)
    return arr.map_overlap(block_fn, depth=depth, boundary="reflect", trim=True, dtype=np.float32)


def plane_differences(volume: np.ndarray, axis: int) -> np.ndarray:
    """Mean |v[i + 1] - v[i]| over each pair of neighbouring planes along `axis` (length n - 1)."""
    v = np.moveaxis(np.asarray(volume, dtype=np.float64), axis, 0)
    return np.abs(np.diff(v, axis=0)).reshape(v.shape[0] - 1, -1).mean(axis=1)


@dataclass(frozen=True)
class SeamJump:
    """Seam metric along one axis.

    jump: mean over the tile borders of the relative excess of the border difference over the
    differences of the `reach` plane pairs on either side of it, inside the two tiles (0 = no seam);
    z_score: that mean in units of its standard error under no seam, estimated from the same
    statistic at every non-border position along the axis (|z| < 3: the borders look like any
    other plane of the volume).
    """

    axis: int
    jump: float
    z_score: float
    n_borders: int


def _local_jumps(d: np.ndarray, reach: int) -> np.ndarray:
    """Relative excess of each pair difference d[i] over the mean of d[i - reach .. i + reach] without d[i]
    (NaN where the window leaves the axis)."""
    out = np.full(d.size, np.nan)
    for i in range(reach, d.size - reach):
        around = np.concatenate([d[i - reach : i], d[i + 1 : i + 1 + reach]])
        out[i] = d[i] / around.mean() - 1.0
    return out


def seam_jump(volume: np.ndarray, chunks: tuple[tuple[int, ...], ...], reach: int = 3) -> list[SeamJump]:
    """Seam metric of a stitched volume (z, y, x) along each axis with more than one tile.

    `chunks` are the tile sizes per axis (Dask `.chunks` of the tiled result); `reach`: plane pairs
    on each side of a border that serve as its reference.
    """
    results = []
    for axis, sizes in enumerate(chunks):
        borders = np.cumsum(sizes)[:-1] - 1  # index i of the pair (i, i + 1) across each border
        if borders.size == 0:
            continue
        jumps = _local_jumps(plane_differences(volume, axis), reach)
        null = np.delete(jumps, borders)
        null = null[np.isfinite(null)]
        at_borders = jumps[borders]
        at_borders = at_borders[np.isfinite(at_borders)]
        if at_borders.size == 0 or null.size < 2:
            raise ModelError("chunks", f"axis {axis} is too short around its tile borders for a seam measurement (reach {reach})")
        excess = at_borders.mean() - null.mean()
        se = null.std(ddof=1) / np.sqrt(at_borders.size)
        results.append(SeamJump(axis, float(at_borders.mean()), float(excess / se), int(at_borders.size)))
    return results
