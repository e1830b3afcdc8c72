"""Membrane segmentation building blocks: the plate filter, global hysteresis components, chunk consistency."""

import dask
import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

from cryocloud.errors import ModelError
from cryocloud.model import Tomogram
from cryocloud.segment import MembraneSettings, dice, segment_membranes
from cryocloud.segment.chunked import balanced_chunks, ridge_response
from cryocloud.segment.components import STRUCTURE, Acceptance, hysteresis_components
from cryocloud.segment.evaluate import wedge_normals
from cryocloud.segment.hessian import derivatives, membrane_ridge, plate_tensor
from cryocloud.segment.threshold import robust_statistics


def _sheet(shape, normal, offset, sigma=1.2, amplitude=-1.0):
    """A Gaussian sheet n . p = offset (voxels, p in z, y, x) of the given sign."""
    n = np.asarray(normal, float) / np.linalg.norm(normal)
    d = np.tensordot(n, np.indices(shape).astype(float), axes=1) - offset
    return amplitude * np.exp(-0.5 * (d / sigma) ** 2), d


def test_plate_response_on_sheets_not_lines_or_blobs():
    shape = (32, 32, 32)
    sheet, _ = _sheet(shape, (1, 0, 0), 16)
    line = np.zeros(shape)
    line[16, 16, :] = -1
    line = ndimage.gaussian_filter(line, 1.2)
    blob = np.zeros(shape)
    blob[16, 16, 16] = -1
    blob = ndimage.gaussian_filter(blob, 1.2)
    responses = {}
    for name, vol in (("sheet", sheet), ("line", line / np.abs(line).max()), ("blob", blob / np.abs(blob).max())):
        t = plate_tensor(*derivatives(vol, 1.0), "dark")
        responses[name] = (t[0] + t[3] + t[5])[16, 16, 16]  # trace of R n n^T = R
    assert responses["sheet"] > 0.2
    assert responses["line"] < 0.05 * responses["sheet"]
    assert responses["blob"] < 0.05 * responses["sheet"]
    # polarity: a bright sheet gives nothing with "dark", the same with "bright" and "either"
    bright = -sheet
    for polarity, expected in (("dark", 0.0), ("bright", responses["sheet"]), ("either", responses["sheet"])):
        t = plate_tensor(*derivatives(bright, 1.0), polarity)
        assert (t[0] + t[3] + t[5])[16, 16, 16] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_ridge_lies_on_oblique_sheet_in_noise():
    shape = (40, 48, 48)
    rng = np.random.default_rng(1)
    sheet, distance = _sheet(shape, (1, 2, -1), 0.0 + np.dot((20, 24, 24), np.array((1, 2, -1)) / np.sqrt(6)))
    vol = sheet + 0.3 * rng.standard_normal(shape)
    r = membrane_ridge(vol, 1.0, 2.0, "either")
    threshold = robust_statistics(r[r > 0])
    strong = r > threshold[0] + 10 * threshold[1]
    inner = (slice(6, -6),) * 3
    d, s = np.abs(distance[inner]), strong[inner]
    assert np.median(d[s]) <= 0.75  # voxels from the true mid-surface
    assert (s & (d <= 1)).sum() / (d <= 0.5).sum() > 0.8  # the surface is found (area: the |d| <= 0.5 layer)
    assert (s & (d > 2)).sum() < 0.02 * s.sum()  # and nothing else


def _reference_components(values, low, acceptance):
    """Whole-volume reference: the mask of the 26-connected components of values >= low that pass
    `acceptance` (large enough, reaching high, or large_high when large), and the large ones that fail
    as (size, peak, centre z, y, x), largest first."""
    lab, n = ndimage.label(values >= low, structure=STRUCTURE)
    sizes = np.bincount(lab.ravel())
    peaks = np.asarray(ndimage.maximum(values, lab, np.arange(n + 1)))
    large = sizes >= acceptance.large_voxels
    keep = (sizes >= acceptance.min_voxels) & ((peaks >= acceptance.high) | (large & (peaks >= acceptance.large_high)))
    keep[0] = large[0] = False
    left = [k for k in np.argsort(-sizes) if large[k] and not keep[k]]
    return keep[lab], [(sizes[k], peaks[k], ndimage.center_of_mass(lab == k)) for k in left]


