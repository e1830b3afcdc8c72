"""Handedness of the tilt angles from the defocus difference across the tilt axis (cryocloud.preprocess.handedness).

Accuracy on tilted images simulated independently of cryocloud.simulate (tests/tilted_ctf_images.py: numpy/scipy,
weak-phase specimen, 300 kV, 3 um, the defocus gradient of the IMOD/Dynamo convention: at positive tilt the side
of larger x' is more underfocused); the same images with their tilt angles negated are a flipped series.
"""

import functools
import json

import numpy as np
import pytest
import zarr
from badinput import check_bad_input, ts_zarr
from tilted_ctf_images import PX, exposed, intensity

from cryocloud.cli import main
from cryocloud.geometry import point_defocus, project_points
from cryocloud.model import TiltSeries
from cryocloud.pipeline import PipelineConfig, run_pipeline
from cryocloud.preprocess.ctf_estimate import CtfSearch, tile_spectra
from cryocloud.preprocess.handedness import MIN_TILTS, SIDE_COLUMNS, SideFits, estimate_handedness, handedness_from_sides, with_negated_tilt_angles
from cryocloud.store import read_tilt_series, write_tilt_series

TILTS = np.arange(-60.0, 61.0, 20.0)
DEFOCUS_A = 30000.0
DOSE = 3.0


def sides_from_geometry(tilts: np.ndarray, distance_a: float, *, noise_a: float = 0.0, rng=None) -> np.ndarray:
    """Side fits as cryocloud's projection implies them: points of the specimen mid-plane on either side of the
    axis, projected (geometry.project_points) and their defocus (geometry.point_defocus), per tilt."""
    rows = []
    for t in tilts:
        # a specimen point whose projection lands at x' = -+distance_a at this tilt
        points = np.array([[-distance_a, 0.0, 0.0], [distance_a, 0.0, 0.0]]) / np.cos(np.deg2rad(t))
        across = project_points(points, t)[:, 0]
        defocus = point_defocus(points, t, DEFOCUS_A) + (0.0 if rng is None else rng.normal(0.0, noise_a, 2))
        rows.append(SideFits(defocus[0], defocus[1], across[0], across[1], False).as_array())
    return np.stack(rows)


def test_the_projection_conventions_hand_is_right_and_its_mirror_flipped():
    rng = np.random.default_rng(0)
    sides = sides_from_geometry(TILTS, 400.0, noise_a=60.0, rng=rng)
    right = handedness_from_sides(TILTS, sides)
    assert right.verdict == "right" and right.reason == ""
    assert abs(right.slope - 1.0) < 3 * right.slope_se < 0.3
    flipped = handedness_from_sides(-TILTS, sides)
    assert flipped.verdict == "flipped"
    assert flipped.slope == pytest.approx(-right.slope)
    assert flipped.slope_se == pytest.approx(right.slope_se)
    assert right.n_tilts_used == TILTS.size
    # the predicted difference follows df(x') = df0 + x' tan t, larger x' more underfocused at positive tilt
    table = right.table
    np.testing.assert_allclose(table["predicted_difference_a"], 800.0 * np.tan(np.deg2rad(TILTS)))


def test_unmeasurable_gradients_are_undetermined_not_a_wrong_verdict():
    rng = np.random.default_rng(1)
    noisy = handedness_from_sides(TILTS, sides_from_geometry(TILTS, 400.0, noise_a=5000.0, rng=rng))
    assert noisy.verdict == "undetermined"
    assert noisy.p_value >= 1e-3 and "not significant" in noisy.reason

    sides = sides_from_geometry(TILTS, 400.0)
    sides[: TILTS.size - MIN_TILTS + 1, SIDE_COLUMNS.index("poor_fit")] = 1.0  # poor side fits are not used
    few = handedness_from_sides(TILTS, sides)
    assert few.verdict == "undetermined" and few.n_tilts_used == MIN_TILTS - 1
    assert f"only {MIN_TILTS - 1} tilts" in few.reason
    assert not np.isfinite(few.slope) and few.summary()["slope"] is None

    flat = handedness_from_sides(np.zeros(4), sides_from_geometry(np.zeros(4), 400.0))
    assert flat.verdict == "undetermined" and "0 deg" in flat.reason


