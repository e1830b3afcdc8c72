"""Resample raw tilt images into the aligned frame (tilt axis along image y), lazily, one task per tilt and slab of rows.

`apply_alignment` is the one way a stored alignment (`tilt_axis_angle`, per-tilt `shift_x` /
`shift_y`, as `cryocloud align` and the pipeline's align stage write them) becomes aligned images:
`cryocloud.reconstruct.reconstruct` calls it for a tilt series whose axis is not yet along y, with
slabs of the rows its own tasks reconstruct, so each reconstruction task resamples only the rows it
needs, from only the raw pixels they come from.
"""

from __future__ import annotations

from dataclasses import replace

import dask
import dask.array as da
import numpy as np
from scipy import ndimage

from cryocloud.errors import ModelError
from cryocloud.geometry import rotation_2d
from cryocloud.model import TiltSeries

SPLINE_MARGIN = 10  # raw pixels read around the needed region: the cubic-spline prefilter's reach (0.27^10 ~ 2e-6)
BLOCK_BYTES = 16 * 2**20  # default size of one aligned block (float32 rows of one tilt)


def stored_alignment(ts: TiltSeries) -> tuple[float, np.ndarray]:
    """(tilt-axis angle in deg, raw-frame shifts (T, 2) in raw pixels) of a tilt series, checked.

    The alignment is the tilt series' `tilt_axis_angle` and per-tilt `shift_x` / `shift_y` (A). A
    series with a tilted axis and no shifts has not been aligned and is refused, as are shifts that
    move an image entirely off the field.
    """
    if ts.has_frames:
        raise ModelError("data", "alignment applies to images (tilt, y, x); sum the movie frames first")
    axis = float(ts.tilt_axis_angle)
    if not np.isfinite(axis):
        raise ModelError("tilt_axis_angle", f"is {axis}; expected a finite angle (deg)")
    sx, sy = ts.per_tilt("shift_x"), ts.per_tilt("shift_y")
    if sx is None and sy is None:
        if abs(axis) > 1e-6:
            raise ModelError(
                "tilt_axis_angle",
                f"is {axis:g} deg and the tilt series has no per-tilt shift_x / shift_y: it is not aligned; "
                "align it first (cryocloud align), reconstruction needs the tilt axis along y",
            )
        sx = sy = np.zeros(ts.n_tilts)
    elif sx is None or sy is None:
        raise ModelError("shift_y" if sy is None else "shift_x", "is missing while the other shift is stored; expected both (A)")
    shifts = np.stack([np.asarray(sx, np.float64), np.asarray(sy, np.float64)], axis=1) / ts.pixel_size
    if not np.all(np.isfinite(shifts)):
        raise ModelError("shift_x", "holds NaN or infinite values; expected finite shifts (A)")
    ny, nx = ts.data.shape[-2:]
    off = np.flatnonzero((np.abs(shifts[:, 0]) >= nx) | (np.abs(shifts[:, 1]) >= ny))
    if off.size:
        t = int(off[0])
        raise ModelError(
            "shift_x",
            f"of tilt {t} ({ts.tilt_angles[t]:g} deg) is ({shifts[t, 0]:.0f}, {shifts[t, 1]:.0f}) px: it moves the image "
            f"off its {nx} x {ny} px field; expected shifts in A within the image",
        )
    return axis, shifts


def _raw_box(rows: tuple[int, int], shape_yx: tuple[int, int], axis_deg: float, shift_xy: np.ndarray) -> tuple[int, int, int, int]:
    """Raw pixels (y0, y1, x0, x1), half-open, that aligned rows [rows) of one tilt are read from, with the spline margin."""
    ny, nx = shape_yx
    cy, cx = ny // 2, nx // 2
    corners = np.array([[x - cx, y - cy] for x in (0, nx - 1) for y in (rows[0], rows[1] - 1)], dtype=np.float64)
    raw = corners @ rotation_2d(axis_deg).T + shift_xy + (cx, cy)
    lo = np.floor(raw.min(axis=0)).astype(int) - SPLINE_MARGIN
    hi = np.ceil(raw.max(axis=0)).astype(int) + SPLINE_MARGIN + 1
    x0, y0 = np.clip(lo, 0, (nx - 1, ny - 1))
    x1, y1 = np.clip(hi, (x0 + 1, y0 + 1), (nx, ny))
    return int(y0), int(y1), int(x0), int(x1)


