"""Dose weighting of summed tilt images (Grant & Grigorieff 2015 exposure filter).

Each tilt image (y, x) was summed from frames recorded between its pre-exposure N0 and
N0 + exposure (e/A^2, per-tilt coordinates). Its Fourier amplitudes are multiplied by the mean
attenuation over that window, `optics.exposure_averaged_dose_weight`, which damps the high
frequencies of late, radiation-damaged tilts. One Dask task per tilt.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import scipy.fft

from cryocloud.errors import ModelError
from cryocloud.model import TiltSeries
from cryocloud.optics import exposure_averaged_dose_weight, frequency_grid


def dose_filter_image(image: np.ndarray, pixel_size_a: float, pre_exposure: float, exposure: float, voltage_kv: float) -> np.ndarray:
    """One image (y, x) multiplied in Fourier space by its exposure filter; float32."""
    ky, kx = frequency_grid(image.shape, pixel_size_a, rfft=True)
    weight = exposure_averaged_dose_weight(np.sqrt(ky * ky + kx * kx), pre_exposure, exposure, voltage_kv=voltage_kv)
    return scipy.fft.irfft2(scipy.fft.rfft2(image) * weight, s=image.shape).astype(np.float32)


def _block(block: np.ndarray, pre: np.ndarray, exposure: np.ndarray, pixel_size_a: float, voltage_kv: float, block_info=None) -> np.ndarray:
    i = block_info[0]["chunk-location"][0]
    return dose_filter_image(block[0], pixel_size_a, float(pre[i]), float(exposure[i]), voltage_kv)[None]


def dose_weight(ts: TiltSeries) -> TiltSeries:
    """Lazy dose-weighted copy of a summed tilt series (tilt, y, x), one task per tilt."""
    if ts.has_frames:
        raise ModelError("dims", "dose weighting applies to summed images (tilt, y, x); motion-correct the frames first")
    arr = da.asarray(ts.data.data).astype(np.float32)
    arr = arr.rechunk((1,) + arr.shape[1:])
    out = arr.map_blocks(
        _block, ts.per_tilt("pre_exposure"), ts.per_tilt("exposure"), ts.pixel_size, ts.microscope.voltage_kv, dtype=np.float32
    )
    return ts.with_data(out, dose_weighted=True)
