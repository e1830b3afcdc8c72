"""Tilt-axis angle and shifts on tilt series that cryocloud did not make: an independent forward model
(tests/independent_tilt_series.py: scikit-image `radon` of a blob-and-filament slab twice as wide as the field,
scipy.ndimage rotation and shift, Poisson noise at 3 e/A^2 per tilt) and the real STEM series.

Shifts are compared after removing the volume-translation gauge (`remove_raw_gauge`).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
from conftest import REAL_DATA
from independent_tilt_series import FIELD_PX, point_projection, tilt_series, to_raw
from scipy import ndimage

from cryocloud.alignment import align_tilt_series, remove_raw_gauge
from cryocloud.geometry import rotation_2d
from cryocloud.model import TiltSeries
from cryocloud.store import read_tilt_series_mrc


@pytest.mark.parametrize("angle", [-60.0, -25.0, 0.0, 40.0, 60.0])
def test_the_radon_tilt_follows_cryocloud_convention(angle):
    """A point at (x, z) = (12, 7) px lands at x cos t + z sin t (DESIGN.md): +x, +z moves to +x at positive tilt."""
    t = np.deg2rad(angle)
    assert point_projection(12, 7, angle) == pytest.approx(12 * np.cos(t) + 7 * np.sin(t), abs=0.15)


@pytest.mark.parametrize("axis", [84.0, 30.0, -5.0])
def test_the_raw_images_follow_cryocloud_geometry(axis):
    """A point at aligned position p appears in the raw image at R(axis) p + s (cryocloud.geometry.aligned_to_raw)."""
    size, p, s = 2 * FIELD_PX + 1, np.array([25.0, -40.0]), np.array([3.0, -6.0])
    aligned = np.zeros((size, size))
    aligned[size // 2 + int(p[1]), size // 2 + int(p[0])] = 1.0
    raw = to_raw(ndimage.gaussian_filter(aligned, 1.5), axis, s)
    yy, xx = np.indices(raw.shape) - FIELD_PX // 2
    weights = np.clip(raw, 0.0, None)
    found = np.array([(weights * xx).sum(), (weights * yy).sum()]) / weights.sum()
    np.testing.assert_allclose(found, rotation_2d(axis) @ p + s, atol=0.05)


CASES = [(84.0, 4.0), (30.0, -5.0), (0.0, 3.0), (-5.0, -4.0)]  # true axis, guess error (deg)


@functools.lru_cache(maxsize=len(CASES))
def _default_alignment(axis: float, guess_error: float):
    """The series of seed 0 at `axis` aligned with `align`'s defaults from a guess `guess_error` off: (result, truth)."""
    truth = tilt_series(0, axis)
    ts = TiltSeries.from_array(truth.images, tilt_angles=truth.angles_deg, pixel_size=truth.pixel_a, tilt_axis_angle=axis + guess_error)
    return align_tilt_series(ts), truth


@pytest.mark.slow
@pytest.mark.parametrize(("axis", "guess_error"), CASES)
def test_default_alignment_shifts_on_an_independent_slab_wider_than_the_field(axis, guess_error):
    """Shifts within 0.5 px RMS after the gauge (measured 0.15-0.21 px, seed 0)."""
    result, truth = _default_alignment(axis, guess_error)
    err = remove_raw_gauge(result.shifts_a / truth.pixel_a - truth.shifts_xy_px, truth.angles_deg, axis)
    assert np.sqrt(np.mean(np.sum(err**2, axis=1))) < 0.5


OPEN = pytest.mark.xfail(strict=True, reason="issue 21 open: the default axis errs by more than 0.3 deg here (measured -0.67 / +0.45)")


@pytest.mark.slow
@pytest.mark.parametrize(("axis", "guess_error"), [CASES[0], pytest.param(*CASES[1], marks=OPEN), CASES[2], pytest.param(*CASES[3], marks=OPEN)])
def test_default_alignment_axis_on_an_independent_slab_wider_than_the_field(axis, guess_error):
    """The issue's requirement: the axis within 0.3 deg. Measured (guesses +4, -3.5: the same within 0.04) -0.18 (84, the search stopped at
    its 1 deg bound), -0.67 (30), -0.04 (0), +0.45 (-5, at its bound). The patch model it starts from errs by +0.81 /
    +0.26 / +0.55 / +1.44: its patch tracks in a slab a quarter of the field thick are not fixed 3-D points (the same
    fit on a 4 px thin slab errs by 0.01 deg). 30 and -5 are marked open (strict: they fail the build once they pass)."""
    result, _ = _default_alignment(axis, guess_error)
    assert abs(result.tilt_axis_angle_deg - axis) < 0.3


@pytest.mark.slow
def test_common_line_axis_of_the_real_stem_series_lies_in_the_reference_range():
    """Reference 92.3-92.8 deg (etspy's published alignment, -2.79 deg in its convention, and a common-line scan). The two
    references differ by 0.5 deg, so the axis is asserted within the range widened by that spread."""
    stem = REAL_DATA / "etspy_haadf_stem"
    ts = read_tilt_series_mrc(str(stem / "HAADF.mrc"), tilt_angles=str(stem / "HAADF.rawtlt"), pixel_size=33.6)
    ts = dataclasses.replace(ts, tilt_axis_angle=90.0)
    result = align_tilt_series(ts, binning=2, axis_method="common-line", refine="none")
    assert 92.3 - 0.5 < result.tilt_axis_angle_deg < 92.8 + 0.5
