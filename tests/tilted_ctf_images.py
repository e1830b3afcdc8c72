"""Tilted images simulated from the physics with numpy/scipy only (independent of cryocloud.simulate and
cryocloud.optics), for the CTF tests: a weak-phase specimen of Poisson-distributed blobs, 300 kV, Cs 2.7 mm,
amplitude contrast 0.07, the defocus gradient across the tilt axis (IMOD/Dynamo: at positive tilt the side
of larger x', the distance across the axis, is more underfocused) and shot noise.

The tilt axis lies at `axis_deg` counter-clockwise from the image y axis (SerialEM's TiltAxisAngle), through
the image centre (index n // 2); image x runs along columns, y along rows, so the distance across the axis
of a pixel at (x, y) from the centre is x' = x cos(axis) + y sin(axis).
"""

import numpy as np
from scipy import ndimage

KV, CS_MM, AMPLITUDE = 300.0, 2.7, 0.07
PX, N = 3.0, 512


def wavelength_a(volts: float) -> float:
    """Relativistic electron wavelength (A) at `volts` V."""
    return 12.2643 / np.sqrt(volts * (1 + 0.978466e-6 * volts))


def ctf(k2: np.ndarray, defocus_a: float) -> np.ndarray:
    """CTF at squared spatial frequency k2 (1/A^2), defocus positive = underfocus (A)."""
    lam = wavelength_a(KV * 1e3)
    chi = np.pi * lam * defocus_a * k2 - 0.5 * np.pi * CS_MM * 1e7 * lam**3 * k2**2
    return -np.sqrt(1 - AMPLITUDE**2) * np.sin(chi) - AMPLITUDE * np.cos(chi)


def first_zero_a(defocus_a: float) -> float:
    """Spacing (A) of the CTF's first zero at `defocus_a` (numerically, on a fine k grid)."""
    k = np.linspace(1e-4, 0.1, 20000)
    c = ctf(k * k, defocus_a)
    return float(1.0 / k[np.nonzero(np.sign(c[1:]) != np.sign(c[:-1]))[0][0]])


def intensity(rng, defocus_a: float, tilt_deg: float, *, px: float = PX, n: int = N, strip: int = 16, axis_deg: float = 0.0) -> np.ndarray:
    """Noise-free image (y, x) (relative intensity, mean 1) of a weak-phase specimen (Gaussian blobs of
    sigma 2.5 A, Poisson-distributed, 0.15 rad RMS) through the CTF and a B-factor 150 A^2 envelope.
    The pixels fall in strips `strip` pixels wide across the tilt axis (x'); each strip has the defocus
    of its pixels' mean x', defocus_a + x' tan(tilt) (A). With the axis along y the strips are columns."""
    phase = ndimage.gaussian_filter(rng.poisson(0.5, (n, n)).astype(np.float64), 2.5 / px, mode="wrap")
    phase = 0.15 * (phase - phase.mean()) / phase.std()
    spectrum = np.fft.fft2(phase)
    k2 = np.fft.fftfreq(n, px)[:, None] ** 2 + np.fft.fftfreq(n, px)[None, :] ** 2
    envelope = np.exp(-150.0 * k2 / 4)
    y, x = (np.mgrid[:n, :n] - n // 2) * px
    axis = np.deg2rad(axis_deg)
    across = x * np.cos(axis) + y * np.sin(axis)
    strips = np.floor(across / (strip * px)).astype(int)
    image = np.empty((n, n))
    for s in np.unique(strips):
        inside = strips == s
        local = defocus_a + across[inside].mean() * np.tan(np.deg2rad(tilt_deg))
        image[inside] = 1 + 2 * np.real(np.fft.ifft2(spectrum * ctf(k2, local) * envelope))[inside]
    return image


def exposed(rng, images: np.ndarray, dose: float, px: float = PX) -> np.ndarray:
    """Electron counts per pixel at `dose` e/A^2 (shot noise)."""
    return rng.poisson(np.clip(images, 0, None) * dose * px * px).astype(np.float32)
