"""Image helpers of the alignment: binning, band-pass, soft windows and affine resampling.

Arrays are (tilt, y, x) or (y, x); positions are (x, y) in pixels relative to the centre index
(n // 2 along each axis), as in `cryocloud.geometry`.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from scipy import ndimage

from cryocloud.geometry import rotation_2d


def binned_centre_offset(shape_yx: tuple[int, int], binning: int) -> np.ndarray:
    """Raw position (x, y) in raw pixels, relative to the raw centre, of the binned centre pixel.

    A binned position u_b (relative to the binned centre) is at binning * u_b + offset in the raw image.
    """
    out = []
    for n in (shape_yx[1], shape_yx[0]):
        out.append((n // binning // 2) * binning + (binning - 1) / 2 - n // 2)
    return np.array(out, dtype=np.float64)


def edge_taper(shape_yx: tuple[int, int], width: int) -> np.ndarray:
    """Window (y, x) that is 1 inside and falls to 0 at the borders with a cosine edge of `width` px."""
    def ramp(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float64)
        d = np.minimum(i, n - 1 - i)
        w = max(int(width), 1)
        return np.where(d >= w, 1.0, 0.5 - 0.5 * np.cos(np.pi * np.clip(d, 0, w) / w))

    return np.outer(ramp(shape_yx[0]), ramp(shape_yx[1])).astype(np.float32)


def disk_window(shape_yx: tuple[int, int], radius: float, edge: float) -> np.ndarray:
    """Disk (y, x) of `radius` px around the centre index with a cosine edge of `edge` px outside it."""
    y = np.arange(shape_yx[0]) - shape_yx[0] // 2
    x = np.arange(shape_yx[1]) - shape_yx[1] // 2
    r = np.hypot(y[:, None], x[None, :])
    t = np.clip((r - radius) / max(edge, 1e-6), 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)


def bandpass(stack: np.ndarray, *, low_cut: float, high_cut: float) -> np.ndarray:
    """Gaussian band-pass of a stack (tilt, y, x) in cycles per pixel (0.5 = Nyquist).

    Keeps frequencies between `high_cut` (Gaussian high-pass sigma, removes gradients and carbon
    edges) and `low_cut` (Gaussian low-pass sigma, removes noise); zero mean afterwards.
    """
    _, h, w = stack.shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f2 = fy**2 + fx**2
    response = np.exp(-f2 / (2 * low_cut**2)) * (1.0 - np.exp(-f2 / (2 * high_cut**2)))
    spectrum = scipy.fft.rfft2(stack, axes=(-2, -1), workers=-1)
    return scipy.fft.irfft2(spectrum * response, s=(h, w), axes=(-2, -1), workers=-1).astype(np.float32)


def prepare_stack(stack: np.ndarray, *, low_cut: float = 0.25, high_cut: float = 0.02) -> np.ndarray:
    """Images (tilt, y, x) ready for correlation: normalised, tapered to 0 at the borders, band-passed.

    Each image is made zero-mean with unit variance; the borders (6 % of the smaller side) fall
    smoothly to 0 so that resampled images have no hard footprint edge.
    """
    stack = np.asarray(stack, dtype=np.float32)
    mean = stack.mean(axis=(1, 2), keepdims=True)
    std = stack.std(axis=(1, 2), keepdims=True)
    normalised = (stack - mean) / np.where(std > 0, std, 1.0)
    taper = edge_taper(stack.shape[1:], int(0.06 * min(stack.shape[1:])))
    return bandpass(normalised * taper, low_cut=low_cut, high_cut=high_cut) * taper


def affine_sample(
    image: np.ndarray,
    matrix_xy: np.ndarray,
    offset_xy: np.ndarray,
    out_shape: tuple[int, int] | None = None,
    *,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """out[p] = image[matrix_xy @ p + offset_xy], p (x, y) relative to the centre of out, image position
    relative to the centre of `image`; interpolation of `order` (spline), `cval` outside."""
    shape = image.shape if out_shape is None else out_shape
    m = np.asarray(matrix_xy, dtype=np.float64)[::-1, ::-1]
    c_in = np.array([image.shape[0] // 2, image.shape[1] // 2], dtype=np.float64)
    c_out = np.array([shape[0] // 2, shape[1] // 2], dtype=np.float64)
    offset = c_in + np.asarray(offset_xy, dtype=np.float64)[::-1] - m @ c_out
    return ndimage.affine_transform(
        image, m, offset=offset, output_shape=tuple(shape), order=order, mode="constant", cval=cval, prefilter=order > 1
    )


def aligned_view(image: np.ndarray, axis_deg: float, shift_xy: np.ndarray, stretch: float = 1.0, *, order: int = 1) -> np.ndarray:
    """A raw image seen in the aligned frame, optionally stretched perpendicular to the tilt axis.

    out(u, v) = image(R(axis) (stretch * u + d_x, v + d_y)) with d = `shift_xy` the shift expressed
    in the aligned frame (d = R(-axis) s for a raw-frame shift s, see `cryocloud.geometry`), so
    with stretch 1 this is the aligned projection of `cryocloud.geometry.aligned_to_raw`.
    """
    r = rotation_2d(axis_deg)
    matrix = r @ np.diag([stretch, 1.0])
    return affine_sample(image, matrix, r @ np.asarray(shift_xy, dtype=np.float64), order=order)
