"""Subvolumes (N, b, b, b) at particle positions, cut lazily from a (Dask-backed) tomogram.

Positions are (x, y, z) in Angstrom in the tomogram frame (voxel (0, 0, 0) at 0 A). A box of b
output voxels at binning B covers b B tomogram voxels centred on the voxel nearest the particle
(index b B // 2 of the box is that voxel before binning); binning is a mean over B^3 blocks, so the
output voxel size is B times the tomogram's. Parts of a box outside the tomogram are filled with
the mean of the part inside. The sub-voxel remainder, position - box centre, is returned as
`offsets_a` (x, y, z, A): the particle sits there relative to the box centre (index b // 2).

Reading is batched by position: particles are sorted along a Morton (z-order) curve of their chunk
indices and cut in batches, one Dask task per batch, so each task touches few chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

from cryocloud.errors import ModelError
from cryocloud.model import Tomogram


@dataclass(frozen=True)
class Subvolumes:
    """`data` (N, b, b, b) float32 (numpy or Dask), `pixel_size_a` of its voxels, and `offsets_a`
    (N, 3): each particle's position (x, y, z, A) relative to its box centre."""

    data: np.ndarray | da.Array
    pixel_size_a: float
    offsets_a: np.ndarray


def _morton(cells: np.ndarray) -> np.ndarray:
    """Morton code of non-negative integer cells (N, 3)."""
    code = np.zeros(cells.shape[0], dtype=np.int64)
    c = cells.astype(np.int64)
    for bit in range(20):
        for axis in range(3):
            code |= ((c[:, axis] >> bit) & 1) << (3 * bit + axis)
    return code


def _bin_pad(pieces: list, corners: np.ndarray, size: int, binning: int) -> np.ndarray:
    """Boxes of `size` voxels from the parts of them inside the volume (`pieces`), padded, binned, float32."""
    n = size // binning
    out = np.empty((len(corners), n, n, n), dtype=np.float32)
    for i, (lo, piece) in enumerate(zip(corners, pieces)):
        piece = np.asarray(piece, dtype=np.float32)
        box = np.full((size,) * 3, float(piece.mean()) if piece.size else 0.0, dtype=np.float32)
        a = np.maximum(lo, 0) - lo
        box[a[0] : a[0] + piece.shape[0], a[1] : a[1] + piece.shape[1], a[2] : a[2] + piece.shape[2]] = piece
        out[i] = box.reshape(n, binning, n, binning, n, binning).mean(axis=(1, 3, 5))
    return out


def _inside(volume, lo: np.ndarray, size: int):
    """The part of the box [lo, lo + size) (z, y, x) inside `volume` (lazy for Dask), possibly empty."""
    a = np.clip(lo, 0, volume.shape)
    b = np.clip(lo + size, 0, volume.shape)
    return volume[a[0] : max(a[0], b[0]), a[1] : max(a[1], b[1]), a[2] : max(a[2], b[2])]


def extract(tomogram: Tomogram, positions_a: np.ndarray, box: int, *, binning: int = 1, batch_size: int = 32) -> Subvolumes:
    """Lazy subvolumes of `box` voxels (after `binning`) around each position; see the module docstring.

    Returns Dask-backed data with one chunk per batch of `batch_size` particles, in input order.
    """
    pos = np.asarray(positions_a, dtype=np.float64).reshape(-1, 3)
    if box < 4 or int(binning) != binning or binning < 1:
        raise ModelError("box", f"expected a box >= 4 voxels and an integer binning >= 1, got {box}, {binning}")
    if pos.shape[0] == 0:
        raise ModelError("positions", "no particles to extract")
    px = tomogram.pixel_size
    size = box * binning
    centre_vox = np.rint(pos / px).astype(np.int64)  # (x, y, z) voxel nearest each particle
    # the voxel nearest the particle is index size // 2 of the unbinned box; the binned box centre
    # (index box // 2) is at unbinned index (box // 2) B + (B - 1) / 2
    offsets_a = pos - centre_vox * px - (((box // 2) * binning + (binning - 1) / 2.0) - size // 2) * px
    corners = centre_vox[:, ::-1] - size // 2  # (z, y, x)
    volume = tomogram.data.data
    chunks = volume.chunksize if isinstance(volume, da.Array) else volume.shape
    order = np.argsort(_morton(np.clip(centre_vox[:, ::-1], 0, None) // np.array(chunks)), kind="stable")
    blocks = []
    for start in range(0, order.size, batch_size):
        idx = order[start : start + batch_size]
        pieces = [_inside(volume, corners[i], size) for i in idx]
        task = dask.delayed(_bin_pad)(pieces, corners[idx], size, binning)
        blocks.append(da.from_delayed(task, (idx.size,) + (box,) * 3, dtype=np.float32))
    data = da.concatenate(blocks, axis=0)[np.argsort(order)]
    return Subvolumes(data, px * binning, offsets_a)
