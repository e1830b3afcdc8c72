"""Search weights: the per-position CTF (defocus gradient) and spectral whitening."""

import dataclasses

import numpy as np
import pytest

from cryocloud.geometry import point_defocus
from cryocloud.model import Tomogram
from cryocloud.pick import MatchSettings, TiltWeighting, match, prepare_template
from cryocloud.pick import score as sc
from cryocloud.pick.match import _setup
from cryocloud.pick.weighting import tilt_weight, tilt_weight_at

N_TILTS = 41


def _tilts(defocus: float = 20000.0) -> TiltWeighting:
    angles = np.linspace(-60, 60, N_TILTS)
    order = np.argsort(np.abs(angles), kind="stable")  # dose-symmetric-like: low tilts first
    dose = np.empty(N_TILTS)
    dose[order] = np.arange(N_TILTS) * 3.0 + 1.5
    return TiltWeighting(angles, dose=dose, defocus_u=np.full(N_TILTS, defocus + 300.0), defocus_v=np.full(N_TILTS, defocus - 300.0), astigmatism_angle=np.full(N_TILTS, 25.0))


def test_weight_at_band_points_equals_grid_weight():
    shape, px = (24, 32, 28), 6.0
    tilts = _tilts()
    grid = sc.band_grid(shape, np.ones(sc.half_shape(shape), np.float32), k_max=0.5)
    on_grid = tilt_weight(shape, px, tilts).reshape(-1)[grid.flat]
    at_points = tilt_weight_at(grid.kxyz, shape, px, tilts)
    np.testing.assert_allclose(at_points, on_grid, rtol=0, atol=1e-6)
    assert np.ptp(at_points) > 0.5  # the CTF oscillates in this band: the comparison means something


