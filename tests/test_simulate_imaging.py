"""Image formation against the formulas: geometry, CTF zeros, defocus gradient, dose, noise, frames."""

import numpy as np
import pytest

from cryocloud import optics
from cryocloud.geometry import aligned_to_raw, project_points
from cryocloud.simulate import FiducialConfig, SimulationConfig, simulate
from cryocloud.optics import exposure_averaged_dose_weight
from cryocloud.simulate.acquisition import Optics, ctf_image, interaction_constant

pytestmark = pytest.mark.slow  # simulates and reconstructs the digital twin

BLANK = dict(n_particles=0, ice_structure_factor=0.0)


def _optics(**kw):
    base = dict(pixel_size_a=2.0, voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07, tilt_axis_angle_deg=0.0,
                defocus_step_a=100.0, ctf=True, dose_filter=False, noise=False, seed=0)
    return Optics(**{**base, **kw})


def _radial_power(image: np.ndarray, pixel: float, nbins: int):
    p = np.abs(np.fft.rfft2(image)) ** 2
    ky, kx = optics.frequency_grid(image.shape, pixel, rfft=True)
    k = np.broadcast_to(np.sqrt(ky**2 + kx**2), p.shape)
    edges = np.linspace(0, 0.5 / pixel, nbins + 1)
    idx = np.digitize(k.ravel(), edges) - 1
    ok = (idx >= 0) & (idx < nbins)
    power = np.bincount(idx[ok], weights=p.ravel()[ok], minlength=nbins) / np.maximum(np.bincount(idx[ok], minlength=nbins), 1)
    return 0.5 * (edges[1:] + edges[:-1]), power


def test_interaction_constant_300kv():
    assert interaction_constant(300.0) == pytest.approx(6.526e-4, rel=2e-3)  # Kirkland: 0.00065262 rad/(V A)


def test_ctf_zeros_of_a_white_specimen_where_the_formula_says():
    rng = np.random.default_rng(1)
    phase = rng.standard_normal((512, 512)) * 1e-3
    opt = _optics()
    img = ctf_image(phase, 0.0, 15000.0, 15000.0, 0.0, np.zeros(2), opt)
    k, power = _radial_power(img, opt.pixel_size_a, 512)
    zeros = optics.ctf_zeros_1d(15000.0, k_max=0.2)
    assert zeros.size >= 5
    for z in zeros:
        i = np.argmin(np.abs(k - z))
        window = power[max(i - 6, 0): i + 7]
        # the local minimum of the power spectrum lies at the predicted zero, and it is deep
        assert abs(k[max(i - 6, 0) + np.argmin(window)] - z) <= 1.5 * (k[1] - k[0])
        assert power[i] < 0.05 * window.max()


def _fit_defocus(image: np.ndarray, pixel: float, candidates: np.ndarray) -> float:
    k, power = _radial_power(image, pixel, 256)
    use = (k > 0.03) & (k < 0.2)
    scores = [np.corrcoef(power[use], optics.ctf_1d(k[use], df) ** 2)[0, 1] for df in candidates]
    return float(candidates[int(np.argmax(scores))])


def test_defocus_gradient_right_side_more_underfocused_at_positive_tilt():
    rng = np.random.default_rng(2)
    phase = rng.standard_normal((256, 1024)) * 1e-3
    tilt, df0, pixel = 40.0, 20000.0, 2.0
    img = ctf_image(phase, tilt, df0, df0, 0.0, np.zeros(2), _optics(pixel_size_a=pixel))
    candidates = np.arange(17000.0, 23000.0, 25.0)
    left = _fit_defocus(img[:, 64:320], pixel, candidates)  # x' centre -320 px
    right = _fit_defocus(img[:, 704:960], pixel, candidates)  # x' centre +320 px
    slope = np.tan(np.deg2rad(tilt))
    assert right > left
    assert left == pytest.approx(df0 - 320 * pixel * slope, abs=150)
    assert right == pytest.approx(df0 + 320 * pixel * slope, abs=150)


