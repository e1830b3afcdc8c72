"""Spectral whitening by the noise of the even/odd half tomograms: the noise estimate against a known
spectrum, and the search on a reconstructed twin."""

import numpy as np
import pytest

from cryocloud.errors import ModelError
from cryocloud.model import Tomogram
from cryocloud.optics import frequency_grid
from cryocloud.pick import MatchSettings
from cryocloud.pick.spectrum import chunk_power, noise_spectrum, shell_grid

PX = 8.0


def _field(shape, rng, amplitude) -> np.ndarray:
    """White noise of unit variance filtered by `amplitude(|k|)` (|k| in 1/A) over the periodic
    volume: its power per voxel at k is amplitude(|k|)^2 exactly (in expectation)."""
    kz, ky, kx = frequency_grid(shape, PX, rfft=True)
    k = np.sqrt(kz * kz + ky * ky + kx * kx)
    return np.fft.irfftn(np.fft.rfftn(rng.normal(size=shape)) * amplitude(k), s=shape, axes=(0, 1, 2))


def test_noise_from_halves_matches_the_known_noise_spectrum():
    """even = s + n_e, odd = s + n_o with n_e, n_o independent, each white (variance 0.1) plus a
    coloured part (Lorentzian power 4 / (1 + (k / k0)^2)); the signal s is 30x stronger than the
    noise at low frequency. The estimate is the noise power of even + odd, 2 P_n(k). Tolerance: from
    shell 6 to Nyquist 4 standard errors of the sampling (a mean of exponentially distributed |F|^2
    over `count` frequencies: 1 / sqrt(count)) + 3 %; in shells 3-5, where this power falls by 20-30 %
    from one shell to the next, 15 %: each chunk's spectrum is the true one smoothed over about one
    shell (its finite edges), which lowers the radial mean of a spectrum falling that steeply (-11 %
    at shell 3 here). The tomogram's own spectrum is far from it (the signal)."""
    rng = np.random.default_rng(11)
    shape, chunk = (64, 96, 96), 32
    k0 = 0.1 / PX
    coloured = lambda k: np.sqrt(4.0 / (1.0 + (k / k0) ** 2))  # noqa: E731
    signal = _field(shape, rng, lambda k: 30.0 * np.exp(-((k * PX / 0.12) ** 2)))
    noise_e, noise_o = (np.sqrt(0.1) * rng.normal(size=shape) + _field(shape, rng, coloured) for _ in range(2))
    even, odd = (Tomogram.from_array((signal + n).astype(np.float32), pixel_size=PX) for n in (noise_e, noise_o))
    estimate = noise_spectrum(even, odd, chunk=chunk, quiet=True)

    step, n_shells = shell_grid(chunk, PX)
    assert estimate.step == pytest.approx(step)
    shells = np.arange(3, chunk // 2 + 1)
    k = shells * step
    expected = 2.0 * (0.1 + coloured(k) ** 2)
    measured = np.asarray(estimate.power)[shells]
    # frequencies per shell over all 2 x 3 x 3 disjoint chunks: the standard error of a mean of
    # |F|^2 (exponentially distributed) is 1 / sqrt(count)
    counts = chunk_power(np.zeros((chunk,) * 3), PX, step, n_shells)[1][shells] * 18
    tolerance = np.where(shells >= 6, 4.0 / np.sqrt(counts) + 0.03, 0.15)
    np.testing.assert_array_less(np.abs(measured / expected - 1.0), tolerance)
    assert np.max(expected) / np.min(expected) > 5  # a coloured spectrum: the shape is tested
    full = noise_spectrum(Tomogram.from_array(even.data.values + odd.data.values, pixel_size=PX), Tomogram.from_array(np.zeros(shape, np.float32), pixel_size=PX), chunk=chunk, quiet=True)
    assert np.asarray(full.power)[3] > 10 * expected[0]  # dividing by the tomogram's power would whiten the signal


def test_noise_spectrum_refuses_mismatched_halves():
    even = Tomogram.from_array(np.zeros((16, 16, 16), np.float32), pixel_size=PX)
    with pytest.raises(ModelError, match="shape"):
        noise_spectrum(even, Tomogram.from_array(np.zeros((16, 16, 18), np.float32), pixel_size=PX), quiet=True)
    with pytest.raises(ModelError, match="voxel size"):
        noise_spectrum(even, Tomogram.from_array(np.zeros((16, 16, 16), np.float32), pixel_size=2 * PX), quiet=True)
    with pytest.raises(ModelError, match="whiten"):
        MatchSettings(noise=noise_spectrum(even, even, quiet=True))
