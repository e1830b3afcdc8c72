"""Local normalisation of the template-matching score: sigma_M under the mask vs max(sigma_M, sigma_K)
under the reach kernel K (mask blurred by the energy of the search weight's point-spread function).

The failure it fixes: a missing-wedge weight elongates the filtered template along z beyond its
mask, so in flat (denoised) ice next to a high-contrast specimen the numerator draws variance
from the specimen that sigma_M does not count, and ice voxels pass the false-alarm cut-off.
"""

import numpy as np
import pytest
from scipy import ndimage

from cryocloud.geometry import random_rotations
from cryocloud.pick import score as sc
from cryocloud.pick.angles import uniform_rotations
from cryocloud.pick.peaks import false_alarm_threshold
from cryocloud.pick.template import spherical_mask
from cryocloud.pick.weighting import TiltWeighting, tilt_weight

B, S, RADIUS = 16, 48, 6.0
LO, CORE = (8, 8, 8), (32, 32, 32)
SLAB = (16, 32)  # z range of the high-contrast "specimen"; flat ice elsewhere


def _template() -> np.ndarray:
    z, y, x = np.mgrid[:B, :B, :B] - B // 2
    blob = np.exp(-((x - 2) ** 2 / 4 + (y + 1) ** 2 / 9 + z**2 / 2)) + 0.5 * np.exp(-((x + 3) ** 2 + y**2 + (z - 2) ** 2) / 3)
    return blob.astype(np.float32)


@pytest.fixture(scope="module")
def search():
    mask = spherical_mask(B, RADIUS)
    spectrum = sc.template_spectrum(_template(), mask, spherical=True)
    shape = (S, S, S)
    wedge = tilt_weight(shape, 10.0, TiltWeighting.wedge(-60, 60, 3.0), ctf="none").astype(np.float32)
    return mask, spectrum, sc.band_grid(shape, wedge), random_rotations(200, np.random.default_rng(1))


