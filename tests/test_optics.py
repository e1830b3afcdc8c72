import numpy as np
import pytest

from cryocloud import optics
from cryocloud.errors import ModelError


def test_wavelength_300kv():
    assert np.isclose(optics.wavelength_a(300), 0.019687, atol=1e-6)
    assert np.isclose(optics.wavelength_a(200), 0.025079, atol=1e-6)


def test_ctf_zero_positions_follow_formula():
    df = 25000.0
    zeros = optics.ctf_zeros_1d(df, amplitude_contrast=0.0, cs_mm=0.0, k_max=0.2)
    lam = optics.wavelength_a(300)
    # with A=0 and Cs=0 zeros are at pi lam df k^2 = n pi
    expected = np.sqrt(np.arange(1, zeros.size + 1) / (lam * df))
    np.testing.assert_allclose(zeros, expected, rtol=1e-4)


def test_ctf_sign_and_amplitude_contrast():
    assert optics.ctf_1d(np.array([0.0]), 20000, amplitude_contrast=0.1)[0] == pytest.approx(-0.1)
    c = optics.ctf_2d((64, 64), 2.0, 20000, 24000, 30.0)
    assert c.shape == (64, 33) and c.dtype == np.float32
    assert np.all(np.abs(c) <= 1.0 + 1e-6)


def test_astigmatism_direction():
    ky, kx = optics.frequency_grid((8, 8), 1.0)
    d = optics.astigmatic_defocus(np.array([0.0, 0.1]), np.array([0.1, 0.0]), 30000, 20000, 0.0)
    assert d[0] == 30000 and d[1] == 20000


def test_dose_weight_grant_grigorieff():
    k = np.array([0.1])
    ne = 0.245 * 0.1 ** -1.665 + 2.81
    assert optics.dose_weight(k, 10.0)[0] == pytest.approx(np.exp(-10 / (2 * ne)))
    assert optics.dose_weight(k, 10.0, voltage_kv=200)[0] == pytest.approx(np.exp(-10 / 0.8 / (2 * ne)))
    assert optics.dose_weight(np.array([0.0]), 100.0)[0] == 1.0
    with pytest.raises(ModelError, match="voltage_kv"):
        optics.dose_weight(k, 1.0, voltage_kv=120)
