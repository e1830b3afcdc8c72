"""CTF deconvolution (Warp's filter): the formula, tiling without seams, accuracy on the twin, CLI."""

from __future__ import annotations

import dask
import numpy as np
import pytest

from cryocloud.cli import main
from cryocloud.denoise import DeconvSettings, deconvolve, face_std, seam_jump, wiener_response
from cryocloud.denoise.evaluate import compare_with_truth
from cryocloud.simulate.halves import simulated_halves
from cryocloud.errors import ModelError
from cryocloud.model import Microscope, TiltSeries, Tomogram
from cryocloud.optics import ctf_zeros_1d, wavelength_a
from cryocloud.reconstruct import reconstruct
from cryocloud.simulate import preset
from cryocloud.store import read_tomogram, write_tomogram

pytestmark = pytest.mark.slow  # simulates and reconstructs the digital twin

PX = 10.0
DEFOCUS = 30000.0


@pytest.fixture(scope="module")
def scheduler():
    """One real in-process distributed cluster for the CLI calls (joined, so left running by them)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def twin():
    halves = simulated_halves(preset("toy", frames_per_tilt=2, drift_a=0.0, seed=1))
    with dask.config.set(scheduler="synchronous"):
        full, truth = dask.compute(halves.full.data.data, halves.truth.data.data)
    return Tomogram.from_array(full, pixel_size=PX), truth


def test_wiener_response_matches_the_formula_by_hand():
    m = Microscope()
    s = DeconvSettings(strength=0.8, snr_falloff=1.1, highpass_nyquist=0.05)
    k = np.array([0.03, 0.3, 0.7])
    # written out independently: CTF of tom_deconv (positive at low frequency, no envelope)
    lam = wavelength_a(300.0)
    f = k * 0.5 / PX
    chi = np.pi * lam * DEFOCUS * f**2 - 0.5 * np.pi * 2.7e7 * lam**3 * f**4
    ctf = np.sqrt(1 - 0.07**2) * np.sin(chi) + 0.07 * np.cos(chi)
    highpass = 1 - np.cos(np.minimum(1, k / 0.05) * np.pi)
    snr = np.exp(-k * 1.1 * 100 / PX) * 10 ** (3 * 0.8) * highpass + 1e-6
    np.testing.assert_allclose(wiener_response(k, PX, DEFOCUS, m, s), ctf / (ctf**2 + 1 / snr), rtol=1e-9)


def test_wiener_response_shape_sign_and_phase_flip():
    m = Microscope()
    k = np.linspace(0, 1, 2001)
    w = wiener_response(k, PX, DEFOCUS, m, DeconvSettings())
    assert abs(w[0]) < 1e-5  # the high-pass removes the mean
    first_zero = ctf_zeros_1d(DEFOCUS, k_max=0.5 / PX)[0] / (0.5 / PX)
    assert np.all(w[(k > 0.02) & (k < 0.95 * first_zero)] > 0)  # contrast kept below the first zero
    assert np.any(w[k > 1.05 * first_zero] < 0)  # the next lobe is flipped back
    flipped = wiener_response(k, PX, DEFOCUS, m, DeconvSettings(phase_flipped=True))
    assert np.all(flipped >= 0)
    np.testing.assert_allclose(np.abs(flipped), np.abs(w), rtol=1e-12)


def test_deconv_improves_correlation_and_fsc_with_the_truth(twin):
    tomo, truth = twin
    before = compare_with_truth(tomo.data.values, truth, PX)
    after = compare_with_truth(deconvolve(tomo, defocus_a=DEFOCUS, tile=32, depth=32).data.values, truth, PX)
    assert before["correlation"] > 0.1  # the raw reconstruction does show the specimen (protein dark)
    assert after["correlation"] > before["correlation"] + 0.03
    assert after["fsc_mean"] > before["fsc_mean"] + 0.02


def test_tiles_stitch_without_seams(twin):
    """With the overlap, the differences across tile borders look like those between any other planes
    (|z| < 3: within three standard errors of the same statistic at the non-border planes) and exceed
    their neighbours' by under 10 %; without overlap the same metric finds the seams (z > 10, jumps
    of ~100 %), so it can fail. The filter's kernel is long (sharp 1 / ctf peaks near the CTF zeros),
    hence an overlap as wide as the tile here."""
    tomo, _ = twin
    tiled = deconvolve(tomo, defocus_a=DEFOCUS, tile=32, depth=32)
    seams = seam_jump(tiled.data.values, tiled.data.data.chunks)
    assert len(seams) == 3
    assert all(abs(s.z_score) < 3 and abs(s.jump) < 0.1 for s in seams), seams
    bare = deconvolve(tomo, defocus_a=DEFOCUS, tile=32, depth=0)
    assert min(s.z_score for s in seam_jump(bare.data.values, bare.data.data.chunks)) > 10
    whole = deconvolve(tomo, defocus_a=DEFOCUS, tile=64).data.values
    inner = (slice(16, 48),) * 3
    err = np.sqrt(np.mean((tiled.data.values[inner] - whole[inner]) ** 2) / np.mean(whole[inner] ** 2))
    assert err < 0.05


def test_faces_keep_the_noise_level_of_the_interior():
    """On stationary white noise the filtered face planes' standard deviation lies within 5
    standard deviations of the interior planes' scatter (a few %) of the interior's. Mirrored
    padding at the volume faces failed this (face planes 1.3 - 1.45 x the interior: the filter
    sums mirrored copies of the same noise), which inflated template-matching scores at the faces."""
    noise = np.random.default_rng(5).normal(size=(64, 64, 64)).astype(np.float32)
    filtered = deconvolve(Tomogram.from_array(noise, pixel_size=PX), defocus_a=DEFOCUS, tile=32, depth=32).data.values
    faces = face_std(filtered, margin=16)
    assert all(f.scatter < 0.05 for f in faces), faces
    assert all(abs(r - 1) < 5 * f.scatter for f in faces for r in (f.low, f.high)), faces


def test_defocus_comes_from_the_tomogram_or_is_asked_for(twin):
    tomo, _ = twin
    with pytest.raises(ModelError, match="defocus"):
        deconvolve(tomo)
    with pytest.raises(ModelError, match="defocus"):
        deconvolve(tomo, defocus_a=-5.0)
    tomo.data.attrs["defocus_a"] = DEFOCUS
    try:
        assert deconvolve(tomo).data.attrs["denoise"]["defocus_a"] == DEFOCUS
    finally:
        del tomo.data.attrs["defocus_a"]
    with pytest.raises(ModelError, match="highpass_nyquist"):
        DeconvSettings(highpass_nyquist=0.0)


def test_reconstruction_records_the_mean_defocus_so_deconv_needs_none():
    """A tomogram reconstructed from a tilt series with per-tilt defocus carries the mean of
    (defocus_u + defocus_v) / 2 over all tilts as `defocus_a`,
    which the deconvolution then uses; without defocus in the series nothing is recorded."""
    rng = np.random.default_rng(2)
    angles = np.array([-40.0, -20.0, 0.0, 20.0, 40.0])
    images = rng.normal(size=(5, 16, 32)).astype(np.float32)
    u = np.array([30500.0, 29800.0, 30100.0, 29000.0, 30300.0])
    v = np.array([29500.0, 29200.0, 29900.0, 31000.0, 29700.0])
    series = TiltSeries.from_array(images, tilt_angles=angles, pixel_size=PX, defocus_u=u, defocus_v=v)
    tomo = reconstruct(series, thickness_px=16)
    expected = np.mean([30000.0, 29500.0, 30000.0, 30000.0, 30000.0])
    assert tomo.data.attrs["defocus_a"] == pytest.approx(expected)
    assert tomo.data.attrs["reconstruction"]["defocus_a"] == pytest.approx(expected)
    result = deconvolve(tomo, tile=16, depth=8)
    assert result.data.attrs["denoise"]["defocus_a"] == pytest.approx(expected)
    np.testing.assert_allclose(result.data.values, deconvolve(tomo, defocus_a=expected, tile=16, depth=8).data.values)
    bare = reconstruct(TiltSeries.from_array(images, tilt_angles=angles, pixel_size=PX), thickness_px=16)
    assert "defocus_a" not in bare.data.attrs
    with pytest.raises(ModelError, match="defocus"):
        deconvolve(bare)


def test_cli_deconv_writes_refuses_overwrite_and_reports_bad_input(twin, scheduler, tmp_path, capsys):
    tomo, _ = twin
    src, out = str(tmp_path / "tomo.zarr"), str(tmp_path / "deconv.zarr")
    write_tomogram(tomo, src, levels=1)
    assert main(["denoise", "deconv", src, out, "--scheduler", scheduler]) == 2
    assert "defocus" in capsys.readouterr().err
    args = ["denoise", "deconv", src, out, "--defocus", str(DEFOCUS), "--tile", "32", "--overlap", "32", "--levels", "1",
            "--scheduler", scheduler]
    assert main(args) == 0
    written = read_tomogram(out).data.values
    np.testing.assert_allclose(written, deconvolve(tomo, defocus_a=DEFOCUS, tile=32, depth=32).data.values, atol=1e-4)
    assert (tmp_path / "deconv_before.png").stat().st_size > 0 and (tmp_path / "deconv_after.png").stat().st_size > 0
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    # the output records its defocus: a second deconvolution needs no --defocus
    assert main(["denoise", "deconv", out, str(tmp_path / "again.zarr"), "--levels", "1", "--scheduler", scheduler]) == 0
    assert main(["denoise", "deconv", str(tmp_path / "missing.zarr"), str(tmp_path / "x.zarr"), "--defocus", "1e4", "--scheduler", scheduler]) == 2
