"""Beam-induced motion correction of movie frames: global (and optionally patch-based local) alignment.

Algorithm, per tilt (one Dask task per tilt):
1. every frame is Fourier transformed once (rfft2 layout, frames (frame, y, x));
2. iterative alignment: each frame is cross-correlated with the sum of all OTHER aligned frames
   (leave-one-out reference, so a frame's own noise does not pull its peak to zero), both weighted
   by a B-factor filter exp(-B k^2 / 4); the peak is located to sub-pixel precision by a parabola
   through its neighbours and the frame's shift is updated by (n - 1) / n of the peak offset (the
   leave-one-out reference moves the other way by the rest); iterations stop when no shift changes
   by more than `tolerance_px`;
3. the aligned frames are summed with Fourier shifts (no interpolation loss); even-indexed and
   odd-indexed frames are also summed separately (the half-sets used by learned denoising).

Before alignment, raw frames can be detector-corrected (`cryocloud.preprocess.detector`: gain
reference, defect map, hot pixels). Optionally (`FrameDose`), the sums are dose-weighted per frame
(Grant & Grigorieff 2015): frame f, exposed from N0 + f d to N0 + (f + 1) d (e/A^2), is weighted at
spatial frequency k by its exposure-averaged attenuation `optics.exposure_averaged_dose_weight`
(the filter the tilt-level dose weighting applies), and each sum (all frames, even, odd) is
normalised so that its weights add up to its number of frames at every frequency: the mean
and the lowest frequencies keep the plain sum's scale, and each half is weighted the same way.

Optionally (`patches=(ny, nx)`), a local correction follows: the globally aligned movie is cut
into overlapping patches, each aligned in the same way, patch trajectories are smoothed by a
low-order polynomial in time and a plane a + b x + c y is fitted across patches per frame; frames
are then resampled (cubic) with that smooth residual field.

Shift convention: frame f shows the specimen displaced by s_f = (s_x, s_y) with respect to the
aligned sum: frame_f(r) = sum(r - s_f). Shifts have zero mean over the frames of a tilt. They are
returned in Angstrom; the kernels work in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import scipy.fft
import xarray as xr
from scipy import ndimage

from cryocloud.errors import ModelError
from cryocloud.model import TILT_DIMS, TiltSeries
from cryocloud.optics import exposure_averaged_dose_weight, frequency_grid
from cryocloud.preprocess.detector import (
    DetectorCorrection,
    FixedPattern,
    correct_frames,
    fixed_pattern,
)


@dataclass(frozen=True)
class MotionResult:
    """Output of `motion_correct`: lazy sums (tilt, y, x) and the shifts (tilt, frame, axis=(x, y)) in A."""

    sum: TiltSeries
    even: TiltSeries
    odd: TiltSeries
    shifts: xr.DataArray
    #: per tilt: even/odd column/row profile correlation in detector coordinates (see detector.fixed_pattern)
    fixed_pattern: xr.DataArray | None = None


@dataclass(frozen=True)
class FrameDose:
    """Per-frame dose weighting of one tilt: `per_frame` exposure (e/A^2), `pre_exposure` before its
    first frame (e/A^2), `voltage_kv` (100, 200 or 300)."""

    per_frame: float
    pre_exposure: float = 0.0
    voltage_kv: float = 300.0

    def weights(self, n_frames: int, shape: tuple[int, int], pixel_size_a: float) -> np.ndarray:
        """Dose weights (frame, ky, kx) on the rfft2 grid of images of `shape` (y, x)."""
        if not self.per_frame > 0:
            raise ModelError("dose_per_frame", f"expected an exposure per frame > 0 e/A^2, got {self.per_frame}")
        ky, kx = frequency_grid(shape, pixel_size_a, rfft=True)
        k = np.sqrt(ky * ky + kx * kx)
        return np.stack([exposure_averaged_dose_weight(k, self.pre_exposure + f * self.per_frame, self.per_frame,
                                                       voltage_kv=self.voltage_kv) for f in range(n_frames)]).astype(np.float32)


def _phase_ramp(fy: np.ndarray, fx: np.ndarray, shifts_xy: np.ndarray) -> np.ndarray:
    """exp(+2 pi i f.s) per frame: applied to a frame's FFT it moves its content by -s (pixels)."""
    sx = shifts_xy[:, 0, None, None]
    sy = shifts_xy[:, 1, None, None]
    return np.exp(2j * np.pi * (fy[None] * sy + fx[None] * sx)).astype(np.complex64)


