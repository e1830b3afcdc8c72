"""CTF estimation on images made from white noise with an exactly known CTF, and CTFFIND4 files."""

from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest

from cryocloud.errors import ModelError, StoreError
from cryocloud.geometry import image_defocus_gradient, rotation_2d
from cryocloud.model import Microscope, TiltSeries
from cryocloud.optics import ctf_2d, frequency_grid
from cryocloud.preprocess.ctf_estimate import CtfSearch, estimate_ctf, fit_ctf, tile_offsets
from cryocloud.preprocess.ctffind_io import apply_ctf_table, format_ctffind, parse_ctffind

REAL = Path(__file__).resolve().parent / "data" / "real"
PX = 2.0
N = 384


def ctf_image(rng, du, dv, angle, *, tilt=0.0, axis=0.0, noise=1.0, n=N):
    """White-noise specimen through the CTF (with an envelope), plus a smooth background and white noise.

    Tilted: the image is assembled from 16-pixel strips parallel to the tilt axis (at `axis` deg
    ccw from y), each with its local defocus df + x' tan(tilt).
    """
    spec = np.fft.rfft2(rng.standard_normal((n, n)))
    ky, kx = frequency_grid((n, n), PX, rfft=True)
    k = np.sqrt(ky**2 + kx**2)
    env = np.exp(-60 * k**2)
    yy, xx = np.mgrid[0:n, 0:n]
    xy = np.stack([(xx - n // 2).ravel(), (yy - n // 2).ravel()], axis=1) * PX
    x_prime = (xy @ rotation_2d(axis))[:, 0].reshape(n, n)
    offsets = image_defocus_gradient(x_prime, tilt, 0.0)
    if tilt == 0.0:
        img = np.fft.irfft2(spec * ctf_2d((n, n), PX, du, dv, angle) * env, s=(n, n))
        low = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((n, n))) / (1 + (k / 0.02) ** 2), s=(n, n))
        return img + 3 * low + noise * rng.standard_normal((n, n))
    img = np.zeros((n, n))
    strip = np.round(x_prime / (16 * PX)).astype(int)
    for s in np.unique(strip):
        d = float(offsets[strip == s].mean())
        part = np.fft.irfft2(spec * ctf_2d((n, n), PX, du + d, dv + d, angle) * env, s=(n, n))
        img[strip == s] = part[strip == s]
    low = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((n, n))) / (1 + (k / 0.02) ** 2), s=(n, n))
    return img + 3 * low + noise * rng.standard_normal((n, n))


@pytest.mark.slow
@pytest.mark.parametrize(
    "du, dv, angle",
    [(30000.0, 28000.0, 30.0), (15000.0, 14200.0, -60.0), (52000.0, 50500.0, 75.0)],
)
def test_fit_recovers_defocus_and_astigmatism(du, dv, angle):
    rng = np.random.default_rng(int(du))
    fit = fit_ctf(ctf_image(rng, du, dv, angle, noise=0.3), PX)
    assert abs(0.5 * (fit.defocus_u + fit.defocus_v) - 0.5 * (du + dv)) < 150
    assert abs((fit.defocus_u - fit.defocus_v) - (du - dv)) < 300
    assert abs((fit.astigmatism_angle - angle + 90) % 180 - 90) < 8
    assert fit.score > 0.1
    assert 5.0 <= fit.fit_resolution_a < 12.0


@pytest.mark.slow
def test_noisier_spectrum_has_lower_score_and_fit_resolution():
    rng = np.random.default_rng(7)
    clean = fit_ctf(ctf_image(rng, 25000, 25000, 0, noise=0.3), PX)
    noisy = fit_ctf(ctf_image(rng, 25000, 25000, 0, noise=1.5), PX)
    assert abs(noisy.defocus_u - 25000) < 800 and abs(noisy.defocus_v - 25000) < 800
    assert noisy.score < clean.score
    assert noisy.fit_resolution_a > clean.fit_resolution_a


def test_tile_offsets_follow_the_gradient_convention():
    corners, offsets = tile_offsets((256, 256), 128, PX, 30.0, 0.0)
    x_centres = np.array([x0 + 64 - 128 for _, x0 in corners]) * PX
    np.testing.assert_allclose(offsets, x_centres * np.tan(np.deg2rad(30)))
    # raw tilt axis rotated 90 deg ccw from y: aligned x' points along raw +y
    corners, offsets = tile_offsets((256, 256), 128, PX, 30.0, 90.0)
    y_centres = np.array([y0 + 64 - 128 for y0, _ in corners]) * PX
    np.testing.assert_allclose(offsets, y_centres * np.tan(np.deg2rad(30)), atol=1e-9)


