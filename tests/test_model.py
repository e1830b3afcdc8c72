import dask.array as da
import numpy as np
import pydantic
import pytest

from cryocloud.errors import ModelError
from cryocloud.model import Microscope, Particles, Tomogram, TiltSeries, accumulated_pre_exposure


def _ts(n=5, **kw):
    args = dict(tilt_angles=np.linspace(-6, 6, n), pixel_size=2.0, exposure=3.0)
    args.update(kw)
    return TiltSeries.from_array(np.zeros((n, 8, 10), np.float32), **args)


def test_tilt_series_coordinates_and_units():
    ts = _ts(acquisition_order=[2, 1, 0, 3, 4])
    assert ts.data.dims == ("tilt", "y", "x")
    assert ts.pixel_size == 2.0
    np.testing.assert_allclose(ts.data.x.values, np.arange(10) * 2.0)
    np.testing.assert_allclose(ts.per_tilt("pre_exposure"), [6, 3, 0, 9, 12])


def test_wrong_number_of_angles_names_the_field():
    with pytest.raises(ModelError, match="tilt_angle.*41 values for 40 images"):
        TiltSeries.from_array(np.zeros((40, 4, 4)), tilt_angles=np.linspace(-60, 60, 41), pixel_size=1.0)


def test_bad_acquisition_order_rejected():
    with pytest.raises(ModelError, match="acquisition_order"):
        _ts(acquisition_order=[0, 0, 1, 2, 3])


def test_missing_pixel_size_rejected():
    with pytest.raises(ModelError, match="pixel_size.*missing"):
        _ts(pixel_size=None)
    with pytest.raises(ModelError, match="pixel_size"):
        Tomogram.from_array(np.zeros((2, 2, 2)), pixel_size=-1)


def test_pre_exposure_must_grow_along_acquisition():
    with pytest.raises(ModelError, match="pre_exposure"):
        _ts(acquisition_order=[0, 1, 2, 3, 4], pre_exposure=[0, 3, 2, 9, 12])


def test_accumulated_pre_exposure_dose_symmetric():
    order = np.array([4, 2, 0, 1, 3])  # angles -6 -3 0 3 6 acquired 0, +3, -3, +6... (example)
    pre = accumulated_pre_exposure(order, np.full(5, 2.0))
    assert pre[2] == 0 and pre[3] == 2 and pre[1] == 4 and pre[4] == 6 and pre[0] == 8


def test_dask_backed_stays_lazy_and_subset_renumbers():
    ts = TiltSeries.from_array(da.zeros((5, 8, 8), chunks=(1, 8, 8)), tilt_angles=range(5), pixel_size=1.0,
                               acquisition_order=[4, 3, 2, 1, 0])
    assert isinstance(ts.data.data, da.Array)
    sub = ts.select_tilts([0, 2, 4])
    np.testing.assert_array_equal(sub.per_tilt("acquisition_order"), [2, 1, 0])


def test_unknown_per_tilt_and_wrong_dims():
    with pytest.raises(ModelError, match="not a per-tilt coordinate"):
        _ts(defocus=[1] * 5)
    with pytest.raises(ModelError, match="expected 3 dims"):
        TiltSeries.from_array(np.zeros((4, 4)), tilt_angles=[0], pixel_size=1.0)


def test_microscope_validates():
    with pytest.raises(pydantic.ValidationError):
        Microscope(voltage_kv=-3)
    with pytest.raises(pydantic.ValidationError):
        Microscope(volts=300)


def test_particles_roundtrip_dataframe():
    rng = np.random.default_rng(0)
    from cryocloud.geometry import random_rotations
    p = Particles.create(rng.random((4, 3)) * 100, random_rotations(4, rng), rng.random(4), "ts1", "ribosome")
    q = Particles.from_dataframe(p.to_dataframe())
    np.testing.assert_allclose(q.rotations, p.rotations)
    assert list(q.tomogram) == ["ts1"] * 4
    with pytest.raises(ModelError, match="rotations"):
        Particles.create(np.zeros((2, 3)), np.ones((2, 3, 3)))
