"""Picks from a class-probability map: connected components above a threshold.

Components are labelled tile by tile on the lazy map, each tile read with a margin of the
largest accepted component's extent (2 x max radius); a component belongs to the tile whose core
holds its centroid, so a particle on a tile border is counted once and seen whole. Components
smaller than `min_fraction` or larger than `max_fraction` of the particle ball's volume
(4/3 pi r^3 voxels) are dropped: specks below, membranes and aggregates above (a briefly trained
network predicts particles up to several ball volumes, hence the generous default maximum). Position = centroid (voxel centres, then Angstrom), score = mean
probability over the component. Only the component tables are computed.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage

from cryocloud.errors import ModelError
from cryocloud.model import Particles, pixel_size_of


def _components(block: np.ndarray, start: np.ndarray, lo: np.ndarray, hi: np.ndarray, threshold: float, sizes: tuple[float, float]) -> np.ndarray:
    """Rows (z, y, x, mean probability) of components whose centroid lies in [lo, hi) (global voxels)."""
    block = np.asarray(block, dtype=np.float32)
    labels, n = ndimage.label(block >= threshold)
    if n == 0:
        return np.zeros((0, 4))
    index = np.arange(1, n + 1)
    size = ndimage.sum_labels(np.ones_like(block), labels, index)
    centroid = np.asarray(ndimage.center_of_mass(np.ones_like(block), labels, index)).reshape(-1, 3) + start
    mean = ndimage.mean(block, labels, index)
    keep = (size >= sizes[0]) & (size <= sizes[1]) & np.all((centroid >= lo - 0.5) & (centroid < hi - 0.5), axis=1)
    return np.column_stack([centroid[keep], mean[keep]])


def picks_from_probability(
    probability: xr.DataArray,
    *,
    radius_a: float,
    threshold: float = 0.5,
    min_fraction: float = 0.1,
    max_fraction: float = 8.0,
    tomogram: str = "",
    class_name: str = "particle",
) -> Particles:
    """Particles at the connected components of a probability map (z, y, x) (see module docstring)."""
    if probability.dims != ("z", "y", "x"):
        raise ModelError("dims", f"expected a probability map (z, y, x), got {probability.dims}")
    if not 0 < threshold < 1 or not 0 <= min_fraction < max_fraction:
        raise ModelError("threshold", f"expected 0 < threshold < 1 and 0 <= min_fraction < max_fraction, got {threshold}, {min_fraction}, {max_fraction}")
    px = pixel_size_of(probability)
    radius = radius_a / px
    ball = 4.0 / 3.0 * np.pi * radius**3
    margin = int(np.ceil(2 * radius * max_fraction ** (1 / 3))) + 1
    data = probability.data if isinstance(probability.data, da.Array) else da.from_array(np.asarray(probability.values))
    bounds = [np.concatenate([[0], np.cumsum(c)]) for c in data.chunks]
    parts = []
    for index in np.ndindex(*data.numblocks):
        lo = np.array([bounds[a][i] for a, i in enumerate(index)])
        hi = np.array([bounds[a][i + 1] for a, i in enumerate(index)])
        start = np.maximum(lo - margin, 0)
        stop = np.minimum(hi + margin, data.shape)
        piece = data[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]
        parts.append(dask.delayed(_components)(piece, start, lo, hi, threshold, (min_fraction * ball, max_fraction * ball)))
    rows = np.concatenate(dask.compute(*parts) or [np.zeros((0, 4))])
    order = np.argsort(-rows[:, 3], kind="stable")
    rows = rows[order]
    return Particles.create(rows[:, 2::-1] * px, None, rows[:, 3], tomogram, class_name)
