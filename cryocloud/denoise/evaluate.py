"""Scoring a (denoised) tomogram against the ground-truth volume of a simulation.

Both volumes are (z, y, x) on the same voxel grid. Reconstructions of raw (not inverted) images
show protein dark, so by default the truth is negated before it is compared (`dark_protein`):
a faithful tomogram then correlates positively. FSC uses `cryocloud.average.fsc` on the largest
central cube both volumes hold; `fsc_mean` is the mean FSC over the shells 1..Nyquist, and
`resolution_a` the resolution (A) where the FSC with the truth falls below 0.5.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cryocloud.average.fsc import fsc
from cryocloud.errors import ModelError


def correlation(a: Any, b: Any) -> float:
    """Pearson correlation of two volumes of one shape (numpy or Dask; reduced, not materialised)."""
    if tuple(a.shape) != tuple(b.shape):
        raise ModelError("shape", f"volumes differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    da_, db_ = a - a.mean(), b - b.mean()
    r = (da_ * db_).sum() / np.sqrt((da_ * da_).sum() * (db_ * db_).sum())
    return float(r.compute() if hasattr(r, "compute") else r)


def central_cube(volume: Any) -> np.ndarray:
    """The largest central cube of a volume (z, y, x), as float64 numpy."""
    n = min(volume.shape)
    sl = tuple(slice((s - n) // 2, (s - n) // 2 + n) for s in volume.shape)
    return np.asarray(volume[sl], dtype=np.float64)


def compare_with_truth(volume: Any, truth: Any, pixel_size_a: float, *, dark_protein: bool = True) -> dict[str, Any]:
    """Correlation, mean FSC, FSC = 0.5 resolution (A) and the FSC curve of `volume` against `truth`."""
    sign = -1.0 if dark_protein else 1.0
    curve = fsc(central_cube(volume), sign * central_cube(truth), pixel_size_a)
    return {
        "correlation": sign * correlation(volume, truth),
        "fsc_mean": float(np.mean(curve.fsc[1:])),
        "resolution_a": float(curve.resolution(0.5)),
        "fsc": [round(float(v), 4) for v in curve.fsc],
        "frequency_per_a": [round(float(v), 5) for v in curve.frequency],
    }
