"""FLCC kernel: Fourier-rotated templates against brute-force real-space normalised correlation."""

import numpy as np
import pytest
from scipy import ndimage

from cryocloud.geometry import random_rotations
from cryocloud.pick import score as sc
from cryocloud.pick.template import shape_mask, spherical_mask

B, S = 16, 32
LO, CORE = (8, 8, 8), (16, 16, 16)


def _template() -> np.ndarray:
    z, y, x = np.mgrid[:B, :B, :B] - B // 2
    blob = np.exp(-((x - 2) ** 2 / 4 + (y + 1) ** 2 / 9 + z**2 / 2)) + 0.5 * np.exp(-((x + 3) ** 2 + y**2 + (z - 2) ** 2) / 3)
    return blob.astype(np.float32)


def rotate_real_space(volume: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """out(p) = volume(R^T p) about the box centre; arrays (z, y, x), R acting on (x, y, z)."""
    flip = np.eye(3)[::-1]
    m = flip @ rotation.T @ flip
    c = np.full(3, volume.shape[0] // 2)
    return ndimage.affine_transform(volume, m, offset=c - m @ c, order=3)


def _brute_force(volume, template_grid, mask_grid):
    """score(x) = sum t(y) V(x+y) / (||t|| sqrt(n) sigma_M(x)) by explicit shifts over the core."""
    out = np.zeros(CORE)
    n = mask_grid.sum()
    for z, y, x in np.ndindex(*CORE):
        shifted = np.roll(volume, (-(z + LO[0]), -(y + LO[1]), -(x + LO[2])), axis=(0, 1, 2))
        mean = (mask_grid * shifted).sum() / n
        var = (mask_grid * shifted**2).sum() / n - mean**2
        out[z, y, x] = (template_grid * shifted).sum() / (np.linalg.norm(template_grid) * np.sqrt(n * var))
    return out


def _pearson_under_mask(volume, template_grid, mask_grid):
    """Roseman's FLCC by definition: Pearson correlation of template and volume over the mask."""
    inside = mask_grid > 0.5
    t = template_grid[inside] - template_grid[inside].mean()
    out = np.zeros(CORE)
    for z, y, x in np.ndindex(*CORE):
        v = np.roll(volume, (-(z + LO[0]), -(y + LO[1]), -(x + LO[2])), axis=(0, 1, 2))[inside]
        v = v - v.mean()
        out[z, y, x] = (t * v).sum() / np.sqrt((t * t).sum() * (v * v).sum())
    return out


@pytest.fixture(scope="module")
def setup():
    mask = spherical_mask(B, 6.0, soft_edge=0.0)
    spectrum = sc.template_spectrum(_template(), mask, spherical=True)
    grid = sc.band_grid((S, S, S), np.ones(sc.half_shape((S, S, S)), np.float32))
    volume = np.random.default_rng(0).normal(size=(S, S, S)).astype(np.float32)
    sub = sc.prepare_subvolume(volume, grid, mask, LO, CORE, spherical=True)
    return mask, spectrum, grid, volume, sub


@pytest.mark.slow
def test_fourier_search_equals_brute_force_correlation(setup):
    mask, spectrum, grid, volume, sub = setup
    mask_grid = np.roll(np.pad(mask, (0, S - B)), (-(B // 2),) * 3, axis=(0, 1, 2))
    rotations = random_rotations(3, np.random.default_rng(1))
    for i, rotation in enumerate(rotations):
        best, index, moments = sc.search_orientations(sub, spectrum, grid, rotation[None], first_index=7 + i)
        template_grid = sc.effective_template(spectrum, grid, rotation)
        assert np.abs(best - _brute_force(volume, template_grid, mask_grid)).max() < 1e-4
        assert np.all(index == 7 + i)
        assert np.allclose(moments, [best.sum(), (best.astype(np.float64) ** 2).sum(), best.size], rtol=1e-4)
        # the effective template is zero-mean and lies (99 % of its energy) inside the mask
        assert abs(template_grid.mean()) < 1e-6
        assert ((template_grid * mask_grid) ** 2).sum() / (template_grid**2).sum() > 0.985
        # and the score is the Pearson correlation under the mask (Roseman) up to that leakage:
        # on pure noise (scores ~ +-0.05) the two differ by about 0.01 at most
        pearson = _pearson_under_mask(volume, template_grid * mask_grid, mask_grid)
        assert np.abs(best - pearson).max() < 0.02
        assert np.corrcoef(best.ravel(), pearson.ravel())[0, 1] > 0.98


def test_fourier_rotation_matches_real_space_rotation(setup):
    mask, spectrum, grid, volume, _ = setup
    t = _template()
    normalised = (t - (t * mask).sum() / mask.sum()) * mask
    for rotation in random_rotations(3, np.random.default_rng(2)):
        fourier = np.roll(sc.effective_template(spectrum, grid, rotation), (B // 2,) * 3, axis=(0, 1, 2))[:B, :B, :B]
        real = rotate_real_space(normalised, rotation)
        assert np.corrcoef(fourier.ravel(), real.ravel())[0, 1] > 0.99


def test_best_orientation_of_a_pasted_copy(setup):
    mask, spectrum, grid, _, _ = setup
    rotations = random_rotations(20, np.random.default_rng(3))
    volume = np.random.default_rng(4).normal(scale=0.05, size=(S, S, S)).astype(np.float32)
    volume[8:24, 8:24, 8:24] += rotate_real_space(_template(), rotations[13])  # centre at voxel 16
    sub = sc.prepare_subvolume(volume, grid, mask, LO, CORE, spherical=True)
    best, index, _ = sc.search_orientations(sub, spectrum, grid, rotations)
    peak = np.unravel_index(np.argmax(best), best.shape)
    assert tuple(int(p) + 8 for p in peak) == (16, 16, 16)
    assert index[peak] == 13
    assert best[peak] > 0.9


def test_non_spherical_mask_path_finds_the_orientation():
    template = _template()
    mask = shape_mask(template, dilation=1.5, soft_edge=1.5)
    spectrum = sc.template_spectrum(template, mask, spherical=False)
    grid = sc.band_grid((S, S, S), np.ones(sc.half_shape((S, S, S)), np.float32))
    rotations = random_rotations(10, np.random.default_rng(5))
    volume = np.random.default_rng(6).normal(scale=0.05, size=(S, S, S)).astype(np.float32)
    volume[8:24, 8:24, 8:24] += rotate_real_space(template, rotations[4])
    sub = sc.prepare_subvolume(volume, grid, mask, LO, CORE, spherical=False)
    best, index, _ = sc.search_orientations(sub, spectrum, grid, rotations, mask=mask)
    peak = np.unravel_index(np.argmax(best), best.shape)
    assert tuple(int(p) + 8 for p in peak) == (16, 16, 16)
    assert index[peak] == 4
    assert 0.9 < best[peak] < 1.05


def test_band_inverse_equals_irfftn_on_its_core():
    """The pruned inverse (band only; with a core, only the core's (z, y) lines) equals
    numpy's irfftn there, for a full and a low-passed band, odd and even shapes, on repeated calls
    (the buffers it reuses must not carry the previous call's data)."""
    rng = np.random.default_rng(5)
    for shape, k_max in (((S, S, S), 0.5), ((S, S, S), 0.2), ((20, 24, 18), 0.3), ((19, 16, 21), np.inf)):
        grid = sc.band_grid(shape, np.ones(sc.half_shape(shape), np.float32), k_max=k_max)
        lo, core = (3, 5, 2), (shape[0] - 7, shape[1] - 9, shape[2] - 4)
        lines = (slice(lo[0], lo[0] + core[0]), slice(lo[1], lo[1] + core[1]))  # the core's (z, y) lines
        whole, pruned = sc.BandInverse(grid), sc.BandInverse(grid, lo, core)
        assert pruned.origin == (lo[0], lo[1], 0) and pruned.out.shape == (core[0], core[1], shape[2])
        for _ in range(2):
            values = (rng.normal(size=grid.flat.size) + 1j * rng.normal(size=grid.flat.size)).astype(np.complex64)
            spectrum = np.zeros(sc.half_shape(shape), np.complex128)
            spectrum.reshape(-1)[grid.flat] = values
            expected = np.fft.irfftn(spectrum, s=shape, axes=(0, 1, 2))
            for inverse, region in ((whole, (slice(None),) * 2), (pruned, lines)):
                inverse.compact.reshape(-1)[grid.compact_flat] = values
                got = inverse() * inverse.factor
                assert np.abs(got - expected[region]).max() < 1e-5 * np.abs(expected).max()
    with pytest.raises(ValueError, match="does not fit"):
        sc.BandInverse(grid, (0, 0, 0), (shape[0] + 1, 1, 1))


def test_searches_reusing_a_grid_agree_across_cores(setup):
    """Searches of one grid share its runs (cut once): searches with another core in between and again
    with the first core give the same scores where the cores overlap."""
    mask, spectrum, grid, volume, sub = setup
    rotations = random_rotations(3, np.random.default_rng(8))
    assert grid.runs is grid.runs
    first = sc.search_orientations(sub, spectrum, grid, rotations)
    shifted = sc.prepare_subvolume(volume, grid, mask, (10, 9, 8), (12, 14, 16), spherical=True)
    other = sc.search_orientations(shifted, spectrum, grid, rotations)
    again = sc.search_orientations(sub, spectrum, grid, rotations)
    for a, b in zip(first, again):
        assert np.array_equal(a, b)
    assert np.abs(other[0] - first[0][2:14, 1:15, :]).max() < 1e-5
    assert np.array_equal(other[1], first[1][2:14, 1:15, :])
