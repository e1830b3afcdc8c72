"""Hysteresis thresholding and connected components over a chunked volume, consistent across chunks.

A component is a 26-connected set of voxels >= `low`; it is kept when it has at least `min_voxels`
voxels and its largest value reaches `high` (hysteresis), or, when it has at least `large_voxels`,
reaches `large_high` (a large candidate may be weaker: noise does not make large components). Large
candidates that fail are returned as `LeftOut` (size, peak, centre), for the caller to report. Components cross chunk borders, so
labels are made global in two passes over the Dask blocks; memory per task is one block:

1. per block (computed): `scipy.ndimage.label` of the block's low mask; per local label its size,
   peak value and sum of voxel indices, and the labels on the block's six boundary planes (non-zero entries only);
2. on the client: local labels get global ids (a running offset per block); every pair of
   26-adjacent voxels in two neighbouring blocks (face, edge and corner neighbours: the 13
   forward offsets of the block grid) joins two ids; `scipy.sparse.csgraph.connected_components`
   merges them; components failing the size or hysteresis test map to 0, the rest to 1..K;
3. per block (lazy): label the block again (deterministic) and map local -> final id through its
   slice of the lookup table (only that slice travels with the task).

The input is recomputed in passes 1 and 3 rather than held in memory: bounded memory is the aim.
This is what `dask_image.ndmeasure.label` does for plain labelling, plus the hysteresis and size
tests, which need the merged components.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cryocloud.progress import compute

STRUCTURE = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity: thin, oblique surfaces stay connected
FORWARD_OFFSETS = [o for o in itertools.product((-1, 0, 1), repeat=3) if o > (0, 0, 0)]


def voxels_where(mask: np.ndarray | da.Array, *, description: str = "voxels", quiet: bool = True) -> np.ndarray:
    """Voxel indices (M, 3) (z, y, x) where a boolean volume (lazy or not) is true; one Dask pass,
    only the indices come back."""
    (found,) = compute(da.argwhere(da.asarray(mask)), description=description, quiet=quiet)
    return np.asarray(found, dtype=np.int64).reshape(-1, 3)


@dataclass(frozen=True)
class BlockSummary:
    """Local components of one block: count, size and peak per label (1..n), boundary-plane labels."""

    shape: tuple[int, int, int]
    sizes: np.ndarray
    peaks: np.ndarray
    index_sums: np.ndarray  # (n, 3) sums of the (z, y, x) voxel indices in the block, per label
    faces: dict  # (axis, side) -> (flat indices, labels) of the non-zero voxels of that boundary plane

    @property
    def n(self) -> int:
        return int(self.sizes.size)

    def face(self, axis: int, side: int) -> np.ndarray:
        """Dense labels of the boundary plane (side 0: first, 1: last) normal to `axis`."""
        shape = tuple(s for a, s in enumerate(self.shape) if a != axis)
        plane = np.zeros(int(np.prod(shape)), dtype=np.int32)
        index, labels = self.faces[(axis, side)]
        plane[index] = labels
        return plane.reshape(shape)


def label_block(block: np.ndarray, low: float) -> tuple[np.ndarray, int]:
    """(labels int32, count) of the 26-connected components of block >= low."""
    labels, n = ndimage.label(block >= low, structure=STRUCTURE, output=np.int32)
    return labels, int(n)


def summarise_block(block: np.ndarray, low: float) -> BlockSummary:
    """Pass 1 on one block (see the module docstring)."""
    labels, n = label_block(block, low)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64)
    peaks = np.zeros(n + 1, dtype=np.float32)
    np.maximum.at(peaks, labels.ravel(), block.ravel().astype(np.float32))
    grid = np.indices(labels.shape).reshape(3, -1)
    index_sums = np.stack([np.bincount(labels.ravel(), weights=g, minlength=n + 1)[1:] for g in grid], axis=1)
    faces = {}
    for axis in range(3):
        for side, index in ((0, 0), (1, -1)):
            plane = np.take(labels, index, axis=axis).ravel()
            nz = np.flatnonzero(plane).astype(np.int32)
            faces[(axis, side)] = (nz, plane[nz])
    return BlockSummary(tuple(block.shape), sizes, peaks[1:], index_sums, faces)


def _boundary(summary: BlockSummary, offset: tuple[int, ...], towards: bool) -> np.ndarray:
    """Labels of the voxels of a block that touch its neighbour at `offset` (towards) or at -offset."""
    axes = [a for a in range(3) if offset[a] != 0]
    side = {a: int((offset[a] > 0) == towards) for a in axes}
    first = axes[0]
    plane = summary.face(first, side[first])
    rest = [a for a in range(3) if a != first]
    index = tuple(-1 if a in side and side[a] else 0 if a in side else slice(None) for a in rest)
    return plane[index]


def neighbour_pairs(a: BlockSummary, b: BlockSummary, offset: tuple[int, ...]) -> np.ndarray:
    """(k, 2) local label pairs (label in a, label in b) of 26-adjacent voxels; b sits at `offset` from a."""
    fa, fb = np.atleast_1d(_boundary(a, offset, True)), np.atleast_1d(_boundary(b, offset, False))  # corner: one voxel
    pairs = []
    for shift in itertools.product((-1, 0, 1), repeat=fa.ndim):
        sa = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(shift, fa.shape))
        sb = tuple(slice(max(0, s), n - max(0, -s)) for s, n in zip(shift, fb.shape))
        la, lb = fa[sa], fb[sb]
        both = (la > 0) & (lb > 0)
        if both.any():
            pairs.append(np.stack([la[both], lb[both]], axis=1))
    return np.unique(np.concatenate(pairs), axis=0) if pairs else np.zeros((0, 2), dtype=np.int32)


@dataclass(frozen=True)
class Acceptance:
    """Which components are kept: >= `min_voxels` voxels and a peak >= `high`, or >= `large_voxels`
    voxels and a peak >= `large_high` (absolute values of the thresholded volume)."""

    high: float
    min_voxels: int
    large_voxels: int
    large_high: float

    def keep(self, size: np.ndarray, peak: np.ndarray) -> np.ndarray:
        large = size >= max(self.large_voxels, self.min_voxels)
        return (size >= self.min_voxels) & ((peak >= self.high) | (large & (peak >= self.large_high)))


@dataclass(frozen=True)
class LeftOut:
    """A component of at least `large_voxels` voxels that failed the peak test: its size, peak and
    centre (z, y, x voxel indices of the whole volume)."""

    voxels: int
    peak: float
    centre: tuple[float, float, float]


def global_lookup(
    grid: np.ndarray, acceptance: Acceptance, starts: tuple[np.ndarray, ...]
) -> tuple[list[np.ndarray], int, list[LeftOut]]:
    """Per block (C order) lookup tables local label -> final id (index 0 -> 0), the count K and the
    large components left out (largest first).

    `grid`: object array of BlockSummary with the block-grid shape (pass 2); `starts`: per axis the
    first voxel index of each block.
    """
    flat = grid.ravel()
    counts = np.array([s.n for s in flat], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    total = int(offsets[-1])
    offset_of = offsets[:-1].reshape(grid.shape)
    edges = []
    for idx in itertools.product(*(range(n) for n in grid.shape)):
        for off in FORWARD_OFFSETS:
            nb = tuple(i + o for i, o in zip(idx, off))
            if all(0 <= j < n for j, n in zip(nb, grid.shape)):
                pairs = neighbour_pairs(grid[idx], grid[nb], off).astype(np.int64)
                if pairs.size:
                    edges.append(np.stack([pairs[:, 0] - 1 + offset_of[idx], pairs[:, 1] - 1 + offset_of[nb]], axis=1))
    e = np.concatenate(edges) if edges else np.zeros((0, 2), dtype=np.int64)
    graph = coo_matrix((np.ones(len(e), dtype=np.int8), (e[:, 0], e[:, 1])), shape=(total, total))
    _, component = connected_components(graph, directed=False)
    sizes = np.concatenate([s.sizes for s in flat]) if total else np.zeros(0, dtype=np.int64)
    peaks = np.concatenate([s.peaks for s in flat]) if total else np.zeros(0, dtype=np.float32)
    n_comp = int(component.max()) + 1 if total else 0
    comp_size = np.bincount(component, weights=sizes, minlength=n_comp)
    comp_peak = np.full(n_comp, -np.inf)
    np.maximum.at(comp_peak, component, peaks)
    keep = acceptance.keep(comp_size, comp_peak)
    left = np.flatnonzero(~keep & (comp_size >= max(acceptance.large_voxels, acceptance.min_voxels)))
    left_out = []
    if left.size:
        block_starts = [np.array([starts[a][i[a]] for a in range(3)]) for i in itertools.product(*(range(n) for n in grid.shape))]
        sums = np.concatenate([s.index_sums + s.sizes[:, None] * b for s, b in zip(flat, block_starts)])
        comp_sums = np.stack([np.bincount(component, weights=sums[:, a], minlength=n_comp) for a in range(3)], axis=1)
        for c in left[np.argsort(-comp_size[left])]:
            left_out.append(LeftOut(int(comp_size[c]), float(comp_peak[c]), tuple(float(v) for v in comp_sums[c] / comp_size[c])))
    final = np.zeros(n_comp, dtype=np.uint32)
    final[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    table = final[component]
    tables = [np.concatenate([[0], table[offsets[i] : offsets[i + 1]]]).astype(np.uint32) for i in range(flat.size)]
    return tables, int(keep.sum()), left_out


def _relabel(block: np.ndarray, low: float, table: np.ndarray) -> np.ndarray:
    labels, _ = label_block(block, low)
    return table[labels]


def hysteresis_components(
    values: da.Array, low: float, acceptance: Acceptance, *, quiet: bool = False, description: str = "components"
) -> tuple[da.Array, int, list[LeftOut]]:
    """Lazy uint32 labels (0 = background, 1..K) of the kept components of `values`, K, and the large
    components left out (see `Acceptance`).

    Passes 1 and 2 run here (small results); pass 3 is the returned lazy array.
    """
    blocks = values.to_delayed()
    summaries = compute(*[dask.delayed(summarise_block)(b, low) for b in blocks.ravel()], description=description, quiet=quiet)
    grid = np.empty(blocks.shape, dtype=object)
    for i, s in enumerate(summaries):
        grid.flat[i] = s
    starts = tuple(np.concatenate([[0], np.cumsum(c)[:-1]]) for c in values.chunks)
    tables, count, left_out = global_lookup(grid, acceptance, starts)
    pieces = np.empty(blocks.shape, dtype=object)
    for i, (block, table, summary) in enumerate(zip(blocks.ravel(), tables, summaries)):
        task = dask.delayed(_relabel, pure=True)(block, low, table)
        pieces.flat[i] = da.from_delayed(task, shape=summary.shape, dtype=np.uint32)
    return da.block(pieces.tolist()), count, left_out
