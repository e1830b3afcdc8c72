"""Overlapping tiles for volume filters, and the seam metric that checks their stitching.

`map_tiles` runs a block function on cubic tiles of a Dask volume (z, y, x), each extended by
`depth` voxels on every side (neighbouring data inside the volume; at its faces, by default, the
data of the opposite face: periodic) and cropped back after the function ran: a filter whose
reach is below `depth` gives the same voxels as on the whole volume, so no seam shows.

Why periodic at the faces: a mirror image repeats the face's own noise, so a smoothing filter (or
a network, which also takes a repeated noise pattern for structure) averages correlated copies
and leaves the noise near the faces stronger than inside (on white noise, 1.2 - 1.45 x the
plane standard deviation of the interior at the face plane, for the deconvolution filter and a
trained Noise2Noise U-Net); such faces inflate the tails of template-matching scores. The opposite
face brings independent noise with the same statistics, so stationary noise stays stationary up
to the faces (constant padding would instead weaken it there).

`face_std` measures the faces: the standard deviation of the first and last plane along each
axis relative to the interior planes (on stationary noise, 1 within the planes' scatter).

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
    boundary: str = "periodic",
) -> da.Array:
    """Apply `block_fn` (float32 block (z, y, x) -> same shape) to overlapping tiles of `data`.

    tile: tile edge (voxels) of the output chunks; depth: overlap added on each side (clipped to
    the smallest chunk, as Dask requires); multiple: tile edges and depth are kept multiples of
    it (e.g. 4 for a network with two 2x poolings, so every tile sees the same pooling grid);
    boundary: what extends the tiles at the volume faces (Dask's `map_overlap` boundary;
    "periodic" keeps noise statistics up to the faces, see the module docstring).
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
    return arr.map_overlap(block_fn, depth=depth, boundary=boundary, trim=True, dtype=np.float32)


def plane_differences(volume: np.ndarray, axis: int) -> np.ndarray:
    """Mean |v[i + 1] - v[i]| over each pair of neighbouring planes along `axis` (length n - 1)."""
    v = np.moveaxis(np.asarray(volume, dtype=np.float64), axis, 0)
    return np.abs(np.diff(v, axis=0)).reshape(v.shape[0] - 1, -1).mean(axis=1)


@dataclass(frozen=True)
class FaceStd:
    """Face statistic along one axis: standard deviation of the first (`low`) and last (`high`) plane
    divided by the median of the interior planes' ones; `scatter`: standard deviation of that
    ratio over the interior planes (the spread a face plane shows when it is like any other)."""

    axis: int
    low: float
    high: float
    scatter: float


def face_std(volume: np.ndarray, margin: int) -> list[FaceStd]:
    """Face statistic of a volume (z, y, x) along each axis; interior = planes `margin` or more from both faces."""
    if margin < 1:
        raise ModelError("margin", f"expected at least 1 plane between the faces and the interior, got {margin}")
    results = []
    for axis in range(3):
        v = np.moveaxis(np.asarray(volume, dtype=np.float64), axis, 0)
        if v.shape[0] <= 2 * margin + 1:
            raise ModelError("margin", f"{margin} planes leave no interior along axis {axis} of {v.shape[0]}")
        ratios = v.reshape(v.shape[0], -1).std(axis=1)
        inner = ratios[margin:-margin]
        ratios = ratios / np.median(inner)
        results.append(FaceStd(axis, float(ratios[0]), float(ratios[-1]), float((inner / np.median(inner)).std(ddof=1))))
    return results


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