@pytest.mark.parametrize("chunks", [(7, 9, 11), (16, 5, 40)])
def test_chunked_hysteresis_components_equal_whole_volume(chunks):
    rng = np.random.default_rng(3)
    values = ndimage.gaussian_filter(rng.standard_normal((24, 30, 40)), 1.0).astype(np.float32)
    values /= values.std()
    # a thin diagonal line crossing block edges and corners only diagonally (26-connectivity)
    for i in range(24):
        values[i, i, i] = 6.0
    low, acceptance = 1.0, Acceptance(high=2.8, min_voxels=5, large_voxels=30, large_high=2.4)
    labels, count, left_out = hysteresis_components(da.from_array(values, chunks=chunks), low, acceptance, quiet=True)
    got = labels.compute()
    expected, expected_left = _reference_components(values, low, acceptance)
    np.testing.assert_array_equal(got > 0, expected)
    # the large tier keeps some components the plain high would not, and leaves some large ones out
    plain, _ = _reference_components(values, low, Acceptance(2.8, 5, 10**9, 2.8))
    assert (expected & ~plain).any() and len(expected_left) >= 1
    assert [(c.voxels, c.peak) for c in left_out] == [(int(s), pytest.approx(float(p))) for s, p, _ in expected_left]
    for c, (_, _, centre) in zip(left_out, expected_left):
        np.testing.assert_allclose(c.centre, centre, atol=1e-6)
    assert count == ndimage.label(expected, structure=STRUCTURE)[1]
    assert len(np.unique(got[got > 0])) == count
    # one global label per component: each reference component carries a single label
    ref_lab, n = ndimage.label(expected, structure=STRUCTURE)
    for k in range(1, n + 1):
        assert len(np.unique(got[ref_lab == k])) == 1
    assert len(np.unique(got[np.arange(24), np.arange(24), np.arange(24)])) == 1


def test_components_join_across_block_edges_and_corners():
    """Lines that leave a block only through an edge or a corner stay one component."""
    values = np.zeros((24, 24, 24), np.float32)
    i = np.arange(24)
    values[i, i, i] = 1.0  # crosses blocks of 8 only at their corners
    values[i, 23 - i, 5] = 1.0  # crosses only at block edges (z, y), x fixed
    labels, count, _ = hysteresis_components(da.from_array(values, chunks=8), 0.5, Acceptance(0.5, 24, 24, 0.5), quiet=True)
    got = labels.compute()
    assert len(np.unique(got[i, i, i])) == 1 and got[0, 0, 0] > 0
    assert len(np.unique(got[i, 23 - i, 5])) == 1 and got[0, 23, 5] > 0
    assert count == ndimage.label(values > 0, structure=STRUCTURE)[1]


@pytest.mark.slow
def test_ridge_response_does_not_depend_on_chunks():
    rng = np.random.default_rng(4)
    sheet, _ = _sheet((48, 56, 40), (2, 1, 1), 40.0)
    vol = (sheet + 0.5 * rng.standard_normal(sheet.shape)).astype(np.float32)
    settings = MembraneSettings(scale_a=10.0, integration_a=20.0)
    small = ridge_response(da.from_array(vol, chunks=8), 10.0, settings.model_copy(update={"chunk_voxels": 8}))
    whole = ridge_response(da.from_array(vol, chunks=-1), 10.0, settings.model_copy(update={"chunk_voxels": 64}))
    assert small.numblocks != whole.numblocks
    a, b = dask.compute(small, whole)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_balanced_chunks_and_settings_errors():
    assert balanced_chunks((100, 96, 5), 96) == ((50, 50), (96,), (5,))
    with pytest.raises(ValueError, match="low"):
        MembraneSettings(low=5, high=2)
    with pytest.raises(ModelError, match="scale_a"):
        MembraneSettings(scale_a=2.0).scales_vox(10.0)
    with pytest.raises(ModelError, match="Tomogram"):
        segment_membranes(np.zeros((8, 8, 8)))


def test_wedge_normals_and_dice():
    normals = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0], [np.cos(np.radians(50)), 0, np.sin(np.radians(50))]]).T
    # z normal (a sheet parallel to the ice) is in the wedge; x and y normals are measured; 40 deg from x: measured
    assert wedge_normals(normals, (-60.0, 60.0)).tolist() == [True, False, False, False]
    assert wedge_normals(normals, (-30.0, 30.0)).tolist() == [True, False, False, True]
    a = np.zeros((4, 4, 4), bool)
    b = a.copy()
    a[0] = True
    b[:2] = True
    assert dice(a, b) == pytest.approx(2 * 16 / 48)
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


@pytest.mark.slow
def test_dataarray_input_gives_labels_on_its_coordinates():
    sheet, _ = _sheet((32, 40, 40), (1, 1, 0), 35.0, amplitude=-1.0)
    noisy = sheet + 0.2 * np.random.default_rng(5).standard_normal(sheet.shape)
    tomo = Tomogram.from_array(da.from_array(noisy.astype(np.float32), chunks=16), pixel_size=10.0)
    result = segment_membranes(tomo.data, MembraneSettings(min_size_a2=0), quiet=True)
    assert isinstance(result.labels.data, da.Array) and result.labels.dims == ("z", "y", "x")
    np.testing.assert_array_equal(result.labels.x.values, tomo.data.x.values)
    assert result.count == 1 and result.labels.dtype == np.uint32
    _, distance = _sheet((32, 40, 40), (1, 1, 0), 35.0)
    found = result.mask.values
    inner = (slice(6, -6),) * 3
    assert found[inner][np.abs(distance[inner]) <= 1.5].mean() > 0.9  # thickened to 50 A = 5 voxels
    assert not found[inner][np.abs(distance[inner]) > 4].any()


def test_flat_volume_is_a_clear_error():
    tomo = Tomogram.from_array(np.zeros((32, 32, 32), np.float32), pixel_size=10.0)
    with pytest.raises(ModelError, match="ridge response"):
        segment_membranes(tomo, quiet=True)
