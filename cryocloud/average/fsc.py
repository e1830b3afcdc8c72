"""Fourier shell correlation between two maps (z, y, x), resolution at a threshold, masked FSC.

Shells are one frequency step 1 / (n p) wide (n the cubic box edge, p the voxel size in A); shell
i holds the frequencies with round(|k| n p) = i, from 0 to Nyquist (i = n // 2). The resolution is
the first crossing of the threshold (0.143 for two half maps; Rosenthal & Henderson 2003), linearly
interpolated between the shells around it, in Angstrom.

Masked FSC: both maps are multiplied by the same soft mask. A mask correlates the noise too; the
phase-randomisation test (Chen et al. 2013) measures that: beyond the randomisation frequency the
half maps' phases are randomised, the masked FSC of the randomised maps is the mask's own
correlation, and the corrected FSC is (FSC_t - FSC_n) / (1 - FSC_n).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryocloud.errors import ModelError


@dataclass(frozen=True)
class FscCurve:
    """FSC per shell: `frequency` (1/A), `fsc` (-1..1), `n_voxels` (Fourier voxels per shell)."""

    frequency: np.ndarray
    fsc: np.ndarray
    n_voxels: np.ndarray

    def resolution(self, threshold: float = 0.143) -> float:
        """Resolution (A) where the FSC first falls below `threshold` (Nyquist if it never does)."""
        return resolution_at(self, threshold)

    def to_csv(self) -> str:
        """The curve as CSV text: frequency_per_a, resolution_a (inf at 0), fsc; one row per shell."""
        rows = "".join(f"{f:.6f},{1 / f if f > 0 else float('inf'):.3f},{c:.5f}\n" for f, c in zip(self.frequency, self.fsc))
        return "frequency_per_a,resolution_a,fsc\n" + rows


def _shells(shape: tuple[int, int, int]) -> np.ndarray:
    n = shape[0]
    kz = np.fft.fftfreq(shape[0])[:, None, None]
    ky = np.fft.fftfreq(shape[1])[None, :, None]
    kx = np.fft.rfftfreq(shape[2])[None, None, :]
    return np.rint(np.sqrt(kz * kz + ky * ky + kx * kx) * n).astype(np.int64)


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.ndim != 3 or a.shape != b.shape or len(set(a.shape)) != 1:
        raise ModelError("maps", f"expected two cubic maps (z, y, x) of one shape, got {a.shape} and {b.shape}")


def fsc_from_spectra(f1: np.ndarray, f2: np.ndarray, shape: tuple[int, int, int], pixel_size_a: float) -> FscCurve:
    """FSC of two half spectra (numpy rfftn layout of `shape`)."""
    shells = _shells(shape)
    n_shells = shape[0] // 2 + 1
    keep = shells < n_shells
    # x frequencies present twice in the full spectrum count twice (Hermitian symmetry)
    mult = np.full(f1.shape, 2.0)
    mult[..., 0] = 1.0
    if shape[2] % 2 == 0:
        mult[..., -1] = 1.0
    idx = shells[keep]
    w = mult[keep]
    cross = np.bincount(idx, weights=w * np.real(f1[keep] * np.conj(f2[keep])), minlength=n_shells)
    p1 = np.bincount(idx, weights=w * np.abs(f1[keep]) ** 2, minlength=n_shells)
    p2 = np.bincount(idx, weights=w * np.abs(f2[keep]) ** 2, minlength=n_shells)
    count = np.bincount(idx, weights=w, minlength=n_shells)
    with np.errstate(invalid="ignore", divide="ignore"):
        fsc = np.where(p1 * p2 > 0, cross / np.sqrt(p1 * p2), 0.0)
    frequency = np.arange(n_shells) / (shape[0] * pixel_size_a)
    return FscCurve(frequency, fsc, count)


def fsc(map1: np.ndarray, map2: np.ndarray, pixel_size_a: float, mask: np.ndarray | None = None) -> FscCurve:
    """FSC between two cubic maps (z, y, x) at `pixel_size_a`, both multiplied by `mask` if given."""
    a = np.asarray(map1, dtype=np.float64)
    b = np.asarray(map2, dtype=np.float64)
    _check_pair(a, b)
    if mask is not None:
        if mask.shape != a.shape:
            raise ModelError("mask", f"has shape {mask.shape}, expected the maps' {a.shape}")
        a, b = a * mask, b * mask
    return fsc_from_spectra(np.fft.rfftn(a), np.fft.rfftn(b), a.shape, pixel_size_a)


def resolution_at(curve: FscCurve, threshold: float = 0.143) -> float:
    """First crossing of `threshold` (A), interpolated linearly in frequency; Nyquist if none."""
    f, c = curve.frequency, curve.fsc
    below = np.nonzero(c[1:] < threshold)[0]
    if below.size == 0:
        return float(1.0 / f[-1])
    i = below[0] + 1  # first shell below; shell i - 1 is at or above
    f0, f1, c0, c1 = f[i - 1], f[i], c[i - 1], c[i]
    cross = f1 if c0 == c1 else f0 + (c0 - threshold) * (f1 - f0) / (c0 - c1)
    return float(1.0 / cross) if cross > 0 else float("inf")


def randomise_phases(volume: np.ndarray, pixel_size_a: float, beyond_a: float, rng: np.random.Generator) -> np.ndarray:
    """The map with Fourier phases replaced by random ones at frequencies beyond 1 / `beyond_a`."""
    spec = np.fft.rfftn(np.asarray(volume, dtype=np.float64))
    shells = _shells(volume.shape)
    outside = shells > volume.shape[0] * pixel_size_a / beyond_a
    phases = np.exp(2j * np.pi * rng.random(spec.shape))
    spec = np.where(outside, np.abs(spec) * phases, spec)
    return np.fft.irfftn(spec, s=volume.shape, axes=(0, 1, 2))


def corrected_masked_fsc(
    map1: np.ndarray, map2: np.ndarray, pixel_size_a: float, mask: np.ndarray, *, seed: int = 0
) -> FscCurve:
    """Masked FSC corrected for the mask's own correlation by phase randomisation (Chen et al. 2013).

    Phases are randomised beyond the frequency where the unmasked FSC first drops below 0.8.
    """
    unmasked = fsc(map1, map2, pixel_size_a)
    beyond = resolution_at(unmasked, 0.8)
    masked = fsc(map1, map2, pixel_size_a, mask)
    rng = np.random.default_rng(seed)
    r1 = randomise_phases(map1, pixel_size_a, beyond, rng)
    r2 = randomise_phases(map2, pixel_size_a, beyond, rng)
    noise = fsc(r1, r2, pixel_size_a, mask).fsc
    randomised = masked.frequency > 1.0 / beyond
    with np.errstate(invalid="ignore", divide="ignore"):
        corrected = np.where(randomised & (noise < 1), (masked.fsc - noise) / (1.0 - noise), masked.fsc)
    return FscCurve(masked.frequency, corrected, masked.n_voxels)
