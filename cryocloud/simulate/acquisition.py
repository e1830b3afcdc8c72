"""Image formation of one tilt: projected potential -> raw image counts (and movie frames).

Per tilt t (angles in degrees, lengths in A, doses in e/A^2), in this order:
1. phase: the excess potential (V) over the ice is projected (`cryocloud.project`, line integral
   in voxels) and scaled to radians, phi = sigma(U) * pixel * P, sigma the interaction constant.
   The flat ice slab adds a constant phase only (an infinite slab: no edge at high tilt).
2. raw frame: the aligned projection is placed in the raw image, rotated by the tilt-axis angle
   and shifted by the per-tilt misalignment (`cryocloud.geometry.aligned_to_raw`), cubic spline;
   outside the simulated volume the specimen is plain ice (phi = 0).
3. CTF with a defocus gradient: the local defocus at raw pixel p is df_t + x'(p) tan t (x' the
   aligned coordinate across the tilt axis; `geometry.image_defocus_gradient`), astigmatism
   (u, v, angle) on top. The image is filtered with the CTF at "knot" defoci spaced at most
   `defocus_step_a` apart across the tilt axis and blended between neighbouring knots with
   linear weights in x' (strips parallel to the tilt axis, seamless). The defocus is that of the
   specimen mid-plane; its change through the ice thickness is not modelled. With `ctf=False`
   the CTF is -1 at every frequency (ideal phase contrast: dark particles, no fringes).
   Weak-phase image: I / I0 = 1 + 2 (CTF * phi), the CTF sign of `cryocloud.optics`.
4. radiation damage: Grant & Grigorieff amplitude attenuation averaged over the exposure of the
   image (or frame): w(k) = 2Ne/E (exp(-N0 / 2Ne) - exp(-(N0 + E) / 2Ne)), N0 its pre-exposure.
5. counts: I0 = dose x pixel area x exp(-t_ice / (mfp cos t)) (inelastic loss, zero-loss image);
   expected counts I0 (1 + contrast), clipped at 0; Poisson noise.
Movie frames split the tilt's dose evenly; frame f is damaged over its own dose window, shifted
by its drift (Fourier shift) and drawn with its own Poisson noise, so the drift-corrected sum
has the statistics of the tilt image. The tilt image itself is an independent draw of that
drift-free sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from cryocloud import optics
from cryocloud.geometry import rotation_2d

ELECTRON_REST_ENERGY_KEV = 510.99895
STREAM_NOISE, STREAM_FRAMES = 3, 4


def interaction_constant(voltage_kv: float) -> float:
    """sigma (rad / (V A)): phase shift per projected potential, relativistic."""
    lam = optics.wavelength_a(voltage_kv)
    e0 = ELECTRON_REST_ENERGY_KEV
    return float(2 * np.pi / (lam * voltage_kv * 1e3) * (e0 + voltage_kv) / (2 * e0 + voltage_kv))


@dataclass(frozen=True)
class Optics:
    """What the per-tilt image formation needs besides the per-tilt values (small, picklable)."""

    pixel_size_a: float
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    tilt_axis_angle_deg: float
    defocus_step_a: float
    ctf: bool
    dose_filter: bool
    noise: bool
    seed: int


def to_raw_frame(aligned: np.ndarray, tilt_axis_angle_deg: float, shift_xy_a: np.ndarray, pixel_size_a: float) -> np.ndarray:
    """Resample an aligned image (y, x) into the raw frame: raw(p) = aligned(R^-1 (p - s)), centres n // 2."""
    shift = np.asarray(shift_xy_a, dtype=np.float64) / pixel_size_a
    if tilt_axis_angle_deg == 0 and not np.any(shift):
        return aligned
    ny, nx = aligned.shape
    r_inv = rotation_2d(-tilt_axis_angle_deg)  # acts on (x, y)
    matrix_yx = r_inv[::-1, ::-1]  # the same map on (y, x)
    centre = np.array([ny // 2, nx // 2], dtype=np.float64)
    offset = centre - matrix_yx @ (centre + shift[::-1])
    return ndimage.affine_transform(aligned, matrix_yx, offset=offset, order=3, mode="constant", cval=0.0)


def aligned_x(shape: tuple[int, int], tilt_axis_angle_deg: float, shift_xy_a: np.ndarray, pixel_size_a: float) -> np.ndarray:
    """x' (A, across the tilt axis, relative to it) of every raw pixel (y, x)."""
    ny, nx = shape
    y = (np.arange(ny) - ny // 2)[:, None] * pixel_size_a - shift_xy_a[1]
    x = (np.arange(nx) - nx // 2)[None, :] * pixel_size_a - shift_xy_a[0]
    a = np.deg2rad(tilt_axis_angle_deg)
    return np.cos(a) * x + np.sin(a) * y  # first row of R(-a) applied to (x, y)


def ctf_image(
    phase: np.ndarray,
    tilt_deg: float,
    defocus_u_a: float,
    defocus_v_a: float,
    astigmatism_angle_deg: float,
    shift_xy_a: np.ndarray,
    opt: Optics,
) -> np.ndarray:
    """Contrast 2 (CTF * phi) of a raw-frame phase image (y, x) with the tilt's defocus gradient."""
    spectrum = sfft.rfft2(phase)
    if not opt.ctf:
        return sfft.irfft2(-2.0 * spectrum, s=phase.shape)
    xp = aligned_x(phase.shape, opt.tilt_axis_angle_deg, shift_xy_a, opt.pixel_size_a)
    slope = np.tan(np.deg2rad(tilt_deg))
    lo, hi = float(xp.min()), float(xp.max())
    n_knots = max(1, int(np.ceil(abs(slope) * (hi - lo) / opt.defocus_step_a)) + 1)
    knots = np.linspace(lo, hi, n_knots) if n_knots > 1 else np.array([0.0])
    out = np.zeros(phase.shape, dtype=np.float64)
    for xk in knots:
        if n_knots == 1:
            weight = 1.0
        else:
            spacing = knots[1] - knots[0]
            weight = np.clip(1.0 - np.abs(xp - xk) / spacing, 0.0, 1.0)
        ddf = xk * slope
        ctf = optics.ctf_2d(
            phase.shape, opt.pixel_size_a, defocus_u_a + ddf, defocus_v_a + ddf, astigmatism_angle_deg,
            voltage_kv=opt.voltage_kv, cs_mm=opt.cs_mm, amplitude_contrast=opt.amplitude_contrast,
        )
        out += weight * sfft.irfft2(spectrum * ctf, s=phase.shape)
    return 2.0 * out


def _damage(shape: tuple[int, int], opt: Optics, pre: float, exposure: float) -> np.ndarray:
    ky, kx = optics.frequency_grid(shape, opt.pixel_size_a, rfft=True)
    k = np.sqrt(ky * ky + kx * kx)
    if not opt.dose_filter:
        return np.ones_like(k)
    return optics.exposure_averaged_dose_weight(k, pre, exposure, voltage_kv=opt.voltage_kv)


def _fourier_shift(shape: tuple[int, int], shift_xy_a: np.ndarray, pixel_size_a: float) -> np.ndarray:
    ky, kx = optics.frequency_grid(shape, pixel_size_a, rfft=True)
    return np.exp(-2j * np.pi * (kx * shift_xy_a[0] + ky * shift_xy_a[1]))


def _counts(expected: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    lam = np.clip(expected, 0.0, None)
    return (rng.poisson(lam) if rng is not None else lam).astype(np.float32)


def expose_tilt(contrast: np.ndarray, index: int, i0: float, pre: float, exposure: float, opt: Optics) -> np.ndarray:
    """Counts (y, x) float32 of the drift-free tilt image; noise seeded by (seed, tilt index)."""
    spectrum = sfft.rfft2(contrast) * _damage(contrast.shape, opt, pre, exposure)
    expected = i0 * (1.0 + sfft.irfft2(spectrum, s=contrast.shape))
    rng = np.random.default_rng([opt.seed, STREAM_NOISE, index]) if opt.noise else None
    return _counts(expected, rng)


def expose_frames(
    contrast: np.ndarray, index: int, i0: float, pre: float, exposure: float, drift_xy_a: np.ndarray, opt: Optics
) -> np.ndarray:
    """Counts (frame, y, x) float32 of a movie: dose split evenly, frame f shifted by drift_xy_a[f] (A)."""
    n_frames = drift_xy_a.shape[0]
    spectrum = sfft.rfft2(contrast)
    rng = np.random.default_rng([opt.seed, STREAM_FRAMES, index]) if opt.noise else None
    per_frame = exposure / n_frames
    frames = np.empty((n_frames,) + contrast.shape, dtype=np.float32)
    for f in range(n_frames):
        filt = _damage(contrast.shape, opt, pre + f * per_frame, per_frame) * _fourier_shift(contrast.shape, drift_xy_a[f], opt.pixel_size_a)
        expected = (i0 / n_frames) * (1.0 + sfft.irfft2(spectrum * filt, s=contrast.shape))
        frames[f] = _counts(expected, rng)
    return frames


def drift_trajectories(n_tilts: int, n_frames: int, drift_a: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth beam-induced drift (A), (tilt, frame, xy), frame 0 at the origin.

    Per tilt: a fast initial motion decaying exponentially (time constant a quarter of the
    exposure) along a random direction, with total length ~`drift_a`, plus a slow, smooth random
    walk (cumulative Gaussian steps smoothed over frames) of ~10% of it.
    """
    t = np.arange(n_frames, dtype=np.float64) / max(n_frames - 1, 1)
    out = np.zeros((n_tilts, n_frames, 2))
    for i in range(n_tilts):
        direction = rng.normal(size=2)
        direction /= np.linalg.norm(direction)
        amplitude = drift_a * rng.uniform(0.5, 1.5)
        decay = (1.0 - np.exp(-t / 0.25)) / (1.0 - np.exp(-4.0))
        steps = rng.normal(scale=0.1 * drift_a / np.sqrt(max(n_frames, 1)), size=(n_frames, 2))
        steps[0] = 0.0
        walk = ndimage.gaussian_filter1d(np.cumsum(steps, axis=0), sigma=1.0, axis=0, mode="nearest")
        out[i] = amplitude * decay[:, None] * direction + walk - walk[0]
    return out
