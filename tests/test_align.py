"""Tilt-series alignment against ground truth.

The fixture projects a random blob phantom (a slab, wider than the field of view) with
`project_volume`, then puts every projection into raw-image geometry with a known tilt-axis angle
and known shifts (scipy.ndimage.affine_transform, written here independently of the production
resampler) and adds noise. Shifts are compared after removing the volume-translation gauge
(`remove_raw_gauge`: x shifts a cos t + b sin t and a constant y shift, in the aligned frame).
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

from cryocloud.alignment import AlignmentResult, align_tilt_series, apply_alignment, remove_raw_gauge
from cryocloud.alignment.axis import fit_projection_model, remove_gauge, tilt_offset_from_points
from cryocloud.alignment.correlate import find_shifts
from cryocloud.alignment.images import aligned_view
from cryocloud.errors import ModelError
from cryocloud.geometry import alignment_from_xf, rotation_2d
from cryocloud.model import TiltSeries
from cryocloud.project import project_volume

PIXEL = 5.0
ANGLES = np.arange(-60, 61, 3.0)
TRUE_AXIS = 84.0


def _phantom(rng, shape=(40, 320, 640), n_blobs=6000) -> np.ndarray:
    vol = np.zeros(shape, np.float32)
    idx = (rng.integers(4, shape[0] - 4, n_blobs), rng.integers(0, shape[1], n_blobs), rng.integers(0, shape[2], n_blobs))
    vol[idx] = rng.uniform(0.5, 1.5, n_blobs)
    return ndimage.gaussian_filter(vol, 1.5)


def _to_raw(proj: np.ndarray, axis_deg: float, shift_xy: np.ndarray, out_shape) -> np.ndarray:
    """raw(q) = proj(R(-axis) (q - s)) about the centres (index n // 2), cubic spline."""
    a = np.deg2rad(axis_deg)
    inv_yx = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])  # R(-axis) acting on (y, x)
    c_raw = np.array(out_shape) // 2
    c_proj = np.array(proj.shape) // 2
    offset = c_proj - inv_yx @ (c_raw + np.asarray(shift_xy)[::-1])
    return ndimage.affine_transform(proj, inv_yx, offset=offset, output_shape=out_shape, order=3)


def _series(seed: int, *, axis_deg=TRUE_AXIS, guess_error=2.0, tilt_offset=0.0, noise=0.5, size=256):
    rng = np.random.default_rng(seed)
    proj = project_volume(_phantom(rng), ANGLES + tilt_offset)
    shifts = rng.normal(0, 6, (len(ANGLES), 2))
    raw = np.stack([_to_raw(p, axis_deg, s, (size, size)) for p, s in zip(proj, shifts)]).astype(np.float32)
    raw += rng.normal(0, noise * raw.std(), raw.shape).astype(np.float32)
    ts = TiltSeries.from_array(raw, tilt_angles=ANGLES, pixel_size=PIXEL, tilt_axis_angle=axis_deg + guess_error)
    return ts, shifts, proj


@pytest.fixture(scope="module")
def series():
    return _series(0)


def _shift_rms_px(result: AlignmentResult, true_shifts_px: np.ndarray, angles=ANGLES) -> float:
    err = remove_raw_gauge(result.shifts_a / PIXEL - true_shifts_px, angles, TRUE_AXIS)
    return float(np.sqrt(np.mean(np.sum(err**2, axis=1))))


def test_find_shifts_sign_and_subpixel():
    rng = np.random.default_rng(1)
    ref = ndimage.gaussian_filter(rng.normal(size=(64, 64)), 2, mode="wrap")
    img = ndimage.shift(ref, (-2.3, 3.6), order=3, mode="grid-wrap")  # (y, x): content moves by x +3.6, y -2.3
    shift, score = find_shifts(ref, img)
    np.testing.assert_allclose(shift, [3.6, -2.3], atol=0.1)
    assert score > 0.9


def test_aligned_view_follows_geometry():
    """A point at aligned position p appears in the raw image at R(axis) p + s; aligned_view brings it back."""
    raw = np.zeros((101, 101), np.float32)
    axis, s, p = 30.0, np.array([4.0, -7.0]), np.array([20.0, 10.0])
    q = rotation_2d(axis) @ p + s
    raw[int(round(q[1])) + 50, int(round(q[0])) + 50] = 1.0
    q = np.round(q)
    out = aligned_view(ndimage.gaussian_filter(raw, 2.0), axis, np.linalg.solve(rotation_2d(axis), s))
    peak = np.array(np.unravel_index(np.argmax(out), out.shape))[::-1] - 50
    np.testing.assert_allclose(peak, np.linalg.solve(rotation_2d(axis), q - s), atol=1.0)


