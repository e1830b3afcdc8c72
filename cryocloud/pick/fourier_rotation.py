"""Rotation of a template in Fourier space: a gridding spectrum sampled at rotated frequencies.

All arrays are indexed (z, y, x); rotations act on (x, y, z) column vectors (cryocloud.geometry).

The masked template's FFT is computed once on a box padded `OVERSAMPLING` times (or more, to a
power of two so that the periodic wrap is a bit mask), with the trilinear-interpolation
apodisation (sinc^2 per axis) divided out beforehand (gridding). The spectrum of the template
rotated by R is then T_R(k) = T(R^T k), sampled trilinearly by a numba kernel at the frequencies
k (cycles per voxel) that a search or an alignment uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

OVERSAMPLING = 2


@dataclass(frozen=True)
class TemplateSpectrum:
    """FFT of a masked template on a box padded at least `OVERSAMPLING` times (to a power of two),
    origin at the template centre.

    `values` (P, P, P) complex64 full FFT; `box` the template's edge (voxels); `mask_values` the same
    for a non-spherical mask (None for a spherical one, which needs no rotation).
    """

    values: np.ndarray
    box: int
    mask_values: np.ndarray | None

    @property
    def padded(self) -> int:
        return self.values.shape[0]


def _gridding_spectrum(volume: np.ndarray) -> np.ndarray:
    """Padded, origin-centred FFT of a cubic volume, pre-divided by trilinear apodisation."""
    b = volume.shape[0]
    p = 1 << int(np.ceil(np.log2(OVERSAMPLING * b)))  # a power of two: periodic wrap by bit mask
    padded = np.zeros((p, p, p), dtype=np.float64)
    c = b // 2
    padded[:b, :b, :b] = volume
    padded = np.roll(padded, (-c, -c, -c), axis=(0, 1, 2))  # template centre at index 0
    apod = np.sinc(np.fft.fftfreq(p)) ** 2  # argument: distance from the origin / padded box
    padded /= apod[:, None, None] * apod[None, :, None] * apod[None, None, :]
    return np.fft.fftn(padded).astype(np.complex64)


def template_spectrum(template: np.ndarray, mask: np.ndarray, *, spherical: bool) -> TemplateSpectrum:
    """Spectrum of the template normalised under `mask` (zero mean, unit variance) and multiplied by it.

    `template` and `mask` are cubic (b, b, b) with their centre at index b // 2.
    """
    t = np.asarray(template, dtype=np.float64)
    m = np.asarray(mask, dtype=np.float64)
    if t.ndim != 3 or len(set(t.shape)) != 1 or t.shape != m.shape:
        raise ValueError(f"template and mask must be cubic and of one shape, got {t.shape} and {m.shape}")
    n = m.sum()
    mean = (t * m).sum() / n
    std = np.sqrt(((t - mean) ** 2 * m).sum() / n)
    if std == 0:
        raise ValueError("the template is constant under its mask")
    masked = (t - mean) / std * m
    return TemplateSpectrum(_gridding_spectrum(masked), t.shape[0], None if spherical else _gridding_spectrum(m))


@numba.njit(cache=True, fastmath=True, nogil=True)
def _sample(spec, m, qx, qy, qz):
    """Trilinear sample of a periodic (p, p, p) complex grid, p a power of two and m = p - 1, at
    (x, y, z) in grid units."""
    fx, fy, fz = np.floor(qx), np.floor(qy), np.floor(qz)
    dx, dy, dz = qx - fx, qy - fy, qz - fz
    ix, iy, iz = int(fx), int(fy), int(fz)
    x0, y0, z0 = ix & m, iy & m, iz & m
    x1, y1, z1 = (ix + 1) & m, (iy + 1) & m, (iz + 1) & m
    c00 = spec[z0, y0, x0] + (spec[z0, y0, x1] - spec[z0, y0, x0]) * dx
    c01 = spec[z0, y1, x0] + (spec[z0, y1, x1] - spec[z0, y1, x0]) * dx
    c10 = spec[z1, y0, x0] + (spec[z1, y0, x1] - spec[z1, y0, x0]) * dx
    c11 = spec[z1, y1, x0] + (spec[z1, y1, x1] - spec[z1, y1, x0]) * dx
    c0 = c00 + (c01 - c00) * dy
    c1 = c10 + (c11 - c10) * dy
    return c0 + (c1 - c0) * dz


@numba.njit(cache=True, fastmath=True, nogil=True)
def _fill_rotated(rot, spec, kxyz, weight, mult, vhat, flat, out):
    """out[flat] = conj(W T(R^T k)) * vhat for the band; returns sum mult |W T|^2 (Parseval)."""
    p = np.float32(spec.shape[0])
    m = spec.shape[0] - 1
    r = rot.astype(np.float32)
    norm = 0.0
    for j in range(flat.size):
        kx, ky, kz = kxyz[j, 0] * p, kxyz[j, 1] * p, kxyz[j, 2] * p
        qx = r[0, 0] * kx + r[1, 0] * ky + r[2, 0] * kz
        qy = r[0, 1] * kx + r[1, 1] * ky + r[2, 1] * kz
        qz = r[0, 2] * kx + r[1, 2] * ky + r[2, 2] * kz
        t = _sample(spec, m, qx, qy, qz) * weight[j]
        norm += mult[j] * (t.real * t.real + t.imag * t.imag)
        out[flat[j]] = np.conj(t) * vhat[j]
    return norm