@pytest.mark.parametrize("axis_deg", [0.0, 90.0, 85.0])
def test_side_tiles_lie_on_their_side_of_the_axis(axis_deg):
    """x' = x cos a + y sin a (axis a ccw from image y): at 90 deg the side x' > 0 is the lower rows (larger y).
    Tiles centred on the axis belong to neither side."""
    rng = np.random.default_rng(2)
    n, box = 256, 64
    y, x = np.mgrid[:n, :n] - n // 2
    cos, sin = np.cos(np.deg2rad(axis_deg)), np.sin(np.deg2rad(axis_deg))
    image = rng.standard_normal((n, n)) * np.where(x * cos + y * sin > 0, 10.0, 1.0)  # loud on the side x' > 0
    plus = tile_spectra(image, PX, box=box, tilt_axis_angle_deg=axis_deg, side=1)
    minus = tile_spectra(image, PX, box=box, tilt_axis_angle_deg=axis_deg, side=-1)
    centre = np.arange(box // 2, n - box // 2 + 1, box // 2) - n // 2  # tile centres (pixels from the image centre)
    across = (centre[None, :] * cos + centre[:, None] * sin).ravel()
    assert plus.counts.sum() == np.sum(across > 0.5) and minus.counts.sum() == np.sum(across < -0.5)
    if axis_deg % 90 == 0:  # tiles wholly on one side
        assert plus.amplitude.mean() > 5 * minus.amplitude.mean()
    else:
        assert plus.amplitude.mean() > 2 * minus.amplitude.mean()


def test_negating_the_tilt_angles_keeps_each_images_metadata():
    images = np.arange(3)[:, None, None] * np.ones((3, 8, 8), dtype=np.float32)
    ts = TiltSeries.from_array(images, tilt_angles=[-20.0, 0.0, 40.0], pixel_size=PX, exposure=[1.0, 2.0, 3.0])
    fixed = with_negated_tilt_angles(ts)
    np.testing.assert_array_equal(fixed.tilt_angles, [-40.0, 0.0, 20.0])
    assert not np.signbit(fixed.tilt_angles[1])  # 0 deg stays +0
    np.testing.assert_array_equal(fixed.per_tilt("exposure"), [3.0, 2.0, 1.0])
    np.testing.assert_array_equal(np.asarray(fixed.data.data)[:, 0, 0], [2.0, 1.0, 0.0])


def test_fix_handedness_without_an_output_is_refused(tmp_path, capsys, request):
    def make(case):
        return ["ctf", ts_zarr(case), "--fix-handedness"], ["--output", "--fix-handedness", "never written"]

    check_bad_input(make, tmp_path, capsys, request)


@functools.cache
def tilted_counts(axis_deg: float) -> np.ndarray:
    """Counts (tilt, y, x) of the independent model at TILTS: 512 x 512 pixels of 3 A, 3 um, 3 e/A^2."""
    rng = np.random.default_rng(2027)
    return np.stack([exposed(rng, intensity(rng, DEFOCUS_A, t, axis_deg=axis_deg), DOSE) for t in TILTS])


@pytest.mark.slow
@pytest.mark.parametrize("axis", [85.0, -5.0])
def test_right_and_flipped_series_of_the_independent_model(axis):
    counts = tilted_counts(axis)
    search = CtfSearch()
    right = estimate_handedness(TiltSeries.from_array(counts, tilt_angles=TILTS, pixel_size=PX, exposure=DOSE, tilt_axis_angle=axis), search=search)
    flipped = estimate_handedness(TiltSeries.from_array(counts, tilt_angles=-TILTS, pixel_size=PX, exposure=DOSE, tilt_axis_angle=axis), search=search)
    print(f"axis {axis}: {right.describe()} | {flipped.describe()}")
    assert right.verdict == "right" and flipped.verdict == "flipped"
    assert right.n_tilts_used >= TILTS.size - 1
    assert abs(right.slope - 1.0) < 0.2 and right.slope_se < 0.15, right.describe()
    assert abs(flipped.slope + 1.0) < 0.2, flipped.describe()


@pytest.mark.slow
def test_pure_noise_is_undetermined():
    rng = np.random.default_rng(3)
    counts = rng.poisson(DOSE * PX * PX, (5, 512, 512)).astype(np.float32)
    result = estimate_handedness(TiltSeries.from_array(counts, tilt_angles=np.linspace(-60, 60, 5), pixel_size=PX, exposure=DOSE))
    assert result.verdict == "undetermined", result.describe()


@pytest.mark.slow
def test_cli_reports_a_flipped_series_and_writes_the_corrected_one(tmp_path, capsys):
    axis = -5.0
    counts = tilted_counts(axis)
    flipped = TiltSeries.from_array(counts, tilt_angles=-TILTS, pixel_size=PX, exposure=DOSE, tilt_axis_angle=axis)
    write_tilt_series(flipped, str(tmp_path / "ts.zarr"))
    out = tmp_path / "fixed.zarr"
    assert main(["ctf", str(tmp_path / "ts.zarr"), "--output", str(out), "--fix-handedness"]) == 0
    assert "handedness: flipped" in capsys.readouterr().err
    report = json.loads((tmp_path / "fixed_handedness.json").read_text())
    assert report["verdict"] == "flipped" and report["slope"] < -0.8 and len(report["tilts"]) == TILTS.size
    fixed = read_tilt_series(str(out))
    np.testing.assert_array_equal(fixed.tilt_angles, np.sort(TILTS))
    np.testing.assert_array_equal(np.asarray(fixed.data.data), counts)  # each image back at the angle it was taken at
    attrs = zarr.open_group(str(out), mode="r").attrs["cryocloud"]
    assert attrs["metadata"]["handedness"]["verdict"] == "flipped"
    assert attrs["provenance"]["parameters"]["fix_handedness"] is True


@pytest.mark.slow
def test_the_simulated_twin_is_right_in_the_pipeline_summary(tmp_path):
    """The digital twin's defocus gradient (cryocloud.simulate, noise-free, 3 A pixels so that each side's Thon rings
    are fitted) has the hand of the projection convention. Its projected volume covers only cos(t) of the field
    (71 % at 45 deg: the outer tiles hold no specimen and each side's fit leans towards the axis), so the slope
    comes out below 1."""
    overrides = {"shape_zyx": [16, 512, 512], "pixel_size_a": 3.0, "n_particles": 10, "tilt_axis_angle_deg": 85.0,
                 "tilt_min": -45.0, "tilt_max": 45.0, "tilt_step": 22.5, "noise": False, "seed": 3}
    config = PipelineConfig(output=str(tmp_path / "run"), simulate={"preset": "toy", "overrides": overrides},
                            stages=["simulate", "ctf"], ctf={"handedness": True})
    summary = run_pipeline(config)
    hand = summary["ctf"]["handedness"]
    print(hand)
    assert hand["verdict"] == "right" and hand["n_tilts_used"] >= 4, hand
    assert 0.6 < hand["slope"] < 1.3, hand
    report = json.loads((tmp_path / "run" / "ctf" / "handedness.json").read_text())
    assert report["verdict"] == "right" and len(report["tilts"]) == 5