def _denoised_like(seed: int) -> np.ndarray:
    """Smooth noise, amplitude 1 in the specimen slab and 0.1 (flattened ice) elsewhere."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=(S, S, S)), 1.0, mode="wrap")
    amplitude = np.full(S, 0.1)
    amplitude[SLAB[0] : SLAB[1]] = 1.0
    return (noise * amplitude[:, None, None]).astype(np.float32)


def _run(volume, search, reach: bool, spherical: bool = True):
    mask, spectrum, grid, rotations = search
    sub = sc.prepare_subvolume(volume, grid, mask, LO, CORE, spherical=spherical, reach=reach)
    best, _, (total, total2, count) = sc.search_orientations(sub, spectrum, grid, rotations, mask=mask)
    sigma = np.sqrt(total2 / count - (total / count) ** 2)
    return best, false_alarm_threshold(sigma, count, 1.0)


@pytest.mark.slow
def test_flat_ice_next_to_a_specimen_passes_no_false_alarm_cut_off(search):
    volume = _denoised_like(0)
    z = np.arange(CORE[0]) + LO[0]
    ice = (z < SLAB[0] - RADIUS) | (z >= SLAB[1] + RADIUS)  # masks that hold only flat ice
    best, threshold = _run(volume, search, reach=False)
    above = best > threshold
    # Roseman's sigma_M: ice voxels whose wedge-elongated template reaches the specimen pass the cut-off
    assert above[ice].sum() >= 10 and above[~ice].sum() == 0
    best, threshold = _run(volume, search, reach=True)
    assert (best > threshold).sum() == 0


def test_reach_keeps_scores_on_stationary_noise_and_a_planted_copy(search):
    mask, spectrum, grid, rotations = search
    volume = ndimage.gaussian_filter(np.random.default_rng(2).normal(size=(S, S, S)), 1.0, mode="wrap").astype(np.float32)
    template = sc.effective_template(spectrum, grid, rotations[5])
    volume += 0.5 * np.roll(template, (24, 20, 26), axis=(0, 1, 2)) / template.std() * volume.std()
    plain, plain_threshold = _run(volume, search, reach=False)
    reached, reach_threshold = _run(volume, search, reach=True)
    assert np.corrcoef(plain.ravel(), reached.ravel())[0, 1] > 0.99
    assert abs(reach_threshold / plain_threshold - 1) < 0.03
    peak = (24 - LO[0], 20 - LO[1], 26 - LO[2])
    assert np.unravel_index(np.argmax(reached), CORE) == peak
    assert reached[peak] == pytest.approx(plain[peak], rel=0.02)


def test_reach_kernel_is_a_delta_for_an_all_pass_weight_and_sums_to_one(search):
    _, _, grid, _ = search
    spread = sc.reach_spectrum(grid)
    assert spread[0, 0, 0] == pytest.approx(1.0, abs=1e-5)  # unit sum
    assert spread.min() < 0.5  # the wedge spreads it
    shape = (24, 24, 24)
    all_pass = sc.band_grid(shape, np.ones(sc.half_shape(shape), np.float32), k_max=np.inf)
    assert np.allclose(sc.reach_spectrum(all_pass), 1.0, atol=1e-3)  # delta: K = M


def test_non_spherical_path_uses_the_reach_kernel_too(search):
    mask, _, grid, rotations = search
    rotated_mask = (mask, sc.template_spectrum(_template(), mask, spherical=False), grid, rotations[:3])
    volume = _denoised_like(3)
    plain, _ = _run(volume, rotated_mask, reach=False, spherical=False)
    reached, _ = _run(volume, rotated_mask, reach=True, spherical=False)
    positive = plain > 0
    # sigma = max(sigma_M, sigma_K) >= sigma_M: positive best scores can only shrink, and do in the ice
    assert np.all(reached[positive] <= plain[positive] * (1 + 1e-5))
    ratio = reached[positive] / plain[positive]
    assert np.percentile(ratio, 5) < 0.8  # the ice next to the slab


FACE = (8, 40)  # z range of tomogram voxels in the box; mean padding (0) outside
FACE_CORES = (((FACE[0], 0, 0), (4, S, S)), ((FACE[1] - 4, 0, 0), (4, S, S)))  # 4 planes at each face
CENTRE_CORE = ((18, 0, 0), (12, S, S))  # the box is periodic in y, x: cores span it


def _score_moments(search, seed: int, with_inside: bool) -> np.ndarray:
    """Moments (sum, sum of squares, count) of all scores on the planes next to the z faces and on
    the central planes (2, 3), for white noise in a box that reaches past the tomogram in z."""
    mask, spectrum, grid, rotations = search
    volume = np.zeros((S, S, S), dtype=np.float32)
    volume[FACE[0] : FACE[1]] = np.random.default_rng(seed).normal(size=(FACE[1] - FACE[0], S, S))
    inside = np.zeros((S, S, S), dtype=bool)
    inside[FACE[0] : FACE[1]] = True
    extra = {"inside": inside, "energy": sc.energy_spectrum(spectrum, grid, uniform_rotations(90.0))} if with_inside else {}
    moments = np.zeros((2, 3))
    for region, cores in enumerate((FACE_CORES, (CENTRE_CORE,))):
        for lo, core in cores:
            sub = sc.prepare_subvolume(volume, grid, mask, lo, core, spherical=True, reach=True, **extra)
            moments[region] += sc.search_orientations(sub, spectrum, grid, rotations[:100])[2]
    return moments


@pytest.mark.slow
def test_scores_next_to_the_tomogram_faces_spread_as_in_its_centre(search):
    """Statistics that count the mean padding beyond a face inflated the score's spread there (false
    picks at the faces); normalising over the tomogram's voxels only keeps it as in the centre.
    Pooled over 6 noise volumes: one estimate's sampling error is ~5 %."""
    ratio = {}
    for with_inside in (False, True):
        total = sum(_score_moments(search, seed, with_inside) for seed in range(6))
        variance = total[:, 1] / total[:, 2] - (total[:, 0] / total[:, 2]) ** 2
        ratio[with_inside] = variance[0] / variance[1]
    print(f"face / centre score variance: counting the padding {ratio[False]:.3f}, inside only {ratio[True]:.3f}")
    assert ratio[False] > 1.08
    assert abs(ratio[True] - 1.0) < 0.04


def test_boxes_inside_the_tomogram_are_normalised_as_before(search):
    mask, spectrum, grid, _ = search
    volume = _denoised_like(3)
    energy = sc.energy_spectrum(spectrum, grid, uniform_rotations(90.0))
    plain = sc.prepare_subvolume(volume, grid, mask, LO, CORE, spherical=True, reach=True)
    everywhere = sc.prepare_subvolume(volume, grid, mask, LO, CORE, spherical=True, reach=True, inside=np.ones(volume.shape, bool), energy=energy)
    assert np.array_equal(plain.scale, everywhere.scale)
