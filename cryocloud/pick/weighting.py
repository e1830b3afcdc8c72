"""Search weights in Fourier space from the tilt series actually collected.

A tomogram reconstructed from a tilt series samples Fourier space on one central slice per tilt
(Fourier slice theorem), each slice multiplied by that tilt's CTF and attenuated by the dose
received so far. The template is given the same sampling: for tilt i with beam direction
d_i = (-sin t_i, 0, cos t_i) (x, y, z; cryocloud.geometry: the specimen rotates about +y),

    W(k) = sum_i s_i(k) f_i(k) / max(1, sum_i s_i(k)),   s_i(k) = max(0, 1 - |k . d_i| / dk)

with dk one frequency step of the grid (a slice one voxel thick, linearly interpolated) and
f_i = CTF_i(k) (signed, for tomograms that are not CTF-corrected; |CTF_i| for phase-flipped ones;
1 without CTF) x dose weight exp(-N_i / 2 Ne(|k|)) at the tilt's mid-exposure
N_i = pre_exposure + exposure / 2 (cryocloud.optics). The CTF of tilt i is evaluated at the
frequency's coordinates in that tilt's image plane: x' = (cos t, 0, sin t), y' = (0, 1, 0).
Without CTF and dose, W is 1 inside the sampled region and 0 in the missing wedge (the real tilt
angles, not a generic wedge).

The defocus of a tilt is that of the tomogram centre; `TiltWeighting.at(position)` moves it to
another point (depth and distance from the tilt axis, cryocloud.geometry.point_defocus), so that
each sub-volume of a search gets the CTF of its own place (`tilt_weight_at` evaluates W on the
search band only).

Also here: a raised-cosine low-pass and the spectral whitening filter from a radial power spectrum
(cryocloud.pick.spectrum: the noise from even/odd half tomograms, or the tomogram's own power).
Weights are float32 on the rfft grid (z, y, x // 2 + 1) of a volume shape (z, y, x).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from cryocloud.errors import ModelError
from cryocloud.geometry import point_defocus
from cryocloud.model import Microscope, TiltSeries
from cryocloud.optics import astigmatic_defocus, chi, ctf_from_chi, dose_weight, frequency_grid
from cryocloud.pick.spectrum import RadialSpectrum

CtfMode = Literal["signed", "abs", "none"]


@dataclass(frozen=True)
class TiltWeighting:
    """Per-tilt acquisition parameters for the weight: angles (deg), mid-exposure dose (e/A^2) and
    defocus (A, underfocus positive; None when unknown), with the microscope's optics."""

    tilt_angles: np.ndarray
    dose: np.ndarray | None = None
    defocus_u: np.ndarray | None = None
    defocus_v: np.ndarray | None = None
    astigmatism_angle: np.ndarray | None = None
    microscope: Microscope = Microscope()

    @classmethod
    def from_tilt_series(cls, ts: TiltSeries) -> "TiltWeighting":
        """Angles, dose (pre_exposure + exposure / 2) and, when estimated, defocus of each tilt."""
        dose = ts.per_tilt("pre_exposure") + 0.5 * ts.per_tilt("exposure")
        du = ts.per_tilt("defocus_u")
        dv = ts.per_tilt("defocus_v")
        return cls(ts.tilt_angles, dose if np.any(dose > 0) else None, du, du if dv is None else dv, ts.per_tilt("astigmatism_angle"), ts.microscope)

    @classmethod
    def wedge(cls, min_angle: float, max_angle: float, step: float = 3.0) -> "TiltWeighting":
        """A plain missing wedge: tilts from `min_angle` to `max_angle` (deg) every `step`."""
        if not -90 <= min_angle < max_angle <= 90 or step <= 0:
            raise ModelError("tilt_range", f"expected -90 <= min < max <= 90 and step > 0, got {min_angle}, {max_angle}, {step}")
        return cls(np.arange(min_angle, max_angle + 1e-9, step))


    def at(self, position_a: np.ndarray) -> "TiltWeighting":
        """The same tilts with each tilt's defocus at `position_a` (x, y, z in A, relative to the
        tomogram centre): df_i - z_rot (cryocloud.geometry.point_defocus), so at positive tilt a
        point at larger x or lower z is more underfocused. Without defocus: unchanged."""
        if self.defocus_u is None:
            return self
        point = np.asarray(position_a, dtype=np.float64).reshape(1, 3)
        shift = np.array([point_defocus(point, float(t), 0.0)[0] for t in self.tilt_angles])
        return replace(self, defocus_u=np.asarray(self.defocus_u) + shift, defocus_v=np.asarray(self.defocus_v) + shift)


