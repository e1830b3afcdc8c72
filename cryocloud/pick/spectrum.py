"""Radial power spectra for spectral whitening: the noise of a tomogram from its even/odd halves.

A `RadialSpectrum` is the mean power per voxel in spherical shells of a fixed width in 1/A: shell i
holds the frequencies with round(|k| / step) = i, and the power of an n-voxel chunk is |F|^2 / n of
its FFT (mean removed), so white noise of variance s^2 reads s^2 in every shell whatever the chunk
size. Spectra are averaged over chunks of one size (cubes, `chunk` voxels a side), so all chunks
share the grid; no whole volume is ever transformed at once.

Noise from half tomograms. The even and odd half tomograms (reconstructed from the even- and
odd-frame sums of each tilt) hold the same signal s and independent noises n_e, n_o of equal power,
and the full tomogram cryocloud reconstructs is their sum (all frames):

    even + odd = 2 s + n_e + n_o,     even - odd = n_e - n_o,
    P_noise(even + odd) = P(n_e) + P(n_o) = P(even - odd).

So `noise_spectrum` returns P(even - odd), the noise power of the full tomogram even + odd. For a
tomogram that is the mean of the halves, (even + odd) / 2, the noise power is P((even - odd) / 2) =
P(even - odd) / 4. The whitening filter is scaled to a maximum of 1, so only the shape counts there.
"""

from __future__ import annotations

from typing import NamedTuple

import dask
import numpy as np

from cryocloud.errors import ModelError
from cryocloud.model import Tomogram
from cryocloud.optics import frequency_grid


class RadialSpectrum(NamedTuple):
    """Power per voxel in shells `step` (1/A) wide, shell i centred on i * step (see the module
    docstring). Plain numbers, so it can sit in `MatchSettings` (hashable, JSON in match.json)."""

    step: float
    power: tuple[float, ...]

    def at(self, k: np.ndarray) -> np.ndarray:
        """Power at frequencies `k` (1/A, any shape): linear between shell centres from shell 1 on
        (the DC shell holds no power after mean removal), constant beyond the first and last."""
        power = np.asarray(self.power, dtype=np.float64)
        shells = np.arange(power.size, dtype=np.float64)
        if power.size < 2:
            raise ModelError("spectrum", f"needs at least 2 shells, got {power.size}")
        return np.interp(np.asarray(k, dtype=np.float64) / self.step, shells[1:], power[1:])


def chunk_power(volume: np.ndarray, voxel_size: float, step: float, n_shells: int) -> tuple[np.ndarray, np.ndarray]:
    """(sum of |F|^2 / n, number of frequencies) in the first `n_shells` shells of width `step`
    (1/A) of one chunk (z, y, x) at `voxel_size` (A), its mean removed; frequencies beyond are left out."""
    v = np.asarray(volume, dtype=np.float64)
    spectrum = np.fft.rfftn(v - v.mean())
    kz, ky, kx = frequency_grid(v.shape, voxel_size, rfft=True)
    shell = np.rint(np.sqrt(kz * kz + ky * ky + kx * kx) / step).astype(np.int64).reshape(-1)
    keep = shell < n_shells
    power = (spectrum.real**2 + spectrum.imag**2).reshape(-1)[keep] / v.size
    return np.bincount(shell[keep], weights=power, minlength=n_shells), np.bincount(shell[keep], minlength=n_shells).astype(np.float64)


def from_sums(step: float, parts: list[tuple[np.ndarray, np.ndarray]]) -> RadialSpectrum:
    """The spectrum of summed `chunk_power` results, up to the last shell before an empty one."""
    sums = np.sum([p[0] for p in parts], axis=0)
    counts = np.sum([p[1] for p in parts], axis=0)
    empty = np.flatnonzero(counts == 0)
    n = int(empty[0]) if empty.size else counts.size
    return RadialSpectrum(float(step), tuple(float(v) for v in sums[:n] / counts[:n]))


def shell_grid(chunk: int, voxel_size: float) -> tuple[float, int]:
    """(step in 1/A, number of shells) of cubes `chunk` voxels a side: one frequency step wide, out
    to the corner of the cube's spectrum."""
    return 1.0 / (chunk * voxel_size), int(np.ceil(np.sqrt(3.0) * chunk / 2)) + 1


def chunk_starts(n: int, chunk: int) -> list[int]:
    """Starts of the fewest `chunk`-long windows covering 0..n (spread evenly, overlapping when needed)."""
    count = int(np.ceil(n / chunk))
    return sorted({int(round(s)) for s in np.linspace(0, n - chunk, count)})


def _difference_power(even: np.ndarray, odd: np.ndarray, voxel_size: float, step: float, n_shells: int) -> tuple[np.ndarray, np.ndarray]:
    return chunk_power(np.asarray(even, np.float64) - np.asarray(odd, np.float64), voxel_size, step, n_shells)


def _chunked(volumes: list, shape: tuple[int, int, int], voxel_size: float, chunk: int, power, description: str, quiet: bool) -> tuple[float, list]:
    """(step, [`power`(*cubes, voxel_size, step, n_shells) for each cube]) over cubes of `chunk`
    voxels (fewer along an axis shorter than that) tiling `shape`, one Dask task per cube."""
    from cryocloud.progress import compute

    if chunk < 8:
        raise ModelError("chunk", f"expected at least 8 voxels, got {chunk}")
    edge = min(chunk, *shape)
    if edge < 8:
        raise ModelError("shape", f"{shape} is too small for a radial spectrum (8 voxels needed along each axis)")
    step, n_shells = shell_grid(edge, voxel_size)
    starts = [chunk_starts(n, edge) for n in shape]
    tasks = []
    for index in np.ndindex(*[len(s) for s in starts]):
        region = tuple(slice(s[i], s[i] + edge) for s, i in zip(starts, index))
        tasks.append(dask.delayed(power, pure=True)(*(v[region] for v in volumes), voxel_size, step, n_shells))
    return step, list(compute(*tasks, description=description, quiet=quiet))


def noise_spectrum(even: Tomogram, odd: Tomogram, *, chunk: int = 64, quiet: bool = False) -> RadialSpectrum:
    """Noise power spectrum of the full tomogram even + odd: P(even - odd) (module docstring),
    averaged over cubes of `chunk` voxels (fewer along an axis shorter than that) tiling the
    volume, one Dask task per cube; only the spectra come back."""
    if even.shape != odd.shape:
        raise ModelError("halves", f"even {even.shape} and odd {odd.shape} half tomograms differ in shape (z, y, x)")
    if abs(even.pixel_size - odd.pixel_size) > 1e-3 * even.pixel_size:
        raise ModelError("halves", f"even ({even.pixel_size} A) and odd ({odd.pixel_size} A) half tomograms differ in voxel size")
    step, parts = _chunked([even.data.data, odd.data.data], even.shape, even.pixel_size, chunk, _difference_power,
                           "noise spectrum from the half tomograms", quiet)
    return from_sums(step, parts)



def null_spectrum(null: Tomogram, *, chunk: int = 64, quiet: bool = False) -> RadialSpectrum:
    """Noise power spectrum of a denoised (or filtered) tomogram from its null volume, half the
    difference of its denoised halves (`cryocloud.pick.null`): P(null), on `noise_spectrum`'s grid."""
    step, parts = _chunked([null.data.data], null.shape, null.pixel_size, chunk, chunk_power, "noise spectrum from the null volume", quiet)
    return from_sums(step, parts)
