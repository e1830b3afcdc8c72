"""Gaussian-blob phantom with analytic projections, for reconstruction tests and the benchmark.

An isotropic 3-D Gaussian of width sigma projects along any ray onto a 2-D Gaussian of the same
width and integral sqrt(2 pi) sigma times its peak, so the tilt series is exact (no projector of
ours involved: no inverse crime). Geometry as in `cryocloud.geometry`: centre indices n // 2,
x' = x cos t + z sin t.
"""

from __future__ import annotations

import numpy as np


def random_blobs(shape_zyx, n_blobs: int, seed: int = 0, margin: float = 0.3) -> np.ndarray:
    """Blobs (n, 5): x, y, z relative to the centre (voxels), sigma (voxels), amplitude.

    Centres lie in the inner (1 - 2 margin) part of x and y and the inner half of z.
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape_zyx
    half = np.array([nx * (0.5 - margin), ny * (0.5 - margin), nz * 0.25])
    centres = rng.uniform(-1.0, 1.0, (n_blobs, 3)) * half
    sigma = rng.uniform(1.5, 5.0, n_blobs)
    amplitude = rng.uniform(0.3, 1.0, n_blobs) * rng.choice([-1.0, 1.0, 1.0], n_blobs)
    return np.column_stack([centres, sigma, amplitude])


def blob_volume(blobs: np.ndarray, shape_zyx) -> np.ndarray:
    """The ground-truth volume (z, y, x) float32: blobs sampled at voxel centres."""
    nz, ny, nx = shape_zyx
    z = np.arange(nz) - nz // 2
    y = np.arange(ny) - ny // 2
    x = np.arange(nx) - nx // 2
    vol = np.zeros(shape_zyx, np.float32)
    for bx, by, bz, s, a in blobs:
        box = [np.abs(c - b) <= 6 * s for c, b in ((z, bz), (y, by), (x, bx))]  # exp(-18): negligible beyond
        gz, gy, gx = (np.exp(-((c[k] - b) ** 2) / (2 * s * s)) for c, k, b in zip((z, y, x), box, (bz, by, bx)))
        vol[np.ix_(*box)] += a * gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
    return vol


def blob_projections(blobs: np.ndarray, shape_yx, tilt_angles_deg) -> np.ndarray:
    """Exact line integrals (tilt, y, x) float32 of the blobs, detector of the volume's x size."""
    ny, nx = shape_yx
    y = np.arange(ny) - ny // 2
    u = np.arange(nx) - nx // 2
    t = np.deg2rad(np.asarray(tilt_angles_deg, dtype=np.float64))
    out = np.zeros((t.size, ny, nx), np.float32)
    for bx, by, bz, s, a in blobs:
        uc = bx * np.cos(t) + bz * np.sin(t)
        gu = np.exp(-((u[None, :] - uc[:, None]) ** 2) / (2 * s * s))
        rows = np.abs(y - by) <= 6 * s
        gy = np.exp(-((y[rows] - by) ** 2) / (2 * s * s))
        out[:, rows, :] += a * np.sqrt(2 * np.pi) * s * gy[None, :, None] * gu[:, None, :]
    return out


def fully_seen(shape_zyx, tilt_angles_deg) -> np.ndarray:
    """Mask (z, 1, x) of voxels that project inside the detector at every tilt."""
    nz, _, nx = shape_zyx
    z = (np.arange(nz) - nz // 2)[:, None]
    x = (np.arange(nx) - nx // 2)[None, :]
    ok = np.ones((nz, nx), bool)
    for a in np.deg2rad(np.asarray(tilt_angles_deg, dtype=np.float64)):
        u = x * np.cos(a) + z * np.sin(a) + nx // 2
        ok &= (u >= 0) & (u <= nx - 1)
    return ok[:, None, :]


def wedge_filtered(volume: np.ndarray, tilt_angles_deg) -> np.ndarray:
    """The volume with the missing wedge removed: the best any linear reconstruction can do.

    Keeps Fourier components (kz, kx) whose direction lies within the tilt range (|atan2(kz, kx)|
    <= max tilt), independently of ky (single-axis tilt about y).
    """
    nz, ny, nx = volume.shape
    kz = np.fft.fftfreq(nz)[:, None, None]
    kx = np.fft.rfftfreq(nx)[None, None, :]
    max_tilt = np.deg2rad(np.max(np.abs(tilt_angles_deg)))
    keep = np.abs(kz) <= np.abs(kx) * np.tan(max_tilt) + 1e-12
    return np.fft.irfftn(np.fft.rfftn(volume) * keep, s=volume.shape, axes=(0, 1, 2)).astype(np.float32)
