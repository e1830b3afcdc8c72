"""Per-tomogram intensity standardisation, the same for training and prediction."""

from __future__ import annotations

import dask.array as da
import numpy as np

from cryocloud.model import Tomogram


def intensity_stats(tomogram: Tomogram, max_edge: int = 256) -> tuple[float, float]:
    """(mean, standard deviation) of the central `max_edge` x `max_edge` voxels in (y, x), all z
    (the whole ice column, so the ice/vacuum mix matches the tomogram's); only the chunks of that
    column are read."""
    data = tomogram.data.data
    _, ny, nx = data.shape
    y0, x0 = max(0, (ny - max_edge) // 2), max(0, (nx - max_edge) // 2)
    sample = data[:, y0 : y0 + max_edge, x0 : x0 + max_edge]
    if isinstance(sample, da.Array):
        mean, std = da.compute(sample.mean(dtype=np.float64), sample.std(dtype=np.float64))
    else:
        mean, std = np.mean(sample, dtype=np.float64), np.std(sample, dtype=np.float64)
    return float(mean), float(std) if std > 0 else 1.0