@pytest.mark.slow
def test_projection_model_recovers_axis_shifts_and_offset_exactly():
    rng = np.random.default_rng(2)
    axis, offset = -12.5, 3.0
    pts = np.column_stack([rng.uniform(-100, 100, 60), rng.uniform(-100, 100, 60), rng.normal(0, 0.5, 60)])
    d = rng.normal(0, 5, (len(ANGLES), 2))
    t = np.deg2rad(ANGLES + offset)[:, None]
    aligned = np.stack([pts[None, :, 0] * np.cos(t) + pts[None, :, 2] * np.sin(t), np.broadcast_to(pts[:, 1], t.shape[:1] + pts[:, 1].shape)], -1)
    obs = (aligned + d[:, None, :]) @ rotation_2d(axis).T
    obs[rng.random(obs.shape[:2]) < 0.2] = np.nan  # points lost in some tilts
    fit = fit_projection_model(obs, ANGLES, axis + 3.0)
    assert abs(fit.axis_deg - axis) < 1e-6
    np.testing.assert_allclose(fit.shifts, remove_gauge(d, ANGLES), atol=1e-6)
    assert np.nanmax(fit.residuals) < 1e-6
    assert abs(tilt_offset_from_points(fit.points) - offset) < 0.2  # the specimen's own 0.5 px roughness


@pytest.mark.slow
def test_projection_matching_alignment_accuracy(series):
    """The issue's accuracy: shifts within 1 px RMS (raw pixels, binned 2 here), axis within 0.5 deg."""
    ts, shifts, _ = series
    result = align_tilt_series(ts, refine="projection-matching", iterations=3, binning=2)
    assert result.binning == 2
    assert abs(result.tilt_axis_angle_deg - TRUE_AXIS) < 0.5
    assert _shift_rms_px(result, shifts) < 0.5
    assert np.all(np.isfinite(result.residuals)) and result.residuals.max() < 0.5 * PIXEL


@pytest.mark.slow
def test_patch_tracking_alignment_accuracy(series):
    """Patch tracking alone: shifts within 1 px; its axis angle is less exact (tracks drift), within 1 deg."""
    ts, shifts, _ = series
    result = align_tilt_series(ts, refine="patch-tracking", binning=1)
    assert abs(result.tilt_axis_angle_deg - TRUE_AXIS) < 1.0
    assert _shift_rms_px(result, shifts) < 1.0
    assert np.all(result.residuals > 0) and np.all(result.residuals < 1.0 * PIXEL)


@pytest.mark.slow
def test_coarse_only_with_fixed_axis_keeps_the_axis(series):
    ts, shifts, _ = series
    fixed = align_tilt_series(ts, refine="none", estimate_axis=False, axis_angle_guess_deg=TRUE_AXIS)
    assert fixed.tilt_axis_angle_deg == TRUE_AXIS
    assert np.all(np.isnan(fixed.residuals))
    assert _shift_rms_px(fixed, shifts) < 2.0


@pytest.mark.slow
@pytest.mark.parametrize("offset", [4.0, -3.0])
def test_tilt_offset_estimate(offset):
    """Measured error over seeds 3, 5, 7 and offsets 0, 2, 4, -3 deg: at most 0.26 deg. It does not grow
    with the offset: with the true angles the tracked points' plane tilts by the same -0.03 (seed 3) /
    -0.22 deg (seed 7) for true offsets 0 and 4 (the tracked features are not exactly coplanar)."""
    ts, shifts, _ = _series(3, tilt_offset=offset, guess_error=0.0)
    result = align_tilt_series(ts, refine="patch-tracking", tilt_offset=True, estimate_axis=False)
    assert abs(result.tilt_offset_deg - offset) < 0.5
    np.testing.assert_allclose(result.corrected_tilt_angles_deg, ANGLES + result.tilt_offset_deg)


def test_apply_alignment_reproduces_the_projections(series):
    ts, shifts, proj = series
    truth = AlignmentResult(TRUE_AXIS, shifts * PIXEL, 0.0, np.zeros(len(ANGLES)), ANGLES, PIXEL, "truth", 1)
    recorded = truth.apply_to(ts)
    assert recorded.tilt_axis_angle == TRUE_AXIS
    np.testing.assert_allclose(recorded.per_tilt("shift_x"), shifts[:, 0] * PIXEL)
    aligned = apply_alignment(recorded)
    assert isinstance(aligned.data.data, da.Array) and aligned.tilt_axis_angle == 0.0
    assert np.all(aligned.per_tilt("shift_x") == 0)
    out = aligned.data.data[[0, 20, 40]].compute()
    for k, t in enumerate((0, 20, 40)):
        centre = proj[t][160 - 60 : 160 + 60, 320 - 60 : 320 + 60]
        got = out[k][128 - 60 : 128 + 60, 128 - 60 : 128 + 60]
        assert np.corrcoef(centre.ravel(), got.ravel())[0, 1] > 0.85  # noise 0.5 x signal std


def test_xf_rows_round_trip(series):
    ts, shifts, _ = series
    result = AlignmentResult(TRUE_AXIS, shifts * PIXEL, 0.0, np.zeros(len(ANGLES)), ANGLES, PIXEL, "truth", 1)
    for row, s in zip(result.xf_rows(), shifts):
        axis, shift = alignment_from_xf(row)
        assert abs(axis - TRUE_AXIS) < 1e-9
        np.testing.assert_allclose(shift, s, atol=1e-9)


def test_bad_input_errors(series):
    ts, _, _ = series
    with pytest.raises(ModelError, match="refine"):
        align_tilt_series(ts, refine="fiducials")
    with pytest.raises(ModelError, match="binning"):
        align_tilt_series(ts, binning=8)
    with pytest.raises(ModelError, match="tilt"):
        AlignmentResult(0.0, np.zeros((3, 2)), 0.0, np.zeros(3), np.zeros(3), PIXEL, "x", 1).apply_to(ts)