def test_defocus_at_position_follows_the_geometry_convention():
    tilts = _tilts()
    position = np.array([800.0, -300.0, 250.0])  # x, y, z (A) from the tomogram centre
    moved = tilts.at(position)
    expected = [point_defocus(position[None], t, df)[0] for t, df in zip(tilts.tilt_angles, tilts.defocus_u)]
    np.testing.assert_allclose(moved.defocus_u, expected)
    np.testing.assert_allclose(moved.defocus_u - moved.defocus_v, tilts.defocus_u - tilts.defocus_v)
    # at +60 deg a point on the +x side is more underfocused, at -60 deg less (IMOD / novaCTF sign);
    # a point nearer the source (+z) is less underfocused at 0 deg
    side = tilts.at(np.array([1000.0, 0.0, 0.0]))
    assert side.defocus_u[-1] - tilts.defocus_u[-1] == pytest.approx(1000.0 * np.sin(np.deg2rad(60.0)))
    assert side.defocus_u[0] - tilts.defocus_u[0] == pytest.approx(-1000.0 * np.sin(np.deg2rad(60.0)))
    top = tilts.at(np.array([0.0, 0.0, 500.0]))
    assert top.defocus_u[N_TILTS // 2] - tilts.defocus_u[N_TILTS // 2] == pytest.approx(-500.0)
    assert TiltWeighting(tilts.tilt_angles).at(position).defocus_u is None


def _white_template(px: float):
    """A template with a flat spectrum inside a 6-voxel sphere: the CTF's phase at high frequency counts."""
    z, y, x = np.mgrid[:16, :16, :16] - 8
    volume = np.random.default_rng(3).normal(size=(16, 16, 16)) * (x * x + y * y + z * z < 36)
    return prepare_template(volume.astype(np.float32), px, px, mask_radius_a=7 * px)


@pytest.mark.slow
def test_defocus_gradient_raises_scores_of_particles_off_the_mid_plane():
    """A thick specimen (1344 A along z at 4 A voxels): three particles at depths -576, 0, +576 A, each
    with the CTF of its own depth. The search with per-sub-volume defocus scores the off-centre ones
    higher than the search with the tomogram centre's defocus, and the centre one the same."""
    px, shape, depths = 4.0, (336, 48, 48), (24, 168, 312)  # blocks of 48-voxel cores: particles at their centres
    template = _white_template(px)
    tilts = _tilts()
    settings = MatchSettings(subvolume=64, resolution_a=2 * px)
    setup = _setup(template, 64, tilts, settings, None)
    volume = np.zeros(shape, np.float32)
    for z in depths:
        weight = setup.band_weight(np.array([0.0, 0.0, (z - shape[0] // 2) * px]))
        signal = sc.effective_template(setup.spectrum, dataclasses.replace(setup.grid, weight=weight), np.eye(3))
        volume[z - 20 : z + 20, 4:44, 4:44] += np.roll(signal, (32, 32, 32), axis=(0, 1, 2))[12:52, 12:52, 12:52]
    volume += np.random.default_rng(0).normal(scale=0.05 * volume.std(), size=shape).astype(np.float32)
    tomogram = Tomogram.from_array(volume, pixel_size=px)
    scores = {}
    for gradient in (True, False):
        result = match(tomogram, template, np.eye(3)[None], tilts=tilts, settings=dataclasses.replace(settings, defocus_gradient=gradient))
        s = result.scores.values
        scores[gradient] = np.array([s[z, 24, 24] for z in depths])
        assert all(np.unravel_index(np.argmax(s[z - 10 : z + 10]), (20, 48, 48)) == (10, 24, 24) for z in depths)
    gain = scores[True] / scores[False]
    assert gain[0] > 1.01 and gain[2] > 1.01
    assert abs(gain[1] - 1) < 1e-3


def test_whitening_flattens_the_radial_power_spectrum():
    """A tomogram with a steep (1/k^3) power spectrum: the whitening filter the search builds from the
    sub-volumes' mean radial power makes each sub-volume's spectrum flat across the shells."""
    from cryocloud.optics import frequency_grid
    from cryocloud.pick.match import _block_power, _clipped, _read_box, _tomogram_spectrum, plan_blocks
    from cryocloud.pick.spectrum import chunk_power, shell_grid
    from cryocloud.pick.weighting import whitening

    shape, box, px = (48, 80, 80), 32, 5.0
    kz, ky, kx = frequency_grid(shape, 1.0, rfft=True)
    k = np.sqrt(kz * kz + ky * ky + kx * kx)
    white = np.random.default_rng(4).normal(size=shape)
    coloured = np.fft.irfftn(np.fft.rfftn(white) / (k + 0.02) ** 1.5, s=shape, axes=(0, 1, 2)).astype(np.float32)
    blocks = plan_blocks(shape, box, 4)
    step, n_shells = shell_grid(box, px)
    spectrum = _tomogram_spectrum(step, *(_block_power(coloured[_clipped(b, box, shape)], b, box, px) for b in blocks))
    weight = whitening((box,) * 3, px, spectrum)
    assert weight.max() == pytest.approx(1.0)
    shells = slice(1, box // 2)  # inside Nyquist, without the DC
    for block in blocks[:: max(1, len(blocks) // 4)]:
        volume = _read_box(coloured[_clipped(block, box, shape)], block, box)
        sums, counts = chunk_power(volume, px, step, n_shells)
        before = (sums / counts)[shells]
        filtered = np.fft.irfftn(np.fft.rfftn(volume) * weight, s=volume.shape, axes=(0, 1, 2))
        sums, counts = chunk_power(filtered, px, step, n_shells)
        after = (sums / counts)[shells]
        assert before.max() / before.min() > 100
        assert after.max() / after.min() < 2.0  # shell 1 holds ~30 frequencies: +-20 % sampling noise
        assert np.std(np.log(after)) < 0.15 < 1.0 < np.std(np.log(before))


@pytest.mark.slow
def test_whitening_rescues_a_search_in_coloured_noise():
    """Eight copies of a real ribosome template (PyTom, 21 A) in noise whose power falls as 1/k^3 and
    swamps them at low frequency: without whitening the search finds none above the false-alarm
    cut-off, with whitening F4 >= 0.9."""
    from cryocloud.geometry import random_rotations
    from cryocloud.optics import frequency_grid
    from cryocloud.pick import extract_peaks
    from cryocloud.pick.evaluate import f_beta
    from cryocloud.pick.template import read_map
    from test_pick_score import rotate_real_space

    real = __import__("pathlib").Path(__file__).resolve().parent / "data" / "real"
    volume, _ = read_map(str(real / "pytom_templates" / "human_ribo_21A.em"), voxel_size=21.0)
    template = prepare_template(volume, 21.0, 21.0)
    rng = np.random.default_rng(0)
    shape, b, c = (40, 96, 96), template.box, template.box // 2
    data = np.zeros(shape, np.float32)
    rotations = random_rotations(8, rng)
    positions = np.array([[20, y, x] for y in (18, 48, 78) for x in (18, 48, 78)])[:8]
    for p, r in zip(positions, rotations):
        data[p[0] - c : p[0] - c + b, p[1] - c : p[1] - c + b, p[2] - c : p[2] - c + b] += rotate_real_space(template.data, r)
    kz, ky, kx = frequency_grid(shape, 1.0, rfft=True)
    k = np.sqrt(kz * kz + ky * ky + kx * kx)
    noise = np.fft.irfftn(np.fft.rfftn(rng.normal(size=shape)) / (k + 0.03) ** 1.5, s=shape, axes=(0, 1, 2))
    tomogram = Tomogram.from_array((data + noise * 8 * data.std() / noise.std()).astype(np.float32), pixel_size=21.0)
    searched = np.concatenate([rotations, random_rotations(30, np.random.default_rng(9))])
    f4 = {}
    for whiten in (False, True):
        result = match(tomogram, template, searched, settings=MatchSettings(subvolume=128, whiten=whiten))
        sigma, n_search = result.score_std()
        picks, _ = extract_peaks(result.scores.compute(), result.orientation.compute(), searched, radius_a=10 * 21.0, n_false=1.0, score_std=sigma, n_search=n_search)
        f4[whiten] = f_beta(picks.positions, positions[:, ::-1] * 21.0, 5 * 21.0)["f4"]
    assert f4[False] < 0.5 and f4[True] >= 0.9
