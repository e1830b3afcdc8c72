"""The forward projector follows the geometry convention and conserves mass."""

import dask.array as da
import numpy as np
import pytest

from cryocloud.errors import ModelError
from cryocloud.geometry import centre_index, project_points
from cryocloud.project import project_volume, project_volume_dask

ANGLES = np.arange(-60.0, 61.0, 15.0)


def _centroid(row: np.ndarray) -> float:
    return float(np.sum(np.arange(row.size) * row) / np.sum(row))


@pytest.mark.parametrize("xyz", [(40, 7, 20), (23, 3, 37), (50, 10, 9)])
def test_point_lands_where_geometry_says(xyz):
    nz, ny, nx = 48, 16, 72
    x, y, z = xyz
    vol = np.zeros((nz, ny, nx), np.float32)
    vol[z, y, x] = 1.0
    proj = project_volume(vol, ANGLES)
    assert proj.shape == (ANGLES.size, ny, nx) and proj.dtype == np.float32
    rel = np.array([[x - centre_index(nx), y - centre_index(ny), z - centre_index(nz)]], float)
    for i, t in enumerate(ANGLES):
        expected_x, expected_y = project_points(rel, t)[0] + [centre_index(nx), centre_index(ny)]
        # all signal on the point's own row y
        assert np.abs(proj[i]).sum() == pytest.approx(np.abs(proj[i, int(expected_y)]).sum())
        assert _centroid(proj[i, y]) == pytest.approx(expected_x, abs=0.1)


def test_positive_tilt_moves_top_of_specimen_right():
    # +z towards the source: a voxel above the centre moves to larger x' at positive tilt
    vol = np.zeros((32, 4, 32), np.float32)
    vol[16 + 8, 2, 16] = 1.0
    proj = project_volume(vol, [30.0])
    assert _centroid(proj[0, 2]) == pytest.approx(16 + 8 * np.sin(np.deg2rad(30)), abs=1e-3)


def test_mass_conserved_inside_beam():
    rng = np.random.default_rng(0)
    nz, ny, nx = 20, 6, 96
    vol = np.zeros((nz, ny, nx), np.float32)
    vol[:, :, 30:66] = rng.random((nz, ny, 36), dtype=np.float32)  # fits the detector up to 60 deg
    proj = project_volume(vol, ANGLES)
    np.testing.assert_allclose(proj.sum(axis=(1, 2)), vol.sum(), rtol=1e-5)
    # and per row (y is independent)
    np.testing.assert_allclose(proj.sum(axis=2), np.broadcast_to(vol.sum(axis=(0, 2)), (ANGLES.size, ny)), rtol=1e-5)


def test_line_integral_of_slab():
    vol = np.zeros((30, 4, 64), np.float32)
    vol[10:20] = 1.0  # a slab 10 voxels thick
    proj = project_volume(vol, [0.0, 60.0])
    assert proj[0, :, 5:60] == pytest.approx(10.0, abs=1e-4)
    # at 60 degrees the path through a 10-voxel slab is 20 voxels (away from the edges)
    assert proj[1, :, 28:36] == pytest.approx(20.0, rel=1e-3)


def test_dask_matches_numpy_and_keeps_y_chunks():
    rng = np.random.default_rng(1)
    vol = rng.random((16, 24, 40), dtype=np.float32)
    dvol = da.from_array(vol, chunks=(8, 6, 20))
    lazy = project_volume_dask(dvol, ANGLES)
    assert lazy.chunks[1] == (6, 6, 6, 6)
    assert lazy.shape == (ANGLES.size, 24, 40)
    np.testing.assert_allclose(lazy.compute(), project_volume(vol, ANGLES), rtol=1e-6)


def test_bad_input_is_named():
    with pytest.raises(ModelError, match="volume"):
        project_volume(np.zeros((4, 4)), [0.0])
    with pytest.raises(ModelError, match="tilt_angles"):
        project_volume(np.zeros((4, 4, 4)), [0.0, 95.0])