def _parabolic_offset(minus: np.ndarray, centre: np.ndarray, plus: np.ndarray) -> np.ndarray:
    """Sub-sample position of the vertex of the parabola through three samples at -1, 0, +1."""
    denom = minus - 2.0 * centre + plus
    safe = np.where(np.abs(denom) > 1e-30, denom, -1.0)
    return np.clip(np.where(np.abs(denom) > 1e-30, 0.5 * (minus - plus) / safe, 0.0), -0.5, 0.5)


def _correlation_peaks(cc: np.ndarray, max_shift_px: float) -> np.ndarray:
    """Sub-pixel peak positions (x, y) of cross-correlation maps (n, y, x) with wrap-around.

    Only displacements within `max_shift_px` of zero are searched.
    """
    n, ny, nx = cc.shape
    dy = np.fft.fftfreq(ny, 1.0 / ny)
    dx = np.fft.fftfreq(nx, 1.0 / nx)
    window = (dy[:, None] ** 2 + dx[None, :] ** 2) <= max(max_shift_px, 1.0) ** 2
    masked = np.where(window[None], cc, -np.inf)
    flat = masked.reshape(n, -1).argmax(axis=1)
    iy, ix = np.unravel_index(flat, (ny, nx))
    frames = np.arange(n)
    centre = cc[frames, iy, ix]
    oy = _parabolic_offset(cc[frames, (iy - 1) % ny, ix], centre, cc[frames, (iy + 1) % ny, ix])
    ox = _parabolic_offset(cc[frames, iy, (ix - 1) % nx], centre, cc[frames, iy, (ix + 1) % nx])
    return np.stack([dx[ix] + ox, dy[iy] + oy], axis=1)


def align_frames(
    frames: np.ndarray,
    pixel_size_a: float,
    *,
    bfactor_a2: float = 150.0,
    iterations: int = 10,
    max_shift_a: float | None = None,
    tolerance_px: float = 0.01,
) -> np.ndarray:
    """Global shifts (frame, (x, y)) in pixels of the frames (frame, y, x) of one tilt.

    Iterative leave-one-out alignment with a B-factor filter (A^2); see the module docstring.
    `max_shift_a` bounds the search (default: a quarter of the smaller image side).
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 3:
        raise ModelError("frames", f"expected (frame, y, x), got shape {frames.shape}")
    n, ny, nx = frames.shape
    if n < 2:
        return np.zeros((n, 2))
    fy, fx = frequency_grid((ny, nx), 1.0, rfft=True)
    k2 = (fy * fy + fx * fx) / pixel_size_a**2
    weight = np.exp(-bfactor_a2 * k2 / 4.0).astype(np.float32)
    weight[0, 0] = 0.0
    spectra = scipy.fft.rfft2(frames) * weight
    max_shift_px = 0.25 * min(ny, nx) if max_shift_a is None else max_shift_a / pixel_size_a
    shifts = np.zeros((n, 2))
    for _ in range(max(iterations, 1)):
        aligned = spectra * _phase_ramp(fy, fx, shifts)
        others = aligned.sum(axis=0, keepdims=True) - aligned
        cc = scipy.fft.irfft2(aligned * np.conj(others), s=(ny, nx))
        # against the mean-free others a frame's residual error e shows as e n / (n - 1)
        update = _correlation_peaks(cc, max_shift_px) * (n - 1) / n
        shifts += update
        shifts -= shifts.mean(axis=0)
        if np.max(np.abs(update)) < tolerance_px:
            break
    return shifts


def _weighted_sum(spectra: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Sum over frames of spectra (frame, ky, kx); with weights, normalised so that they add up to the
    number of frames at every frequency (see module)."""
    if weights is None:
        return spectra.sum(axis=0)
    return (spectra * weights).sum(axis=0) * (len(weights) / weights.sum(axis=0))