def test_bead_projects_where_the_geometry_says():
    cfg = SimulationConfig(
        shape_zyx=(48, 96, 96), pixel_size_a=10.0, tilt_step=15, tilt_min=-60, tilt_max=60, fiducials=FiducialConfig(count=1, diameter_a=80),
        tilt_axis_angle_deg=30.0, shift_sigma_a=40.0, noise=False, ctf=False, dose_filter=False, inelastic_mfp_a=None, **BLANK,
    )
    res = simulate(cfg)
    images = res.tilt_series.data.values
    bead = res.truth.specimen.fiducial_centres[0]
    n = np.array(cfg.shape_zyx)
    centre_xyz = n[::-1] // 2 * cfg.pixel_size_a
    i0 = res.truth.counts_per_pixel
    for t, angle in enumerate(res.tilt_series.tilt_angles):
        dark = np.clip(i0[t] - images[t], 0, None)  # the bead darkens the image (CTF -1: dark matter)
        yy, xx = np.indices(dark.shape)
        found = np.array([(xx * dark).sum(), (yy * dark).sum()]) / dark.sum() - n[2:0:-1] // 2
        aligned = project_points((bead - centre_xyz)[None], angle)
        expected = aligned_to_raw(aligned, cfg.tilt_axis_angle_deg, res.truth.shifts_xy_a[t])[0] / cfg.pixel_size_a
        assert np.allclose(found, expected, atol=0.15), (angle, found, expected)


@pytest.mark.parametrize("thickness", [120.0, None])
def test_noise_mean_and_variance_equal_the_dose(thickness):
    cfg = SimulationConfig(shape_zyx=(40, 128, 128), pixel_size_a=4.0, tilt_min=-60, tilt_max=60, tilt_step=30,
                           dose_per_tilt=2.0, ice_thickness_a=thickness, **BLANK)
    res = simulate(cfg)
    images = res.tilt_series.data.values.astype(np.float64)
    t_ice = cfg.thickness_a
    for t, angle in enumerate(res.tilt_series.tilt_angles):
        expected = 2.0 * 16.0 * np.exp(-t_ice / (3500.0 * np.cos(np.deg2rad(angle))))
        assert res.truth.counts_per_pixel[t] == pytest.approx(expected)
        assert images[t].mean() == pytest.approx(expected, rel=0.01)
        assert images[t].var() == pytest.approx(expected, rel=0.03)
        assert np.array_equal(images[t], np.round(images[t]))  # counts are integers


def test_exposure_averaged_dose_weight():
    k = np.array([0.0, 0.05, 0.1, 0.2])
    assert np.allclose(exposure_averaged_dose_weight(k, 10.0, 0.0), optics.dose_weight(k, 10.0))
    # the average over a window equals the mean of its sub-windows (frames)
    whole = exposure_averaged_dose_weight(k, 6.0, 4.0)
    parts = np.mean([exposure_averaged_dose_weight(k, 6.0 + f, 1.0) for f in range(4)], axis=0)
    assert np.allclose(whole, parts)
    dense = np.mean([optics.dose_weight(k, 6.0 + e) for e in np.linspace(0, 4, 4001)], axis=0)
    assert np.allclose(whole, dense, rtol=1e-3)
    assert whole[0] == 1.0 and np.all(np.diff(whole) < 0)


def test_frames_sum_statistics_and_drift():
    base = dict(shape_zyx=(32, 96, 96), pixel_size_a=5.0, tilt_min=-30, tilt_max=30, tilt_step=30, frames_per_tilt=6, drift_a=30.0)
    noisy = simulate(SimulationConfig(**base, **BLANK))
    frames = noisy.frames.data.values.astype(np.float64)
    i0 = noisy.truth.counts_per_pixel
    for t in range(frames.shape[0]):
        assert frames[t].mean() == pytest.approx(i0[t] / 6, rel=0.02)
        assert frames[t].var(axis=(1, 2)).mean() == pytest.approx(i0[t] / 6, rel=0.05)
        total = frames[t].sum(axis=0)
        assert total.mean() == pytest.approx(i0[t], rel=0.01)
        assert total.var() == pytest.approx(i0[t], rel=0.04)
    # drift: a bead image, noise-free; frame f is frame 0 moved by the true drift
    clean = simulate(SimulationConfig(**{**base, "fiducials": FiducialConfig(count=2, diameter_a=60)}, noise=False, ctf=False, **BLANK))
    movie = clean.frames.data.values.astype(np.float64)
    drift = clean.truth.drift_xy_a
    assert np.all(drift[:, 0] == 0) and np.abs(drift).max() > 10
    for t in range(movie.shape[0]):
        ref = -(movie[t, 0] - movie[t, 0].mean())
        for f in range(1, 6):
            img = -(movie[t, f] - movie[t, f].mean())
            dark_ref, dark_img = np.clip(ref, 0, None), np.clip(img, 0, None)
            yy, xx = np.indices(ref.shape)
            c0 = np.array([(xx * dark_ref).sum(), (yy * dark_ref).sum()]) / dark_ref.sum()
            c1 = np.array([(xx * dark_img).sum(), (yy * dark_img).sum()]) / dark_img.sum()
            assert np.allclose((c1 - c0) * 5.0, drift[t, f], atol=1.5), (t, f, (c1 - c0) * 5.0, drift[t, f])
