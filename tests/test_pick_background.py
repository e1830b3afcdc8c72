"""Background correction with a phase-randomised template."""

import numpy as np
import pytest

from cryocloud.geometry import random_rotations
from cryocloud.model import Tomogram
from cryocloud.pick import MatchSettings, match, prepare_template
from cryocloud.pick.template import phase_randomised, read_map
from test_pick_score import rotate_real_space

REAL = __import__("pathlib").Path(__file__).resolve().parent / "data" / "real"


def _ribosome():
    volume, _ = read_map(str(REAL / "pytom_templates" / "human_ribo_21A.em"), voxel_size=21.0)
    return prepare_template(volume, 21.0, 21.0)


def test_phase_randomised_keeps_the_power_spectrum_and_loses_the_structure():
    template = _ribosome().data
    randomised = phase_randomised(template, seed=1)
    a, b = np.fft.rfftn(template), np.fft.rfftn(randomised)
    np.testing.assert_allclose(np.abs(b), np.abs(a), rtol=1e-3, atol=1e-3 * np.abs(a).max())
    assert abs(randomised.mean() - template.mean()) < 1e-5
    assert abs(np.corrcoef(template.ravel(), randomised.ravel())[0, 1]) < 0.1
    assert not np.allclose(randomised, phase_randomised(template, seed=2))


@pytest.mark.slow
def test_background_correction_lowers_dense_objects_against_particles():
    """Four ribosomes and five dense Gaussian blobs (gold-bead-like, 2 voxels s.d., twice the template's
    peak density) in noise. Uncorrected, the blobs score about 0.6 of the particles (they correlate with
    anything of the template's power spectrum); corrected, that excess is removed for the most part
    while the particles keep their scores."""
    template = _ribosome()
    rng = np.random.default_rng(0)
    shape, b, c = (40, 96, 96), template.box, template.box // 2
    data = np.zeros(shape, np.float32)
    rotations = random_rotations(4, rng)
    particles = np.array([[20, 18, 18], [20, 18, 78], [20, 78, 18], [20, 78, 78]])
    for p, r in zip(particles, rotations):
        data[p[0] - c : p[0] - c + b, p[1] - c : p[1] - c + b, p[2] - c : p[2] - c + b] += rotate_real_space(template.data, r)
    signal_std = data.std()
    blobs = np.array([[20, 48, 18], [20, 48, 78], [20, 18, 48], [20, 78, 48], [20, 48, 48]])
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for bz, by, bx in blobs:
        data -= 2 * np.abs(template.data).max() * np.exp(-((z - bz) ** 2 + (y - by) ** 2 + (x - bx) ** 2) / 8.0)  # dense: the template's sign
    data += rng.normal(scale=1.5 * signal_std, size=shape).astype(np.float32)
    tomogram = Tomogram.from_array(data, pixel_size=21.0)
    searched = np.concatenate([rotations, random_rotations(30, np.random.default_rng(9))])
    peak = {}
    for background in (False, True):
        result = match(tomogram, template, searched, settings=MatchSettings(subvolume=128, background=background))
        s = result.scores.values
        peak[background] = [np.array([s[p[0] - 2 : p[0] + 3, p[1] - 2 : p[1] + 3, p[2] - 2 : p[2] + 3].max() for p in points]) for points in (particles, blobs)]
        assert (result.background is not None) == background
    plain_ratio = peak[False][1].max() / peak[False][0].min()
    corrected_ratio = peak[True][1].max() / peak[True][0].min()
    assert 0.4 < plain_ratio < 0.8  # the blobs are strong false candidates without the correction
    assert corrected_ratio < 0.93 * plain_ratio
    assert np.all(peak[True][0] > 0.95 * peak[False][0])
