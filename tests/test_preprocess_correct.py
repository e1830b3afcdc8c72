"""Dose weighting and strip-wise CTF correction against exactly known filters."""

import dask.array as da
import numpy as np
import pytest

from cryocloud.errors import ModelError
from cryocloud.geometry import image_defocus_gradient
from cryocloud.model import TiltSeries
from cryocloud.optics import critical_exposure, ctf_2d, dose_weight as point_dose_weight, exposure_averaged_dose_weight, frequency_grid
from cryocloud.preprocess.ctf_correct import correct_image, ctf_multiply, phase_flip, strip_width_a
from cryocloud.preprocess.dose import dose_weight

PX = 2.0


def test_exposure_averaged_weight_is_the_mean_over_the_window():
    k = np.array([0.0, 0.05, 0.1, 0.3])
    numeric = np.mean([point_dose_weight(k, n) for n in np.linspace(10.0, 13.0, 20001)], axis=0)
    np.testing.assert_allclose(exposure_averaged_dose_weight(k, 10.0, 3.0), numeric, rtol=1e-5)
    np.testing.assert_allclose(exposure_averaged_dose_weight(k, 10.0, 0.0), point_dose_weight(k, 10.0))
    assert exposure_averaged_dose_weight(np.array([0.0]), 50.0, 3.0)[0] == pytest.approx(1.0)
    assert np.isfinite(critical_exposure(np.array([0.1]))).all()


def test_dose_weight_damps_late_tilts_more():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((3, 64, 64)).astype(np.float32)
    ts = TiltSeries.from_array(da.from_array(images, chunks=(1, 64, 64)), tilt_angles=[0, 3, -3], pixel_size=PX, exposure=3.0)
    out = dose_weight(ts)
    assert isinstance(out.data.data, da.Array) and out.data.attrs["dose_weighted"]
    result = out.data.values
    ky, kx = frequency_grid((64, 64), PX, rfft=True)
    for i, pre in enumerate(ts.per_tilt("pre_exposure")):
        expected = np.fft.irfft2(np.fft.rfft2(images[i]) * exposure_averaged_dose_weight(np.sqrt(ky**2 + kx**2), pre, 3.0), s=(64, 64))
        np.testing.assert_allclose(result[i], expected, atol=1e-4)
    high = lambda a: np.abs(np.fft.rfft2(a))[20:30, 20:30].mean()
    assert high(result[2]) < high(result[1]) < high(result[0])


def tilted_ctf_image(rng, n, df, tilt, axis_deg=0.0):
    """Specimen (y, x) and its image through the local CTF of each 4-pixel strip (axis along y)."""
    specimen = rng.standard_normal((n, n))
    spec = np.fft.rfft2(specimen)
    xs = (np.arange(n) - n // 2) * PX
    img = np.zeros((n, n))
    for x0 in range(0, n, 4):
        d = float(image_defocus_gradient(xs[x0 : x0 + 4].mean(), tilt, df))
        img[:, x0 : x0 + 4] = np.fft.irfft2(spec * ctf_2d((n, n), PX, d, d, 0.0), s=(n, n))[:, x0 : x0 + 4]
    truth_flip = np.zeros((n, n))
    for x0 in range(0, n, 4):
        d = float(image_defocus_gradient(xs[x0 : x0 + 4].mean(), tilt, df))
        truth_flip[:, x0 : x0 + 4] = np.fft.irfft2(spec * np.abs(ctf_2d((n, n), PX, d, d, 0.0)), s=(n, n))[:, x0 : x0 + 4]
    return img, truth_flip


def test_strip_width_from_tolerance():
    assert strip_width_a(0.0, 500.0) == float("inf")
    assert strip_width_a(45.0, 500.0) == pytest.approx(500.0)
    assert strip_width_a(-60.0, 300.0) == pytest.approx(300.0 / np.tan(np.deg2rad(60)))


@pytest.mark.slow
def test_phase_flip_in_strips_follows_the_defocus_gradient():
    rng = np.random.default_rng(1)
    # low defocus keeps the CTF's delocalisation (~lambda df k) small against the strips
    img, truth = tilted_ctf_image(rng, 384, 6000.0, 60.0)
    cc = lambda a: np.corrcoef(a.ravel(), truth.ravel())[0, 1]
    strips = correct_image(img, PX, 6000, 6000, 0, tilt_deg=60.0, defocus_tolerance_a=200.0)
    single = correct_image(img, PX, 6000, 6000, 0, tilt_deg=0.0)
    wrong_sign = correct_image(img, PX, 6000, 6000, 0, tilt_deg=-60.0, defocus_tolerance_a=200.0)
    assert cc(strips) > 0.93
    assert cc(strips) > cc(single) + 0.3 and cc(strips) > cc(wrong_sign) + 0.3


def test_phase_flip_and_multiply_on_a_series():
    rng = np.random.default_rng(2)
    img, truth = tilted_ctf_image(rng, 128, 15000.0, 0.0)
    ts = TiltSeries.from_array(img[None].astype(np.float32), tilt_angles=[0.0], pixel_size=PX)
    with pytest.raises(ModelError, match="defocus_u"):
        phase_flip(ts)
    ts = ts.with_per_tilt(defocus_u=[15000.0], defocus_v=[15000.0], astigmatism_angle=[0.0])
    flipped = phase_flip(ts).data.values[0]
    assert np.corrcoef(flipped.ravel(), truth.ravel())[0, 1] > 0.999
    multiplied = ctf_multiply(ts).data.values[0]
    ctf = ctf_2d((128, 128), PX, 15000.0)
    np.testing.assert_allclose(multiplied, np.fft.irfft2(np.fft.rfft2(img) * ctf, s=(128, 128)), atol=1e-3)
