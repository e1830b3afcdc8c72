"""Electron optics shared by simulation and processing: wavelength, CTF, dose filter.

Conventions:
- Defocus in Angstrom, positive = underfocus. Astigmatism angle in degrees, the direction of
  `defocus_u` measured counter-clockwise from the +x axis of the image.
- Spatial frequencies in 1/Angstrom. Frequency grids follow numpy's FFT layout: `fftfreq` along
  y, `rfftfreq` along x when `rfft=True`.
- CTF = -sqrt(1 - A^2) sin(chi) - A cos(chi), chi = pi lambda df k^2 - pi/2 Cs lambda^3 k^4
  (negative at low frequency for underfocus, as in CTFFIND4 / RELION).
- Dose filter: Grant & Grigorieff 2015, critical exposure Ne(k) = 0.245 k^-1.665 + 2.81 e/A^2
  at 300 kV; exposures at 200 kV are scaled by 1/0.8 and at 100 kV by 1/0.64.
"""

from __future__ import annotations

import numpy as np

from cryocloud.errors import ModelError


def wavelength_a(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Angstrom for an acceleration voltage in kV."""
    if voltage_kv <= 0:
        raise ModelError("voltage_kv", f"must be positive, got {voltage_kv}")
    volts = voltage_kv * 1e3
    return 12.2643 / np.sqrt(volts * (1.0 + 0.978466e-6 * volts))


def frequency_grid(
    shape: tuple[int, ...], pixel_size_a: float, *, rfft: bool = False
) -> tuple[np.ndarray, ...]:
    """Spatial frequency coordinates (1/A) for an array of `shape` in numpy axis order.

    Returns one broadcastable array per axis (sparse meshgrid). With `rfft=True` the last axis is
    the half axis of `numpy.fft.rfftn`.
    """
    axes = []
    for i, n in enumerate(shape):
        last = i == len(shape) - 1
        f = np.fft.rfftfreq(n, d=pixel_size_a) if (rfft and last) else np.fft.fftfreq(n, d=pixel_size_a)
        axes.append(f.astype(np.float64))
    return tuple(np.meshgrid(*axes, indexing="ij", sparse=True))


def chi(
    k: np.ndarray,
    defocus_a: np.ndarray | float,
    *,
    voltage_kv: float,
    cs_mm: float,
    phase_shift_rad: float = 0.0,
) -> np.ndarray:
    """Phase aberration chi (radians) at spatial frequency magnitude `k` (1/A)."""
    lam = wavelength_a(voltage_kv)
    cs_a = cs_mm * 1e7
    k2 = np.square(k)
    return np.pi * lam * defocus_a * k2 - 0.5 * np.pi * cs_a * lam**3 * k2 * k2 + phase_shift_rad


def ctf_from_chi(chi_rad: np.ndarray, amplitude_contrast: float) -> np.ndarray:
    """CTF value from the phase aberration: -sqrt(1-A^2) sin chi - A cos chi."""
    a = amplitude_contrast
    return -np.sqrt(1.0 - a * a) * np.sin(chi_rad) - a * np.cos(chi_rad)


def ctf_1d(
    k: np.ndarray,
    defocus_a: float,
    *,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    phase_shift_rad: float = 0.0,
) -> np.ndarray:
    """Radially symmetric CTF at frequencies `k` (1/A) for one defocus (A, underfocus positive)."""
    c = chi(k, defocus_a, voltage_kv=voltage_kv, cs_mm=cs_mm, phase_shift_rad=phase_shift_rad)
    return ctf_from_chi(c, amplitude_contrast)


def astigmatic_defocus(
    ky: np.ndarray,
    kx: np.ndarray,
    defocus_u_a: float,
    defocus_v_a: float,
    astigmatism_angle_deg: float,
) -> np.ndarray:
    """Effective defocus (A) along each frequency direction for an astigmatic CTF."""
    azimuth = np.arctan2(ky, kx)
    mean = 0.5 * (defocus_u_a + defocus_v_a)
    half_diff = 0.5 * (defocus_u_a - defocus_v_a)
    return mean + half_diff * np.cos(2.0 * (azimuth - np.deg2rad(astigmatism_angle_deg)))


def ctf_2d(
    shape: tuple[int, int],
    pixel_size_a: float,
    defocus_u_a: float,
    defocus_v_a: float | None = None,
    astigmatism_angle_deg: float = 0.0,
    *,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    phase_shift_rad: float = 0.0,
    rfft: bool = True,
) -> np.ndarray:
    """2D CTF on the FFT grid of an image of `shape` (y, x), float32.

    `rfft=True` gives the half-plane layout of `numpy.fft.rfft2`.
    """
    if defocus_v_a is None:
        defocus_v_a = defocus_u_a
    ky, kx = frequency_grid(shape, pixel_size_a, rfft=rfft)
    k = np.sqrt(ky * ky + kx * kx)
    df = astigmatic_defocus(ky, kx, defocus_u_a, defocus_v_a, astigmatism_angle_deg)
    c = chi(k, df, voltage_kv=voltage_kv, cs_mm=cs_mm, phase_shift_rad=phase_shift_rad)
    return ctf_from_chi(c, amplitude_contrast).astype(np.float32)


def critical_exposure(k: np.ndarray) -> np.ndarray:
    """Critical exposure Ne(k) in e/A^2 at 300 kV (Grant & Grigorieff 2015), k in 1/A.

    At k = 0 the value is infinite (no damage of the mean).
    """
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 0.245 * np.power(k, -1.665) + 2.81


def voltage_dose_scale(voltage_kv: float) -> float:
    """Factor that converts an exposure at `voltage_kv` into its 300 kV equivalent."""
    if abs(voltage_kv - 300.0) < 1.0:
        return 1.0
    if abs(voltage_kv - 200.0) < 1.0:
        return 1.0 / 0.8
    if abs(voltage_kv - 100.0) < 1.0:
        return 1.0 / 0.64
    raise ModelError("voltage_kv", f"dose weighting is calibrated for 100, 200 or 300 kV, got {voltage_kv}")


def dose_weight(k: np.ndarray, exposure_e_per_a2: float, *, voltage_kv: float = 300.0) -> np.ndarray:
    """Amplitude attenuation exp(-N / (2 Ne(k))) after an accumulated exposure N (e/A^2)."""
    n = exposure_e_per_a2 * voltage_dose_scale(voltage_kv)
    return np.exp(-n / (2.0 * critical_exposure(k)))


def exposure_averaged_dose_weight(k: np.ndarray, pre_exposure: float, exposure: float, *, voltage_kv: float = 300.0) -> np.ndarray:
    """Mean amplitude attenuation over an exposure window [pre, pre + exposure] (e/A^2) at k (1/A).

    The average of exp(-N / (2 Ne(k))) over N in the window: the dose weight of an image summed
    from frames recorded during that window (equal to `dose_weight(k, pre)` when exposure = 0).
    """
    scale = voltage_dose_scale(voltage_kv)
    ne2 = 2.0 * critical_exposure(k)
    x = exposure * scale / ne2
    with np.errstate(invalid="ignore", divide="ignore"):
        window = np.where(x > 0, -np.expm1(-x) / np.where(x > 0, x, 1.0), 1.0)
    return np.exp(-pre_exposure * scale / ne2) * window


def dose_filter_2d(
    shape: tuple[int, int],
    pixel_size_a: float,
    exposure_e_per_a2: float,
    *,
    voltage_kv: float = 300.0,
    rfft: bool = True,
) -> np.ndarray:
    """Dose filter on the FFT grid of an image of `shape` (y, x), float32."""
    ky, kx = frequency_grid(shape, pixel_size_a, rfft=rfft)
    k = np.sqrt(ky * ky + kx * kx)
    return dose_weight(k, exposure_e_per_a2, voltage_kv=voltage_kv).astype(np.float32)


def ctf_zeros_1d(
    defocus_a: float,
    *,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    k_max: float = 0.5,
    samples: int = 200_001,
) -> np.ndarray:
    """Spatial frequencies (1/A) of the CTF zeros below `k_max`, located by sign changes."""
    k = np.linspace(0.0, k_max, samples)
    c = ctf_1d(k, defocus_a, voltage_kv=voltage_kv, cs_mm=cs_mm, amplitude_contrast=amplitude_contrast)
    idx = np.nonzero(np.signbit(c[:-1]) != np.signbit(c[1:]))[0]
    # linear interpolation between the bracketing samples
    return k[idx] - c[idx] * (k[idx + 1] - k[idx]) / (c[idx + 1] - c[idx])