def _sums(spectra: np.ndarray, shape: tuple[int, int], weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum, even-frame sum and odd-frame sum (y, x) of aligned frame spectra (frame, ky, kx)."""
    if weights is None:
        even, odd = spectra[0::2].sum(axis=0), spectra[1::2].sum(axis=0)
        total = even + odd
    else:
        total = _weighted_sum(spectra, weights)
        even, odd = _weighted_sum(spectra[0::2], weights[0::2]), _weighted_sum(spectra[1::2], weights[1::2])
    out = scipy.fft.irfft2(np.stack([total, even, odd]), s=shape).astype(np.float32)
    return out[0], out[1], out[2]


def _shifted_sums(frames: np.ndarray, shifts_xy: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum, even-frame sum and odd-frame sum (y, x) of frames moved back by their shifts (px), dose-weighted
    when `weights` (frame, ky, kx) are given."""
    n, ny, nx = frames.shape
    fy, fx = frequency_grid((ny, nx), 1.0, rfft=True)
    aligned = scipy.fft.rfft2(np.asarray(frames, dtype=np.float32)) * _phase_ramp(fy, fx, shifts_xy)
    return _sums(aligned, (ny, nx), weights)


def _patch_starts(n: int, count: int, size: int) -> np.ndarray:
    return np.round(np.linspace(0, n - size, count)).astype(int) if count > 1 else np.array([(n - size) // 2])


def local_motion_field(
    frames: np.ndarray,
    pixel_size_a: float,
    patches: tuple[int, int],
    *,
    bfactor_a2: float = 500.0,
    iterations: int = 10,
    max_shift_a: float | None = None,
    time_degree: int = 2,
) -> np.ndarray:
    """Residual local shifts of globally aligned frames (frame, y, x) as plane coefficients.

    Returns (frame, 3, 2): for each frame the coefficients (a, b, c) of s(x, y) = a + b x + c y
    for the x and y shift components (pixels, x and y in pixels from the image centre).
    Patches (`patches` = count along y, x) overlap by half a patch; their trajectories are
    smoothed by a polynomial of degree `time_degree` in frame index before the spatial fit.
    """
    n, ny, nx = frames.shape
    py, px = patches
    if py < 1 or px < 1 or py * px < 3:
        raise ModelError("patches", f"needs at least 3 patches to fit a plane, got {patches}")
    sy, sx = min(ny, int(2 * ny / (py + 1))), min(nx, int(2 * nx / (px + 1)))
    centres, trajectories = [], []
    t = np.arange(n)
    degree = min(time_degree, n - 1)
    for y0 in _patch_starts(ny, py, sy):
        for x0 in _patch_starts(nx, px, sx):
            patch = frames[:, y0 : y0 + sy, x0 : x0 + sx]
            s = align_frames(patch, pixel_size_a, bfactor_a2=bfactor_a2, iterations=iterations, max_shift_a=max_shift_a)
            smooth = np.stack([np.polyval(np.polyfit(t, s[:, j], degree), t) for j in range(2)], axis=1)
            trajectories.append(smooth)
            centres.append((x0 + sx / 2 - nx / 2, y0 + sy / 2 - ny / 2))
    centres_arr = np.asarray(centres)
    design = np.column_stack([np.ones(len(centres)), centres_arr[:, 0], centres_arr[:, 1]])
    traj = np.asarray(trajectories)  # (patch, frame, 2)
    coeffs, *_ = np.linalg.lstsq(design, traj.reshape(len(centres), -1), rcond=None)
    return coeffs.reshape(3, n, 2).transpose(1, 0, 2)


def apply_local_field(frames: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Frames (frame, y, x) resampled (cubic) so that the local shift field of each frame is undone."""
    n, ny, nx = frames.shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    xc, yc = xx - nx / 2, yy - ny / 2
    out = np.empty_like(frames, dtype=np.float32)
    for f in range(n):
        a, b, c = coefficients[f]
        shift_x = a[0] + b[0] * xc + c[0] * yc
        shift_y = a[1] + b[1] * xc + c[1] * yc
        out[f] = ndimage.map_coordinates(frames[f], [yy + shift_y, xx + shift_x], order=3, mode="wrap")
    return out


@dataclass(frozen=True)
class CorrectedTilt:
    """One motion-corrected tilt: sums (y, x) float32, global shifts (frame, (x, y)) px, fixed-pattern evidence."""

    total: np.ndarray
    even: np.ndarray
    odd: np.ndarray
    shifts_px: np.ndarray
    fixed_pattern: FixedPattern


def correct_tilt(
    frames: np.ndarray,
    pixel_size_a: float,
    *,
    bfactor_a2: float = 150.0,
    iterations: int = 10,
    max_shift_a: float | None = None,
    patches: tuple[int, int] | None = None,
    detector: DetectorCorrection | None = None,
    dose: FrameDose | None = None,
) -> CorrectedTilt:
    """Motion-correct one tilt's raw frames (frame, y, x): detector correction, alignment, (dose-weighted) sums."""
    frames = correct_frames(frames, detector)
    shifts = align_frames(frames, pixel_size_a, bfactor_a2=bfactor_a2, iterations=iterations, max_shift_a=max_shift_a)
    pattern = fixed_pattern(frames, shifts)
    n, ny, nx = frames.shape
    weights = None if dose is None else dose.weights(n, (ny, nx), pixel_size_a)
    if patches is None:
        return CorrectedTilt(*_shifted_sums(frames, shifts, weights), shifts, pattern)
    fy, fx = frequency_grid((ny, nx), 1.0, rfft=True)
    aligned = scipy.fft.irfft2(scipy.fft.rfft2(frames) * _phase_ramp(fy, fx, shifts), s=(ny, nx)).astype(np.float32)
    field = local_motion_field(aligned, pixel_size_a, patches, iterations=iterations, max_shift_a=max_shift_a)
    local = apply_local_field(aligned, field)
    return CorrectedTilt(*_sums(scipy.fft.rfft2(local), (ny, nx), weights), shifts, pattern)


def _tilt_task(block: np.ndarray, detector: DetectorCorrection | None, pixel_size_a: float, options: dict,
               dose: FrameDose | None) -> tuple:
    out = correct_tilt(block[0], pixel_size_a, detector=detector, dose=dose, **options)
    return out.total[None], out.even[None], out.odd[None], out.shifts_px[None], np.array([out.fixed_pattern.correlation])


def summed_like(frames: TiltSeries, data, *, exposure_fraction: float = 1.0, name: str | None = None, **attrs) -> TiltSeries:
    """A (tilt, y, x) TiltSeries with the per-tilt metadata of a frames series and new pixel data.

    `exposure_fraction` scales the per-tilt exposure (e.g. ~0.5 for the even or odd half-sums);
    `attrs` are added to the data's attributes (e.g. dose_weighted=True).
    """
    src = frames.data
    coords = {k: v for k, v in src.coords.items() if "frame" not in v.dims}
    if exposure_fraction != 1.0:
        coords["exposure"] = ("tilt", np.asarray(src.coords["exposure"].values) * exposure_fraction)
    arr = xr.DataArray(data, dims=TILT_DIMS, coords=coords, attrs={**src.attrs, **attrs}, name=name or src.name)
    return TiltSeries(arr, frames.microscope, frames.tilt_axis_angle)


def motion_correct(
    frames: TiltSeries,
    *,
    bfactor_a2: float = 150.0,
    iterations: int = 10,
    max_shift_a: float | None = None,
    patches: tuple[int, int] | None = None,
    detector: DetectorCorrection | None = None,
    dose_weight_frames: bool = False,
    dose_per_frame: float | None = None,
) -> MotionResult:
    """Lazy motion correction of a movie tilt series (tilt, frame, y, x), one Dask task per tilt.

    bfactor_a2: B-factor (A^2) of the alignment filter exp(-B k^2 / 4) (150-500 usual);
    iterations: maximum alignment iterations; max_shift_a: search radius (A);
    patches: (ny, nx) patch grid for local motion, None for global only;
    detector: gain / defects / hot pixels corrected in the raw frames first (checked here);
    dose_weight_frames: weight the sums per frame (see module), each tilt from its pre-exposure with
    `dose_per_frame` (e/A^2; default the tilt's exposure / frames).
    Returns sums (tilt, y, x) with the per-tilt metadata of `frames` and shifts in A (see module).
    """
    if not frames.has_frames:
        raise ModelError("dims", f"motion correction needs movie frames (tilt, frame, y, x), got {frames.data.dims}")
    px = frames.pixel_size
    arr = da.asarray(frames.data.data).astype(np.float32)
    n_tilt, n_frame, ny, nx = arr.shape
    if detector is not None:
        detector.check((ny, nx))
    arr = arr.rechunk((1, n_frame, ny, nx))
    options = dict(bfactor_a2=bfactor_a2, iterations=iterations, max_shift_a=max_shift_a, patches=patches)
    doses = frame_doses(frames, dose_per_frame) if dose_weight_frames else [None] * n_tilt
    task = dask.delayed(_tilt_task, nout=5, pure=True)
    shared = dask.delayed(detector, pure=True)  # one graph key for the gain, not one copy per tilt
    outputs = [task(block, shared, px, options, dose) for block, dose in zip(arr.to_delayed().ravel(), doses)]

    def stack(index: int, shape: tuple, dtype) -> da.Array:
        return da.concatenate([da.from_delayed(o[index], shape=shape, dtype=dtype) for o in outputs], axis=0)

    image = (1, ny, nx)
    shifts = stack(3, (1, n_frame, 2), np.float64) * px
    n_even = (n_frame + 1) // 2
    angles = {"tilt_angle": ("tilt", frames.tilt_angles)}
    shift_da = xr.DataArray(shifts, dims=("tilt", "frame", "axis"), coords={"axis": ["x", "y"], **angles}, name="shift",
                            attrs={"units": "angstrom"})
    pattern = xr.DataArray(stack(4, (1,), np.float64), dims=("tilt",), coords=angles, name="fixed_pattern_correlation")
    weighted = {"dose_weighted": True} if dose_weight_frames else {}
    return MotionResult(
        sum=summed_like(frames, stack(0, image, np.float32), **weighted),
        even=summed_like(frames, stack(1, image, np.float32), exposure_fraction=n_even / n_frame, **weighted),
        odd=summed_like(frames, stack(2, image, np.float32), exposure_fraction=(n_frame - n_even) / n_frame, **weighted),
        shifts=shift_da,
        fixed_pattern=pattern,
    )


def frame_doses(frames: TiltSeries, dose_per_frame: float | None = None) -> list[FrameDose]:
    """Per tilt of a movie series: its FrameDose from its pre-exposure and `dose_per_frame` (e/A^2),
    by default its exposure divided by its number of frames."""
    n_frame = frames.data.sizes["frame"]
    exposure, pre = frames.per_tilt("exposure"), frames.per_tilt("pre_exposure")
    return [FrameDose(dose_per_frame if dose_per_frame is not None else float(exposure[t]) / n_frame, float(pre[t]),
                      frames.microscope.voltage_kv) for t in range(frames.n_tilts)]
