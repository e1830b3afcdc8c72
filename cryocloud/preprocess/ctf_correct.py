"""CTF correction of tilt images in strips parallel to the tilt axis.

Across a tilted image the defocus changes as df(x') = df0 + x' tan(t) (geometry.py; x' the
distance from the tilt axis in the aligned frame, the axis at `tilt_axis_angle` ccw from raw
image y and moved by shift_x/shift_y). The image is cut into strips parallel to the axis, of
width w = defocus_tolerance / |tan t| (A) so that the defocus varies by at most the tolerance
within a strip (one strip at zero tilt). Each strip takes its pixels from the whole image
filtered with the CTF at the strip centre's defocus (astigmatism kept):
- `phase_flip`: multiply by sign(CTF) (reconstruction input);
- `ctf_multiply`: multiply by the CTF itself (the weighting used before template matching).
One Dask task per tilt. Needs the defocus_u, defocus_v, astigmatism_angle coordinates.
"""

from __future__ import annotations

from typing import Literal

import dask.array as da
import numpy as np
import scipy.fft

from cryocloud.errors import ModelError
from cryocloud.geometry import raw_to_aligned
from cryocloud.model import Microscope, TiltSeries
from cryocloud.optics import ctf_2d

Mode = Literal["flip", "multiply"]


def strip_width_a(tilt_deg: float, defocus_tolerance_a: float) -> float:
    """Strip width (A) over which the defocus of a tilted image changes by the tolerance (inf at 0 tilt)."""
    slope = abs(np.tan(np.deg2rad(tilt_deg)))
    return float("inf") if slope < 1e-9 else defocus_tolerance_a / slope


def _x_prime(shape: tuple[int, int], pixel_size_a: float, tilt_axis_angle_deg: float, shift_xy_a) -> np.ndarray:
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    xy = np.stack([(xx - nx // 2).ravel(), (yy - ny // 2).ravel()], axis=1) * pixel_size_a
    return raw_to_aligned(xy, tilt_axis_angle_deg, np.asarray(shift_xy_a, dtype=np.float64))[:, 0].reshape(shape)


def correct_image(
    image: np.ndarray,
    pixel_size_a: float,
    defocus_u_a: float,
    defocus_v_a: float,
    astigmatism_angle_deg: float,
    *,
    tilt_deg: float = 0.0,
    tilt_axis_angle_deg: float = 0.0,
    shift_xy_a=(0.0, 0.0),
    microscope: Microscope = Microscope(),
    defocus_tolerance_a: float = 500.0,
    mode: Mode = "flip",
) -> np.ndarray:
    """Strip-wise CTF correction of one image (y, x); float32."""
    if defocus_tolerance_a <= 0:
        raise ModelError("defocus_tolerance_a", f"must be positive (A), got {defocus_tolerance_a}")
    image = np.asarray(image, dtype=np.float32)
    spectrum = scipy.fft.rfft2(image)
    x_prime = _x_prime(image.shape, pixel_size_a, tilt_axis_angle_deg, shift_xy_a)
    width = strip_width_a(tilt_deg, defocus_tolerance_a)
    strips = np.zeros(image.shape, dtype=np.int64) if np.isinf(width) else np.floor(x_prime / width + 0.5).astype(np.int64)
    slope = np.tan(np.deg2rad(tilt_deg))
    out = np.empty_like(image)
    for s in np.unique(strips):
        offset = 0.0 if np.isinf(width) else s * width * slope
        ctf = ctf_2d(
            image.shape, pixel_size_a, defocus_u_a + offset, defocus_v_a + offset, astigmatism_angle_deg,
            voltage_kv=microscope.voltage_kv, cs_mm=microscope.cs_mm, amplitude_contrast=microscope.amplitude_contrast,
        )
        filt = np.sign(ctf) if mode == "flip" else ctf
        corrected = scipy.fft.irfft2(spectrum * filt, s=image.shape)
        mask = strips == s
        out[mask] = corrected[mask]
    return out


def _block(block: np.ndarray, params: np.ndarray, pixel_size_a: float, axis: float, microscope: Microscope, tolerance: float, mode: Mode, block_info=None) -> np.ndarray:
    i = block_info[0]["chunk-location"][0]
    du, dv, ang, tilt, sx, sy = params[i]
    return correct_image(
        block[0], pixel_size_a, du, dv, ang, tilt_deg=tilt, tilt_axis_angle_deg=axis, shift_xy_a=(sx, sy),
        microscope=microscope, defocus_tolerance_a=tolerance, mode=mode,
    )[None]


def _correct(ts: TiltSeries, defocus_tolerance_a: float, mode: Mode) -> TiltSeries:
    if ts.has_frames:
        raise ModelError("dims", "CTF correction applies to summed images (tilt, y, x); motion-correct the frames first")
    missing = [c for c in ("defocus_u", "defocus_v", "astigmatism_angle") if ts.per_tilt(c) is None]
    if missing:
        raise ModelError(missing[0], "per-tilt coordinate is missing; estimate the CTF first (cryocloud ctf)")
    zeros = np.zeros(ts.n_tilts)
    params = np.column_stack([
        ts.per_tilt("defocus_u"), ts.per_tilt("defocus_v"), ts.per_tilt("astigmatism_angle"), ts.tilt_angles,
        *(zeros if ts.per_tilt(c) is None else ts.per_tilt(c) for c in ("shift_x", "shift_y")),
    ])
    arr = da.asarray(ts.data.data).astype(np.float32)
    arr = arr.rechunk((1,) + arr.shape[1:])
    out = arr.map_blocks(_block, params, ts.pixel_size, ts.tilt_axis_angle, ts.microscope, defocus_tolerance_a, mode, dtype=np.float32)
    return ts.with_data(out, ctf_corrected=mode)


def phase_flip(ts: TiltSeries, *, defocus_tolerance_a: float = 500.0) -> TiltSeries:
    """Lazy phase-flipped copy of a tilt series (tilt, y, x) in strips (see the module docstring)."""
    return _correct(ts, defocus_tolerance_a, "flip")


def ctf_multiply(ts: TiltSeries, *, defocus_tolerance_a: float = 500.0) -> TiltSeries:
    """Lazy copy of a tilt series multiplied by its local CTF in strips (for template matching)."""
    return _correct(ts, defocus_tolerance_a, "multiply")
