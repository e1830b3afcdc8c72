"""Tilt schemes: the acquisition order of each scheme, written out, and the dose bookkeeping."""

import numpy as np
import pytest

from cryocloud.errors import ModelError
from cryocloud.simulate import tilt_scheme


def test_dose_symmetric_group_2_is_hagen_order():
    s = tilt_scheme("dose-symmetric", -60, 60, 3, group_size=2)
    order = s.angles_in_acquisition_order
    assert order[:13].tolist() == [0, 3, -3, -6, 6, 9, -9, -12, 12, 15, -15, -18, 18]
    assert order.size == 41 and sorted(order.tolist()) == list(range(-60, 61, 3))
    assert order[-1] in (-60, 60)


def test_dose_symmetric_group_1_and_3():
    assert tilt_scheme("dose-symmetric", -9, 9, 3, group_size=1).angles_in_acquisition_order.tolist() == [0, 3, -3, 6, -6, 9, -9]
    g3 = tilt_scheme("dose-symmetric", -15, 15, 3, group_size=3).angles_in_acquisition_order.tolist()
    assert g3 == [0, 3, 6, -3, -6, -9, 9, 12, 15, -12, -15]


def test_dose_symmetric_uneven_range_finishes_on_the_longer_side():
    order = tilt_scheme("dose-symmetric", -6, 15, 3, group_size=2).angles_in_acquisition_order.tolist()
    assert order == [0, 3, -3, -6, 6, 9, 12, 15]


def test_bidirectional_from_start_angle():
    s = tilt_scheme("bidirectional", -60, 60, 3, start_angle=21)
    expected = list(range(21, -61, -3)) + list(range(24, 61, 3))
    assert s.angles_in_acquisition_order.tolist() == expected


def test_unidirectional_is_ascending():
    s = tilt_scheme("unidirectional", -60, 60, 2)
    assert s.angles_in_acquisition_order.tolist() == list(range(-60, 61, 2))
    assert np.array_equal(s.acquisition_order, np.arange(61))


@pytest.mark.parametrize("scheme", ["dose-symmetric", "bidirectional", "unidirectional"])
def test_pre_exposure_is_dose_times_number_of_earlier_tilts(scheme):
    s = tilt_scheme(scheme, -54, 60, 3, start_angle=0, dose_per_tilt=2.5)
    assert np.all(np.diff(s.angles) > 0)  # stored ascending
    assert np.array_equal(np.sort(s.acquisition_order), np.arange(s.n_tilts))
    assert np.allclose(s.exposure, 2.5)
    assert np.allclose(s.pre_exposure, 2.5 * s.acquisition_order)
    # the first exposed tilt has seen nothing; the last one has seen all the others
    assert s.pre_exposure[s.acquisition_order == 0][0] == 0
    assert s.pre_exposure.max() == pytest.approx(2.5 * (s.n_tilts - 1))


def test_dose_symmetric_keeps_low_tilts_low_dose():
    ds = tilt_scheme("dose-symmetric", -60, 60, 3)
    uni = tilt_scheme("unidirectional", -60, 60, 3)
    low = np.abs(ds.angles) <= 15
    assert ds.pre_exposure[low].max() <= 3.0 * 11
    assert uni.pre_exposure[low].min() >= 3.0 * 15


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(scheme="spiral"), "scheme"),
        (dict(start_angle=70), "start_angle"),
        (dict(tilt_step=0), "tilt_step"),
        (dict(group_size=0), "group_size"),
        (dict(tilt_min=-95), "tilt_min"),
    ],
)
def test_bad_input_names_the_field(kwargs, field):
    with pytest.raises(ModelError, match=field):
        tilt_scheme(**kwargs)
