"""Resample raw tilt images into the aligned frame (tilt axis along image y), lazily, one task per tilt."""

from __future__ import annotations

from dataclasses import replace

import dask
import dask.array as da
import numpy as np

from cryocloud.alignment.images import aligned_view
from cryocloud.errors import ModelError
from cryocloud.geometry import rotation_2d
from cryocloud.model import TiltSeries


def _resample(image: np.ndarray, axis_deg: float, shift_px: np.ndarray) -> np.ndarray:
    """One aligned image: cubic-spline resampling of a raw image, filled with its mean outside."""
    image = np.asarray(image, dtype=np.float32)
    mean = float(image.mean())
    return (aligned_view(image - mean, axis_deg, shift_px, order=3) + mean).astype(np.float32)


def apply_alignment(ts: TiltSeries) -> TiltSeries:
    """Aligned tilt series: each image resampled so that aligned(p) = raw(R(axis) p + s) (`geometry.aligned_to_raw`).

    Uses `ts.tilt_axis_angle` and the per-tilt `shift_x` / `shift_y` (A; 0 where absent). The
    result is lazy (one Dask task per tilt, same shape), with tilt_axis_angle 0 and shifts 0.
    """
    if ts.has_frames:
        raise ModelError("data", "alignment applies to images (tilt, y, x); sum the movie frames first")
    px = ts.pixel_size
    zeros = np.zeros(ts.n_tilts)
    raw_shifts = np.stack(
        [np.asarray(ts.per_tilt(k) if ts.per_tilt(k) is not None else zeros, dtype=np.float64) / px for k in ("shift_x", "shift_y")],
        axis=1,
    )
    aligned_shifts = raw_shifts @ rotation_2d(ts.tilt_axis_angle)  # d = R(-axis) s, as rows
    data = ts.data.data if isinstance(ts.data.data, da.Array) else da.from_array(np.asarray(ts.data.data))
    _, ny, nx = data.shape
    tiles = []
    for t in range(ts.n_tilts):
        task = dask.delayed(_resample, pure=True)(data[t], ts.tilt_axis_angle, aligned_shifts[t])
        tiles.append(da.from_delayed(task, shape=(ny, nx), dtype=np.float32))
    aligned = ts.with_data(da.stack(tiles)).with_per_tilt(shift_x=zeros, shift_y=zeros)
    return replace(aligned, tilt_axis_angle=0.0)
