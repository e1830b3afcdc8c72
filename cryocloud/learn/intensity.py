"""Per-tomogram intensity standardisation, the same for training and prediction."""

from __future__ import annotations

import dask.array as da
import numpy as np

from cryocloud.model import Tomogram


def intensity_stats(tomogram: Tomogram, stride: int = 4) -> tuple[float, float]:
    """(mean, standard deviation) of the tomogram, from every `stride`-th voxel per axis (lazy read)."""
    data = tomogram.data.data
    sample = data[::stride, ::stride, ::stride]
    if isinstance(sample, da.Array):
        mean, std = da.compute(sample.mean(dtype=np.float64), sample.std(dtype=np.float64))
    else:
        mean, std = np.mean(sample, dtype=np.float64), np.std(sample, dtype=np.float64)
    return float(mean), float(std) if std > 0 else 1.0
