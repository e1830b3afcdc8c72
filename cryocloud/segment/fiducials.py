"""Fiducials (gold beads): found in a tomogram, rejected from membranes and from particle picks.

Gold beads are far denser than anything biological (tens of noise standard deviations from the
tomogram's median, against a few for protein and membranes), and their reconstruction streaks
(rays perpendicular to the tilt axis) respond like plates. A membrane component that has more
than `max_fraction` of its mid-surface voxels within `margin_a` of a fiducial voxel is such a
streak and is dropped; the others are renumbered 1..K in their order. Template matching scores a
bead high too (its CTF fringes correlate with any template), and a bead's pick suppresses true
particles next to it: `fiducial_voxels` gives the picker the bead voxels to keep away from.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
from scipy import ndimage

from cryocloud.progress import compute
from cryocloud.segment.components import voxels_where
from cryocloud.segment.threshold import robust_statistics, sample_blocks, subsample


def volume_statistics(volume: da.Array, *, max_blocks: int = 8, quiet: bool = True) -> tuple[float, float]:
    """(median, robust s.d.) of a lazy volume from a bounded sample of its blocks."""
    parts = compute(*[dask.delayed(subsample)(b) for b in sample_blocks(volume, max_blocks)], description="tomogram statistics", quiet=quiet)
    return robust_statistics(np.concatenate(parts).astype(np.float64))


def fiducial_voxels(volume: np.ndarray | da.Array, *, sigma: float, quiet: bool = True) -> np.ndarray:
    """Voxel indices (M, 3) (z, y, x) of the fiducials in a volume (lazy or not): |volume - median| >
    sigma x its robust s.d. (module docstring)."""
    volume = da.asarray(volume)
    median, spread = volume_statistics(volume, quiet=quiet)
    return voxels_where(da.absolute(volume.astype(np.float32) - np.float32(median)) > sigma * spread, description="fiducials", quiet=quiet)


def _near_counts(labels: np.ndarray, volume: np.ndarray, limit: float, margin_vox: float, count: int, inner: tuple) -> np.ndarray:
    """(count + 1, 2) per label: voxels of the block's interior `inner` (slices) near a fiducial, and all voxels."""
    beads = np.abs(volume) > limit
    near = ndimage.distance_transform_edt(~beads) <= margin_vox if beads.any() else np.zeros(beads.shape, bool)
    lab, near = labels[inner].ravel(), near[inner].ravel()
    return np.stack([np.bincount(lab[near], minlength=count + 1), np.bincount(lab, minlength=count + 1)], axis=1)


def _renumber(block: np.ndarray, table: np.ndarray) -> np.ndarray:
    return table[block]


def drop_fiducial_streaks(
    labels: da.Array, count: int, volume: da.Array, pixel_size_a: float, *, sigma: float, margin_a: float,
    max_fraction: float = 0.05, quiet: bool = True,
) -> tuple[da.Array, int, int]:
    """Labels (z, y, x, 1..count) without the components that lie on fiducials' streaks.

    Fiducial voxels: |volume - median| > sigma x robust s.d.; returns (labels renumbered 1..K, K,
    number dropped). Computes one small table per block; the labels stay lazy.
    """
    if count == 0:
        return labels, 0, 0
    median, spread = volume_statistics(volume, quiet=quiet)
    margin_vox = margin_a / pixel_size_a
    depth = int(np.ceil(margin_vox)) + 1
    depths = {a: min(depth, min(c)) for a, c in enumerate(labels.chunks)}
    centred = volume.astype(np.float32).rechunk(labels.chunks) - np.float32(median)
    lab_o = da.overlap.overlap(labels, depth=depths, boundary="none")
    vol_o = da.overlap.overlap(centred, depth=depths, boundary="none")
    tables = [dask.delayed(_near_counts)(lb, vb, sigma * spread, margin_vox, count, _interior(i, labels, depths))
              for i, (lb, vb) in enumerate(zip(lab_o.to_delayed().ravel(), vol_o.to_delayed().ravel()))]
    counts = np.sum(compute(*tables, description="fiducial streaks", quiet=quiet), axis=0)
    streak = counts[1:, 0] > max_fraction * np.maximum(counts[1:, 1], 1)
    table = np.zeros(count + 1, dtype=np.uint32)
    kept = np.flatnonzero(~streak) + 1
    table[kept] = np.arange(1, kept.size + 1, dtype=np.uint32)
    return labels.map_blocks(_renumber, table=table, dtype=np.uint32), int(kept.size), int(streak.sum())


def _interior(index: int, array: da.Array, depths: dict[int, int]) -> tuple[slice, ...]:
    """Slices of block `index`'s own voxels inside its overlapped block (no overlap at the volume's faces)."""
    position = np.unravel_index(index, array.numblocks)
    return tuple(slice(0 if p == 0 else depths[a], (0 if p == 0 else depths[a]) + array.chunks[a][p]) for a, p in enumerate(position))