@pytest.mark.slow
def test_tilted_image_fit_uses_the_defocus_gradient():
    rng = np.random.default_rng(11)
    img = ctf_image(rng, 20000, 19000, 40.0, tilt=55.0, axis=80.0, noise=0.3, n=384)
    aware = fit_ctf(img, PX, tilt_deg=55.0, tilt_axis_angle_deg=80.0)
    wrong_sign = fit_ctf(img, PX, tilt_deg=-55.0, tilt_axis_angle_deg=80.0)
    assert abs(0.5 * (aware.defocus_u + aware.defocus_v) - 19500) < 200
    assert aware.score > wrong_sign.score


@pytest.mark.slow
def test_estimate_ctf_sets_per_tilt_coordinates():
    rng = np.random.default_rng(5)
    truth = [12000.0, 16000.0, 20000.0]
    images = np.stack([ctf_image(rng, d, d - 500, 10.0, noise=0.3, n=256) for d in truth]).astype(np.float32)
    images = da.from_array(images, chunks=(1, 256, 256))
    ts = TiltSeries.from_array(images, tilt_angles=[0, 0, 0], pixel_size=PX, exposure=3.0)
    result = estimate_ctf(ts, box=128, series_window_a=None)  # defocus differs by 8000 A between these images
    mean = 0.5 * (result.tilt_series.per_tilt("defocus_u") + result.tilt_series.per_tilt("defocus_v"))
    np.testing.assert_allclose(mean, np.array(truth) - 250, atol=200)
    assert list(result.table.columns) == ["tilt_angle", "defocus_u", "defocus_v", "astigmatism_angle", "score", "fit_resolution_a", "poor_fit"]
    assert result.poor_tilts == []
    assert isinstance(result.tilt_series.data.data, da.Array)  # image data stay lazy


def test_fit_rejects_bad_ranges():
    img = np.zeros((64, 64))
    with pytest.raises(ModelError, match="defocus_range_a"):
        fit_ctf(img, PX, search=CtfSearch(defocus_range_a=(5000, 1000)))
    with pytest.raises(ModelError, match="too small"):
        fit_ctf(np.zeros((16, 16)), PX)


def test_read_real_ctffind4_output_and_round_trip():
    text = (REAL / "cryocat_ts017" / "017_ctffind4.txt").read_text()
    table = parse_ctffind(text, "017_ctffind4.txt")
    assert len(table) == 60  # the header says 41 micrographs; the file holds 60 rows
    assert table.attrs["pixel_size"] == pytest.approx(1.327)
    assert table.attrs["voltage_kv"] == pytest.approx(300.0)
    row = table.iloc[0]
    assert (row["micrograph"], row["defocus_u"], row["defocus_v"], row["astigmatism_angle"]) == (1, 14477.870117, 13500.001953, 75.000012)
    assert row["fit_resolution_a"] == pytest.approx(12.144508)
    again = parse_ctffind(format_ctffind(table, pixel_size_a=1.327, microscope=Microscope()))
    np.testing.assert_allclose(again[["defocus_u", "defocus_v", "astigmatism_angle", "score"]], table[["defocus_u", "defocus_v", "astigmatism_angle", "score"]], atol=1e-5)
    ts = TiltSeries.from_array(np.zeros((60, 8, 8)), tilt_angles=np.linspace(-59, 59, 60), pixel_size=1.327)
    fitted = apply_ctf_table(ts, table)
    assert fitted.per_tilt("defocus_u")[1] == pytest.approx(18332.730469)


def test_poor_fits_round_trip_through_the_ctffind_comment():
    table = pd.DataFrame({"defocus_u": [20000.0, 21000.0, 22000.0], "defocus_v": [19000.0, 20000.0, 21000.0], "astigmatism_angle": [0.0] * 3,
                          "score": [0.3, 0.01, 0.2], "fit_resolution_a": [8.0, 30.0, 9.0], "poor_fit": [False, True, False]})
    text = format_ctffind(table, pixel_size_a=PX, microscope=Microscope(), resolution_range_a=(30.0, 4.2))
    assert "# Poor fits (micrograph numbers): 2" in text and "max. res.: 4.2 Angstroms" in text
    assert parse_ctffind(text).attrs["poor_fit"] == [2]
    assert "poor_fit" not in parse_ctffind(format_ctffind(table.assign(poor_fit=False), pixel_size_a=PX, microscope=Microscope())).attrs
    with pytest.raises(StoreError, match="poor_fit"):
        parse_ctffind(text.replace("micrograph numbers): 2", "micrograph numbers): two"), "bad.txt")


def test_malformed_ctffind_names_the_line():
    with pytest.raises(StoreError, match="line 2"):
        parse_ctffind("# header\n1.0 2.0 3.0\n", "bad.txt")
    with pytest.raises(StoreError, match="no fit rows"):
        parse_ctffind("# only a header\n", "empty.txt")
