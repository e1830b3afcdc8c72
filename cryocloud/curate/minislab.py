"""Minislabs: per-particle projections (mean) of a thin slab of the tomogram around each pick.

A cube of `box` voxels is cut around each particle (cryocloud.average.extract, lazy, batched by
position); the slab is the `thickness_a` Angstrom about the box centre along the viewing axis:
- "z": the tomogram's z (the beam direction): the image is (y, x) of the tomogram;
- "particle": the particle's own z axis (its rotation applied to the reference's z): the box is
  first resampled in the particle's frame (`to_particle_frame`, linear interpolation), so every
  particle is seen as the reference is seen along z.
Images are (N, box, box) float32 (rows y, columns x), Dask-backed, one chunk per batch.
"""

from __future__ import annotations

from typing import Literal

import dask.array as da
import numpy as np
from scipy import ndimage

from cryocloud.average import extract
from cryocloud.errors import ModelError
from cryocloud.model import Particles, Tomogram

Axis = Literal["z", "particle"]


def to_particle_frame(volume: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """The box (z, y, x) resampled so that index q (x, y, z about the centre b // 2) holds the
    value at centre + R q: the particle seen in its reference frame (R: reference -> particle)."""
    b = volume.shape[0]
    c = b // 2
    grid = np.stack(np.meshgrid(*(np.arange(b) - c,) * 3, indexing="ij"), axis=0)  # (z, y, x) offsets
    q_xyz = grid[::-1].reshape(3, -1)
    p_zyx = (np.asarray(rotation) @ q_xyz)[::-1] + c
    return ndimage.map_coordinates(volume, p_zyx, order=1, mode="nearest").reshape(volume.shape).astype(np.float32)


def _slab_block(block: np.ndarray, rotations: np.ndarray, half: int, axis: str, block_info=None) -> np.ndarray:
    start = block_info[0]["array-location"][0][0]
    c = block.shape[1] // 2
    out = np.empty(block.shape[:1] + block.shape[2:], dtype=np.float32)
    for i, volume in enumerate(block):
        if axis == "particle":
            volume = to_particle_frame(volume, rotations[start + i])
        out[i] = volume[c - half : c + half + 1].mean(axis=0)
    return out


def minislabs(tomogram: Tomogram, particles: Particles, *, box: int, thickness_a: float, axis: Axis = "z", batch_size: int = 32) -> da.Array:
    """Lazy minislab images (N, box, box) float32 (see module docstring); the slab spans
    2 * round(thickness / 2 / voxel) + 1 voxels, at least one."""
    if axis not in ("z", "particle"):
        raise ModelError("axis", f"expected 'z' or 'particle', got {axis!r}")
    if thickness_a <= 0:
        raise ModelError("thickness", f"expected a slab thickness > 0 A, got {thickness_a}")
    half = min(int(round(thickness_a / 2 / tomogram.pixel_size)), box // 2 - 1)
    cubes = extract(tomogram, particles.positions, box, batch_size=batch_size).data
    return cubes.map_blocks(_slab_block, particles.rotations, half, axis, drop_axis=1, dtype=np.float32)
