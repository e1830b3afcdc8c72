"""Automatic hysteresis thresholds for the ridge response, from its own statistics.

The ridge response (`cryocloud.segment.hessian`) is > 0 on every local maximum of the plateness
across a plate, in ice as well as on membranes. Most ridge voxels are noise, so the median and
the robust spread of the non-zero ridge values (1.4826 x the median absolute deviation, the s.d.
of a normal distribution) describe the noise. The thresholds are

    low        = median + low_sigma        x spread   (a voxel may belong to a membrane)
    high       = median + high_sigma       x spread   (a membrane must reach this somewhere)
    large_high = median + large_high_sigma x spread   (what a large candidate must reach)

The sigmas are in these noise units, so the thresholds follow the tomogram's noise level; the
large tier (`cryocloud.segment.components.Acceptance`) follows its membrane contrast: a weak but
large membrane is kept where noise makes no component that large. The statistics come
from a sample of at most `max_blocks` Dask blocks spread evenly over the volume (all of them
for small volumes), each contributing at most `MAX_VALUES_PER_BLOCK` values, so the cost is
bounded whatever the tomogram size.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

from cryocloud.errors import ModelError
from cryocloud.progress import compute

MAX_VALUES_PER_BLOCK = 200_000


@dataclass(frozen=True)
class Thresholds:
    """Noise statistics of the ridge response and the absolute hysteresis thresholds derived from them."""

    median: float
    spread: float
    low: float
    high: float
    large_high: float

    def noise_units(self, value: float) -> float:
        """A response value in noise s.d. above the median."""
        return (value - self.median) / self.spread


def subsample(values: np.ndarray, limit: int = MAX_VALUES_PER_BLOCK) -> np.ndarray:
    """Every k-th of `values` (flattened), k the smallest step leaving about `limit` of them at most."""
    flat = np.ravel(values)
    return flat[:: max(1, flat.size // limit)]


def _ridge_values(block: np.ndarray) -> np.ndarray:
    return subsample(block[block > 0])


def sample_blocks(array: da.Array, max_blocks: int) -> list:
    """Delayed blocks of `array`, at most `max_blocks`, evenly spaced in C order over the block grid."""
    blocks = array.to_delayed().ravel()
    picks = np.unique(np.linspace(0, blocks.size - 1, min(max_blocks, blocks.size)).round().astype(int))
    return [blocks[i] for i in picks]


def robust_statistics(values: np.ndarray) -> tuple[float, float]:
    """(median, 1.4826 x median absolute deviation) of `values`."""
    median = float(np.median(values))
    return median, float(1.4826 * np.median(np.abs(values - median)))


def thresholds_from_values(values: np.ndarray, low_sigma: float, high_sigma: float, large_high_sigma: float) -> Thresholds:
    """Thresholds from a sample of non-zero ridge values (see the module docstring)."""
    if not 0 <= low_sigma <= min(high_sigma, large_high_sigma):
        raise ModelError("low", f"expected 0 <= low <= high, large high (noise units), got low={low_sigma}, high={high_sigma}, "
                                f"large high={large_high_sigma}")
    if values.size < 100:
        raise ModelError("data", f"the ridge response has only {values.size} non-zero voxels; the volume is too small or flat to segment")
    median, spread = robust_statistics(values)
    if not spread > 0:
        raise ModelError("data", "the ridge response has no spread (constant volume?); nothing to segment")
    return Thresholds(median, spread, *(median + k * spread for k in (low_sigma, high_sigma, large_high_sigma)))


def automatic_thresholds(
    ridge: da.Array, low_sigma: float, high_sigma: float, large_high_sigma: float, *, max_blocks: int = 8, quiet: bool = False
) -> Thresholds:
    """Thresholds for a lazy ridge response, from a bounded sample of its blocks (computed here)."""
    parts = [dask.delayed(_ridge_values)(b) for b in sample_blocks(ridge, max_blocks)]
    sampled = compute(*parts, description="membrane response statistics", quiet=quiet)
    return thresholds_from_values(np.concatenate(sampled), low_sigma, high_sigma, large_high_sigma)
