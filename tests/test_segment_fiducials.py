"""Gold fiducials' streaks are not membranes: components lying on them are dropped, others renumbered."""

import dask.array as da
import numpy as np
import pytest

from cryocloud.segment.fiducials import drop_fiducial_streaks


def _scene():
    """Noise (s.d. 1) with a dark bead at (20, 20, 44); label 1 a sheet far from it, label 2 a sheet
    whose end passes through the bead's neighbourhood (across a chunk border), label 3 a small
    sheet touching the bead's margin with few of its voxels."""
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(40, 48, 64)).astype(np.float32)
    zz, yy, xx = np.indices(volume.shape)
    bead = (zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 44) ** 2 <= 9
    volume[bead] = -60.0
    labels = np.zeros(volume.shape, np.uint32)
    labels[5, 5:40, 5:60] = 1
    labels[18:24, 14:27, 34:50] = 2  # a streak-like slab around the bead
    labels[30, 8:46, 2:62] = 3  # a large sheet, 10 voxels from the bead: outside a 3-voxel margin
    return volume, labels


def test_components_on_fiducials_are_dropped_and_the_rest_renumbered():
    volume, labels = _scene()
    lazy_labels = da.from_array(labels, chunks=(16, 24, 32))
    lazy_volume = da.from_array(volume, chunks=(16, 24, 32))
    out, count, dropped = drop_fiducial_streaks(lazy_labels, 3, lazy_volume, 10.0, sigma=20.0, margin_a=30.0)
    result = out.compute()
    assert (count, dropped) == (2, 1)
    assert np.array_equal(result[labels == 1], np.ones((labels == 1).sum(), np.uint32))
    assert np.all(result[labels == 2] == 0)
    assert np.all(result[labels == 3] == 2)
    assert set(np.unique(result)) == {0, 1, 2}


@pytest.mark.slow
def test_no_fiducials_no_change_and_chunking_does_not_matter():
    volume, labels = _scene()
    volume[volume < -10] = 0.0  # no bead
    out, count, dropped = drop_fiducial_streaks(da.from_array(labels, chunks=(8, 8, 8)), 3, da.from_array(volume, chunks=(8, 8, 8)),
                                                10.0, sigma=20.0, margin_a=30.0)
    assert (count, dropped) == (3, 0) and np.array_equal(out.compute(), labels)
    volume, labels = _scene()
    a = drop_fiducial_streaks(da.from_array(labels, chunks=(40, 48, 64)), 3, da.from_array(volume, chunks=(40, 48, 64)), 10.0, sigma=20.0, margin_a=30.0)
    b = drop_fiducial_streaks(da.from_array(labels, chunks=(7, 9, 11)), 3, da.from_array(volume, chunks=(7, 9, 11)), 10.0, sigma=20.0, margin_a=30.0)
    assert a[1:] == b[1:] and np.array_equal(a[0].compute(), b[0].compute())