def _resample(region: np.ndarray, origin_yx: tuple[int, int], rows: tuple[int, int], shape_yx: tuple[int, int],
              axis_deg: float, shift_xy: np.ndarray) -> np.ndarray:
    """Aligned rows [rows) of one tilt: aligned(p) = raw(R(axis) p + s) (positions relative to the centres),
    cubic spline from the raw `region` whose first pixel is raw pixel `origin_yx`; outside the raw image the
    nearest edge pixel (local, so the result does not depend on how the rows are split into slabs)."""
    ny, nx = shape_yx
    r = rotation_2d(axis_deg)
    centre = np.array([nx // 2, ny // 2], dtype=np.float64)
    # raw_xy = R (q - centre) + s + centre, q = (j, rows[0] + i) the aligned pixel; in region indices (y, x)
    offset_xy = r @ (np.array([0.0, rows[0]]) - centre) + shift_xy + centre - np.array(origin_yx[::-1], dtype=np.float64)
    return ndimage.affine_transform(
        np.asarray(region, dtype=np.float32), r[::-1, ::-1], offset=offset_xy[::-1], output_shape=(rows[1] - rows[0], nx),
        order=3, mode="nearest",
    ).astype(np.float32)


def default_block_rows(shape_yx: tuple[int, int]) -> int:
    """Aligned rows per block: about BLOCK_BYTES of one tilt, a multiple of 16 (so binnings up to 16 tile it)."""
    ny, nx = shape_yx
    return int(min(ny, max(16, BLOCK_BYTES // (4 * nx) // 16 * 16)))


def apply_alignment(ts: TiltSeries, *, slab_rows: int | None = None) -> TiltSeries:
    """Aligned tilt series: each image resampled so that aligned(p) = raw(R(axis) p + s) (`geometry.aligned_to_raw`).

    Uses `ts.tilt_axis_angle` and the per-tilt `shift_x` / `shift_y` (A), checked by `stored_alignment`.
    The result is lazy and of the same shape, chunked (1 tilt, `slab_rows` rows, all x) (default
    `default_block_rows`); each chunk reads only the raw pixels it comes from. tilt_axis_angle and shifts are 0.
    """
    axis, raw_shifts = stored_alignment(ts)
    data = ts.data.data if isinstance(ts.data.data, da.Array) else da.from_array(np.asarray(ts.data.data), chunks=(1, -1, -1))
    n_t, ny, nx = data.shape
    rows = default_block_rows((ny, nx)) if slab_rows is None else int(slab_rows)
    if rows < 1:
        raise ModelError("slab_rows", f"expected a positive number of rows, got {slab_rows}")
    tilts = []
    for t in range(n_t):
        slabs = []
        for y0 in range(0, ny, rows):
            span = (y0, min(ny, y0 + rows))
            b = _raw_box(span, (ny, nx), axis, raw_shifts[t])
            task = dask.delayed(_resample, pure=True)(data[t, b[0] : b[1], b[2] : b[3]], (b[0], b[2]), span, (ny, nx), axis, raw_shifts[t])
            slabs.append(da.from_delayed(task, shape=(span[1] - span[0], nx), dtype=np.float32))
        tilts.append(da.concatenate(slabs, axis=0))
    zeros = np.zeros(n_t)
    aligned = ts.with_data(da.stack(tilts)).with_per_tilt(shift_x=zeros, shift_y=zeros)
    return replace(aligned, tilt_axis_angle=0.0)
