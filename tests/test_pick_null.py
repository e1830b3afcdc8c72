"""Empirical false-alarm cut-off from a null search (cryocloud.pick.null): on heavy-tailed noise,
where the Gaussian cut-off lets dozens of false picks through, the null's cut-off keeps their
expected count at n_false; extract_peaks applies it; a null of another search is refused."""

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

from cryocloud.errors import ModelError
from cryocloud.model import Tomogram
from cryocloud.pick.null import check_same_search, empirical_threshold, halves_difference, null_picks
from cryocloud.pick.peaks import extract_peaks, false_alarm_threshold

MIN_DISTANCE = 6.0  # voxels


def _score_map(values: np.ndarray) -> xr.DataArray:
    coords = {d: np.arange(n, dtype=np.float64) for d, n in zip("zyx", values.shape)}
    return xr.DataArray(values.astype(np.float32), dims=("z", "y", "x"), coords=coords, attrs={"pixel_size": 1.0})


def _skewed_noise(seed: int, shape=(48, 48, 48)) -> xr.DataArray:
    """A smooth noise field with a heavier right tail than a Gaussian (g + 0.35 g^2, g Gaussian of
    unit s.d. smoothed over 1.5 voxels), like a denoised tomogram's score map."""
    g = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 1.5, mode="wrap")
    g /= g.std()
    return _score_map(g + 0.35 * g**2)


@pytest.fixture(scope="module")
def noise_maps():
    maps = [_skewed_noise(seed) for seed in range(12)]
    return maps, [null_picks(m, MIN_DISTANCE) for m in maps]


@pytest.mark.parametrize("n_false", [1.0, 3.0])
def test_null_cut_off_keeps_false_picks_at_n_false_where_the_gaussian_one_does_not(noise_maps, n_false):
    maps, picks = noise_maps
    assert all(np.all(np.diff(p) <= 0) and len(p) > 150 for p in picks)  # highest first, one per ~6-voxel cell
    empirical, gaussian = [], []
    for i, null in enumerate(maps[:6]):  # each null's cut-off, counted on the 11 other realisations
        cut = empirical_threshold(null, min_distance_voxels=MIN_DISTANCE, n_false=n_false)
        gauss_cut = false_alarm_threshold(float(null.values.std()), null.size, n_false)
        empirical += [np.sum(p > cut) for j, p in enumerate(picks) if j != i]
        gaussian += [np.sum(p > gauss_cut) for j, p in enumerate(picks) if j != i]
    assert 0.5 * n_false <= np.mean(empirical) <= 1.6 * n_false
    assert np.mean(gaussian) > 10 * n_false  # the Gaussian tail model is far off on skewed noise
    # the cut-off rises as fewer false picks are allowed
    null = maps[0]
    cuts = [empirical_threshold(null, min_distance_voxels=MIN_DISTANCE, n_false=n) for n in (3.0, 1.0, 0.1)]
    assert cuts[0] < cuts[1] < cuts[2] and cuts[0] > picks[0][4]


def test_extract_peaks_picks_only_above_the_null_cut_off(noise_maps):
    maps, picks = noise_maps
    values = maps[1].values.copy()
    planted = np.array([[10, 10, 10], [30, 30, 30], [10, 36, 20]])
    values[tuple(planted.T)] = 3.0 * picks[1][0]  # well above any noise pick
    scores = _score_map(values)
    orientation = scores.copy(data=np.zeros(values.shape, np.int32))
    cut = empirical_threshold(maps[0], min_distance_voxels=MIN_DISTANCE)
    kwargs = dict(radius_a=MIN_DISTANCE, n_false=1.0, score_std=float(values.std()), n_search=float(values.size), local_sigma="global")
    plain, plain_cut = extract_peaks(scores, orientation, np.eye(3)[None], **kwargs)
    with_null, threshold = extract_peaks(scores, orientation, np.eye(3)[None], null_threshold=cut, **kwargs)
    assert plain_cut < cut and threshold == pytest.approx(cut)
    assert len(plain) > 20  # the Gaussian cut-off: the planted three and a crowd of noise picks
    assert np.all(with_null.scores >= cut) and len(with_null) <= 5
    found = {tuple(p) for p in with_null.positions[:, ::-1].astype(int)}
    assert {tuple(p) for p in planted} <= found
    with pytest.raises(ModelError, match="null_threshold"):
        extract_peaks(scores, orientation, np.eye(3)[None], radius_a=MIN_DISTANCE, n_false=None, number=3, null_threshold=cut)


def test_too_few_null_picks_and_another_search_are_refused():
    flat = _score_map(np.full((16, 16, 16), -0.1))
    with pytest.raises(ModelError, match="0 picks above 0") as err:
        empirical_threshold(flat, min_distance_voxels=MIN_DISTANCE, source="s3://bucket/null")
    assert "s3://bucket/null" in str(err.value)
    summary = {"search_id": "abc", "shape_zyx": [16, 16, 16]}
    check_same_search(summary, dict(summary), source="null/match.json")
    with pytest.raises(ModelError, match="search_id") as err:
        check_same_search(summary, {"search_id": "def", "shape_zyx": [16, 16, 16]}, source="null/match.json")
    assert "null/match.json" in str(err.value)
    with pytest.raises(ModelError, match="shape_zyx"):
        check_same_search(summary, {"search_id": "abc", "shape_zyx": [16, 16, 8]}, source="null/match.json")


def test_halves_difference_is_half_the_difference_and_needs_equal_shapes():
    rng = np.random.default_rng(0)
    even, odd = (Tomogram.from_array(rng.normal(size=(8, 8, 8)).astype(np.float32), pixel_size=5.0) for _ in range(2))
    null = halves_difference(even, odd)
    np.testing.assert_allclose(np.asarray(null.data.values), 0.5 * (even.data.values - odd.data.values))
    assert null.pixel_size == 5.0
    with pytest.raises(ModelError, match="odd"):
        halves_difference(even, Tomogram.from_array(np.zeros((8, 8, 4), np.float32), pixel_size=5.0))