def tilt_weight(shape: tuple[int, int, int], voxel_size: float, tilts: TiltWeighting, *, ctf: CtfMode = "signed") -> np.ndarray:
    """W on the rfft grid of `shape` (z, y, x) at `voxel_size` (A); see the module docstring."""
    kz, ky, kx = frequency_grid(shape, voxel_size, rfft=True)
    return _weight(kz, ky, kx, 1.0 / (max(shape) * voxel_size), tilts, ctf)


def tilt_weight_at(kxyz: np.ndarray, shape: tuple[int, int, int], voxel_size: float, tilts: TiltWeighting, *, ctf: CtfMode = "signed") -> np.ndarray:
    """W at frequencies `kxyz` (K, 3: x, y, z in cycles per voxel) of the rfft grid of `shape`:
    the values `tilt_weight` has there, (K,) float32."""
    k = np.asarray(kxyz, dtype=np.float64) / voxel_size
    return _weight(k[:, 2], k[:, 1], k[:, 0], 1.0 / (max(shape) * voxel_size), tilts, ctf)


def _weight(kz: np.ndarray, ky: np.ndarray, kx: np.ndarray, dk: float, tilts: TiltWeighting, ctf: CtfMode) -> np.ndarray:
    """W at broadcastable frequency arrays (1/A) with slices `dk` (1/A) thick; each tilt's CTF and
    dose are evaluated only where its slice reaches."""
    shape = np.broadcast_shapes(kz.shape, ky.shape, kx.shape)
    kz, ky, kx = (np.broadcast_to(a, shape).reshape(-1) for a in (kz, ky, kx))
    k = np.sqrt(kz * kz + ky * ky + kx * kx)
    total = np.zeros(k.size, dtype=np.float64)
    coverage = np.zeros_like(total)
    use_ctf = ctf != "none" and tilts.defocus_u is not None
    m = tilts.microscope
    for i, angle in enumerate(np.deg2rad(np.asarray(tilts.tilt_angles, dtype=np.float64))):
        along_beam = -np.sin(angle) * kx + np.cos(angle) * kz
        near = np.flatnonzero(np.abs(along_beam) < dk)
        s = 1.0 - np.abs(along_beam[near]) / dk
        f = np.ones(near.size)
        if use_ctf:
            kxp = np.cos(angle) * kx[near] + np.sin(angle) * kz[near]
            astig = 0.0 if tilts.astigmatism_angle is None else float(tilts.astigmatism_angle[i])
            df = astigmatic_defocus(ky[near], kxp, float(tilts.defocus_u[i]), float(tilts.defocus_v[i]), astig)
            c = ctf_from_chi(chi(k[near], df, voltage_kv=m.voltage_kv, cs_mm=m.cs_mm), m.amplitude_contrast)
            f = f * (np.abs(c) if ctf == "abs" else c)
        if tilts.dose is not None:
            f = f * dose_weight(k[near], float(tilts.dose[i]), voltage_kv=m.voltage_kv)
        total[near] += s * f
        coverage[near] += s
    return (total / np.maximum(coverage, 1.0)).astype(np.float32).reshape(shape)


def lowpass(shape: tuple[int, int, int], voxel_size: float, resolution_a: float, edge_fraction: float = 0.1) -> np.ndarray:
    """Raised-cosine low-pass on the rfft grid: 1 below 1/resolution, 0 above (1 + edge_fraction)/resolution."""
    if resolution_a < 2 * voxel_size - 1e-9:
        raise ModelError("resolution", f"{resolution_a} A is finer than Nyquist ({2 * voxel_size} A)")
    kz, ky, kx = frequency_grid(shape, voxel_size, rfft=True)
    k = np.sqrt(kz * kz + ky * ky + kx * kx) * resolution_a
    t = np.clip((k - 1.0) / edge_fraction, 0.0, 1.0)
    return (0.5 * (1 + np.cos(np.pi * t))).astype(np.float32)


def whitening(shape: tuple[int, int, int], voxel_size: float, spectrum: RadialSpectrum) -> np.ndarray:
    """1 / sqrt(P(|k|)) on the rfft grid of `shape` (z, y, x) at `voxel_size` (A), P from
    `spectrum` (cryocloud.pick.spectrum), scaled to a maximum of 1; 0 where P is not positive."""
    kz, ky, kx = frequency_grid(shape, voxel_size, rfft=True)
    power = spectrum.at(np.sqrt(kz * kz + ky * ky + kx * kx))
    inv = np.where(power > 0, 1.0 / np.sqrt(np.maximum(power, 1e-300)), 0.0)
    top = inv.max()
    return (inv / top if top > 0 else inv).astype(np.float32)
