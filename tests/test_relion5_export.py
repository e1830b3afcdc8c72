"""RELION 5 export (cryocloud.store.relion5): column by column against RELION 5's documented conventions, and a
round trip through `cryocloud average-relion`.

Sources of the conventions (3dem/relion): TomogramSet::loadTomogram / TomoBackprojectProgram::getProjectMatrices
(P = S(image centre) S(shift / px) Rz(ZRot) Ry(YTilt) Rx(XTilt) S(-int(size / 2)), right-handed gravis rotations),
Tomogram::getCtf (defocus + rlnTomoHand * z'), initialiseCtfScaleFactors (cos tilt), the IMOD / AreTomo imports of
tomography_python_programs (YTilt = .tlt, ZRot = .xf in-plane rotation, shifts = specimen shifts -A^-1 d).
"""

from __future__ import annotations

from dataclasses import replace

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryocloud.average.align import Poses
from cryocloud.average.subtilt import extract_subtilts, reconstruct
from cryocloud.cli import main
from cryocloud.errors import ModelError
from cryocloud.geometry import (
    aligned_to_raw,
    point_defocus,
    project_points,
    random_rotations,
    relion_euler_to_matrix,
)
from cryocloud.model import Particles, TiltSeries
from cryocloud.store.relion5 import (
    HAND,
    RelionTomogram,
    relion_projections,
    tilt_series_table,
    write_relion5,
)
from cryocloud.store.tiltfiles import alignments_from_xf, xf_from_alignments

# RELION's own tilt-series STAR (3dem/relion src/tomography_python_programs/_tests/test_project_directory/
# tilt_series_metadata/tilt_series/220728_TS_45.star, first three tilts): rlnTomoYTilt, rlnTomoZRot,
# rlnTomoX/YShiftAngst and the rlnTomoProjX/Y/Z rows RELION computed from them; tomogram 4000 x 4000 x 3000
# bin-1 pixels of 1.35 A (tilt_series.star).
RELION_TS45 = [
    (-7.51, 85.225100, -6.58595, 10.435384,
     [[0.0825272670777, -0.996529400349, -0.0108795748153, 3694.44514876],
      [0.987981228106, 0.0832413062453, -0.130245627511, -20.3467133621],
      [0.130699232221, 0, 0.991422057152, -1748.53155017]]),
    (-4.51, 85.228814, -4.32951, -45.96374,
     [[0.0829191314969, -0.996534824371, -0.00654043955215, 3688.83499915],
      [0.993449152256, 0.0831766799092, -0.0783606148686, -150.757953879],
      [0.0786330923438, 0, 0.996903598309, -1652.62158215]]),
    (-10.51, 85.221334, 5.076504, 61.535917,
     [[0.0819091361332, -0.996523976326, -0.0151957491806, 3710.78367749],
      [0.97980537393, 0.0833067670465, -0.181773089192, 111.017512576],
      [0.182407140732, 0, 0.983223080635, -1839.64890242]]),
]


def test_projection_matrices_match_relions_own():
    """Rotation rows and the z translation (specimen centre int(size / 2)) of all three tilts, and the x/y translations
    of tilts 2 and 3 given the image centre that tilt 1 implies (1855, 1919: a 3710 x 3838 image)."""
    table = pd.DataFrame([{"rlnTomoYTilt": y, "rlnTomoZRot": z, "rlnTomoXShiftAngst": sx, "rlnTomoYShiftAngst": sy} for y, z, sx, sy, _ in RELION_TS45])
    ours = relion_projections(table, 1.35, (4000, 4000, 3000), (3710, 3838))
    theirs = np.array([rows for *_, rows in RELION_TS45])
    np.testing.assert_allclose(ours[:, :3, :3], theirs[:, :, :3], atol=1e-6)
    np.testing.assert_allclose(ours[:, :3, 3], theirs[:, :, 3], atol=1e-3)
    wrong_sign = relion_projections(table.assign(rlnTomoXShiftAngst=-table["rlnTomoXShiftAngst"]), 1.35, (4000, 4000, 3000), (3710, 3838))
    assert np.abs(wrong_sign[:, 0, 3] - theirs[:, 0, 3]).max() > 5


def _tilt_series(rng, n_tilts=21, shape_yx=(80, 96), pixel=10.0, axis=84.0, name="TS_7") -> TiltSeries:
    angles = np.linspace(-60, 60, n_tilts)
    return TiltSeries.from_array(
        rng.normal(size=(n_tilts, *shape_yx)).astype(np.float32), tilt_angles=angles, pixel_size=pixel, exposure=3.0,
        tilt_axis_angle=axis, shift_x=rng.normal(0, 20, n_tilts), shift_y=rng.normal(0, 20, n_tilts),
        defocus_u=np.full(n_tilts, 30000.0), defocus_v=np.full(n_tilts, 29000.0), astigmatism_angle=np.full(n_tilts, 30.0), name=name,
    )


def test_tilt_series_columns_are_cryocloud_geometry():
    """A known alignment (axis 84 deg, per-tilt shifts, tilt angles) -> rlnTomoYTilt = tilt, rlnTomoZRot = axis,
    rlnTomoX/YShiftAngst = the raw-image shifts, rlnTomoXTilt = 0, and RELION's projection of those columns puts a
    point where cryocloud.geometry does; the depth term rlnTomoHand * z' is cryocloud's defocus (point_defocus)."""
    rng = np.random.default_rng(0)
    ts = _tilt_series(rng)
    table = tilt_series_table(ts, [f"{k + 1}@ts.mrcs" for k in range(ts.n_tilts)])
    np.testing.assert_array_equal(table["rlnTomoYTilt"], ts.tilt_angles)
    np.testing.assert_array_equal(table["rlnTomoZRot"], 84.0)
    np.testing.assert_array_equal(table["rlnTomoXTilt"], 0.0)
    np.testing.assert_array_equal(table["rlnTomoXShiftAngst"], ts.per_tilt("shift_x"))
    np.testing.assert_array_equal(table["rlnTomoYShiftAngst"], ts.per_tilt("shift_y"))
    np.testing.assert_allclose(table["rlnCtfScalefactor"], np.cos(np.deg2rad(ts.tilt_angles)))
    np.testing.assert_array_equal(table["rlnMicrographPreExposure"], ts.per_tilt("pre_exposure"))
    np.testing.assert_array_equal(table["rlnDefocusU"], 30000.0)
    np.testing.assert_array_equal(table["rlnDefocusAngle"], 30.0)
    # the same alignment through IMOD's .xf (RELION's IMOD import: ZRot from the matrix, shifts = -A^-1 d)
    axes, shifts_px = alignments_from_xf(xf_from_alignments(84.0, np.stack([ts.per_tilt("shift_x"), ts.per_tilt("shift_y")], 1) / 10.0))
    np.testing.assert_allclose(axes, table["rlnTomoZRot"], atol=1e-9)
    np.testing.assert_allclose(shifts_px * 10.0, table[["rlnTomoXShiftAngst", "rlnTomoYShiftAngst"]].to_numpy(), atol=1e-9)

    size, image = (96, 80, 40), (96, 80)  # bin-1 tomogram x, y, z; image x, y (pixels of 10 A)
    proj = relion_projections(table, 10.0, size, image)
    points_px = rng.uniform([10, 10, 5], [86, 70, 35], size=(5, 3))
    rel_a = (points_px - np.array([48, 40, 20])) * 10.0
    for f, tilt in enumerate(ts.tilt_angles):
        relion = (proj[f] @ np.c_[points_px, np.ones(5)].T).T
        raw_a = aligned_to_raw(project_points(rel_a, tilt), 84.0, [ts.per_tilt("shift_x")[f], ts.per_tilt("shift_y")[f]])
        np.testing.assert_allclose(relion[:, :2], raw_a / 10.0 + np.array([48, 40]), atol=1e-9)
        depth_a = (relion[:, 2] - (proj[f] @ [48, 40, 20, 1])[2]) * 10.0
        np.testing.assert_allclose(30000.0 + HAND * depth_a, point_defocus(rel_a, tilt, 30000.0), atol=1e-6)


def test_write_relion5_set_columns(tmp_path):
    rng = np.random.default_rng(1)
    ts = _tilt_series(rng, n_tilts=5)
    pos = np.array([[100.0, 200.0, 150.0], [480.0, 400.0, 200.0]])
    rot = random_rotations(2, rng)
    parts = Particles.create(pos, rot, [0.3, 0.4], tomogram="TS_7")
    urls = write_relion5(str(tmp_path / "set"), parts, [RelionTomogram("TS_7", ts, (20, 40, 48), 20.0)])
    opt = starfile.read(urls["optimisation_set"])
    assert (opt["rlnTomoTomogramsFile"], opt["rlnTomoParticlesFile"]) == ("tomograms.star", "particles.star")
    glob = starfile.read(urls["tomograms"])
    row = glob.iloc[0]
    assert row["rlnTomoName"] == "TS_7" and row["rlnTomoTiltSeriesStarFile"] == "tilt_series/TS_7.star"
    assert (row["rlnVoltage"], row["rlnSphericalAberration"], row["rlnAmplitudeContrast"]) == (300.0, 2.7, ts.microscope.amplitude_contrast)
    assert (row["rlnTomoTiltSeriesPixelSize"], row["rlnMicrographOriginalPixelSize"], row["rlnTomoTomogramBinning"], row["rlnTomoHand"]) == (10.0, 10.0, 2.0, -1.0)
    assert (row["rlnTomoSizeX"], row["rlnTomoSizeY"], row["rlnTomoSizeZ"]) == (96, 80, 40)
    tilts = starfile.read(tmp_path / "set" / "tilt_series" / "TS_7.star")
    assert list(tilts["rlnMicrographName"]) == [f"{k:06d}@tilt_series/TS_7.mrcs" for k in range(1, 6)]
    np.testing.assert_array_equal(mrcfile.read(tmp_path / "set" / "tilt_series" / "TS_7.mrcs"), ts.data.values)
    blocks = starfile.read(urls["particles"], always_dict=True)
    table = blocks["particles"]
    assert list(table["rlnTomoName"]) == ["TS_7", "TS_7"] and list(table["rlnOpticsGroup"]) == [1, 1]
    centre = np.array([24, 20, 10]) * 20.0  # voxel n // 2 of the 48 x 40 x 20 tomogram of 20 A
    np.testing.assert_allclose(table[[f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]].to_numpy(), pos - centre, atol=1e-5)
    np.testing.assert_allclose(relion_euler_to_matrix(*table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy().T), rot, atol=1e-5)
    assert blocks["optics"]["rlnTomoTiltSeriesPixelSize"].iloc[0] == 10.0
    with pytest.raises(ModelError, match="rlnTomoName"):
        write_relion5(str(tmp_path / "bad"), parts.subset([0]), [RelionTomogram("", ts, (20, 40, 48), 20.0)])
    with pytest.raises(ModelError, match="tomogram"):
        write_relion5(str(tmp_path / "bad2"), Particles.create(pos, rot, tomogram="tomogram"), [RelionTomogram("TS_7", ts, (20, 40, 48), 20.0)])


@pytest.mark.slow
def test_average_relion_reads_the_exported_set_back(tmp_path, capsys):
    """Export -> `cryocloud average-relion --box` (tilt images cut at RELION's geometry) gives our own sub-tilt average
    (extract_subtilts at cryocloud's geometry, weighted by cos tilt as rlnCtfScalefactor); the images are noise, so
    any geometric disagreement (a patch cut elsewhere, a wrong defocus) decorrelates the maps."""
    rng = np.random.default_rng(2)
    ts = _tilt_series(rng)
    shape = (40, 80, 96)
    pos = rng.uniform([250, 250, 150], [700, 550, 250], size=(6, 3))
    parts = Particles.create(pos, random_rotations(6, rng), rng.random(6), tomogram="TS_7")
    write_relion5(str(tmp_path / "set"), parts, [RelionTomogram("TS_7", ts, shape, 10.0)])

    def ours(series):
        patches, geo = extract_subtilts(series, pos, shape, 24)
        weight = np.broadcast_to(np.cos(np.deg2rad(series.tilt_angles)), (6, series.n_tilts)).copy()
        return reconstruct(replace(geo, images=np.asarray(patches.compute()), weight=weight), Poses(parts.rotations, np.zeros((6, 3)), np.full(6, np.nan)))

    assert main(["average-relion", str(tmp_path / "set" / "optimisation_set.star"), str(tmp_path / "avg"), "--box", "24"]) == 0
    theirs = mrcfile.read(tmp_path / "avg" / "average.mrc")
    assert np.corrcoef(ours(ts).ravel(), theirs.ravel())[0, 1] > 0.999
    flipped = ts.with_per_tilt(shift_x=-ts.per_tilt("shift_x"), shift_y=-ts.per_tilt("shift_y"))
    assert np.corrcoef(ours(flipped).ravel(), theirs.ravel())[0, 1] < 0.5

    capsys.readouterr()
    assert main(["average-relion", str(tmp_path / "set" / "optimisation_set.star"), str(tmp_path / "avg2")]) == 2
    err = capsys.readouterr().err
    assert "--box" in err and "Traceback" not in err


@pytest.mark.slow
def test_extract_peaks_writes_a_relion5_set(tmp_path, capsys):
    from test_pick_match import REAL, _synthetic

    from cryocloud.model import Tomogram
    from cryocloud.store import write_tilt_series, write_tomogram

    tomo, _, positions, _ = _synthetic()
    write_tomogram(Tomogram.from_array(tomo.data.data, pixel_size=21.0), str(tmp_path / "tomo.zarr"))
    out = tmp_path / "tm"
    assert main(["match", str(tmp_path / "tomo.zarr"), str(REAL / "pytom_templates" / "human_ribo_21A.em"), str(out),
                 "--template-voxel-size", "21", "--angular-increment", "30", "--subvolume", "64", "--ctf", "none"]) == 0
    nz, ny, nx = tomo.shape
    ts = _tilt_series(np.random.default_rng(3), n_tilts=7, shape_yx=(ny, nx), pixel=21.0, name="TS_9")
    write_tilt_series(ts, str(tmp_path / "TS_9.zarr"))
    capsys.readouterr()
    assert main(["extract-peaks", str(out), str(tmp_path / "no_ts"), "--format", "relion5"]) == 2
    assert "--tilt-series" in capsys.readouterr().err
    assert main(["extract-peaks", str(out), str(tmp_path / "relion"), "--format", "relion5", "--tilt-series", str(tmp_path / "TS_9.zarr")]) == 0
    glob = starfile.read(tmp_path / "relion" / "tomograms.star")
    assert list(glob["rlnTomoName"]) == ["TS_9"] and (glob["rlnTomoSizeX"][0], glob["rlnTomoSizeY"][0], glob["rlnTomoSizeZ"][0]) == (nx, ny, nz)
    picks = starfile.read(tmp_path / "relion" / "particles.star", always_dict=True)["particles"]
    assert set(picks["rlnTomoName"]) == {"TS_9"}
    found = picks[[f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]].to_numpy() / 21.0 + np.array([nx // 2, ny // 2, nz // 2])
    for p in positions[:, ::-1]:
        assert np.min(np.linalg.norm(found - p, axis=1)) <= 1.0


@pytest.mark.slow
def test_pipeline_peaks_write_a_relion5_set(tmp_path):
    from cryocloud.average.relion_particles import read_relion_particles
    from cryocloud.pipeline import PipelineConfig, run_pipeline
    from cryocloud.store import read_particles_csv

    out = tmp_path / "run"
    summary = run_pipeline(PipelineConfig(
        output=str(out), report=False, simulate={"preset": "toy", "overrides": {"n_particles": 6, "seed": 2}},
        stages=["simulate", "ctf", "align", "reconstruct", "match", "peaks"], align={"refine": "none", "estimate_axis": False},
        match={"angular_increment_deg": 45.0, "subvolume": 64}, peaks={"n_false": None, "number": 6},
    ))
    assert summary["peaks"]["relion5"] == "peaks/relion5/optimisation_set.star"
    rp = read_relion_particles(out / "peaks" / "relion5" / "optimisation_set.star")
    picks = read_particles_csv(str(out / "peaks" / "particles.csv"))
    assert set(rp.particles.tomogram) == {"simulation"} == set(picks.tomogram)
    assert set(starfile.read(out / "peaks" / "particles.star")["rlnTomoName"]) == {"simulation"}
    (series,) = rp.tomograms.values()
    assert series.defocus_u.min() > 0 and series.hand == -1.0 and series.micrograph_names is not None
    # positions back in the tomogram frame (the full-resolution tomogram's, whatever level was searched), to within
    # RELION's decentring by rlnTomoSize / 2.0 (our centre is voxel n // 2: half a pixel apart on an odd axis)
    assert np.abs(rp.particles.positions - picks.positions).max() <= series.pixel_size_a / 2 + 1e-6


def test_two_tilt_series_of_different_lengths_read_back(tmp_path):
    from cryocloud.average.relion_particles import read_relion_particles, tilt_series_of
    from cryocloud.average.subtilt import from_relion_tilt_series
    from cryocloud.store.relion5 import read_micrographs

    rng = np.random.default_rng(4)
    long, short = _tilt_series(rng, name="TS_a"), _tilt_series(rng, n_tilts=15, axis=-95.0, name="TS_b")
    pos = rng.uniform([300, 300, 150], [600, 500, 250], size=(4, 3))
    parts = Particles.create(pos, random_rotations(4, rng), rng.random(4), tomogram=np.array(["TS_a", "TS_b", "TS_b", "TS_a"], dtype=object))
    write_relion5(str(tmp_path / "set"), parts, [RelionTomogram("TS_a", long, (40, 80, 96), 10.0), RelionTomogram("TS_b", short, (40, 80, 96), 10.0)])
    rp = read_relion_particles(tmp_path / "set" / "optimisation_set.star")
    assert list(rp.particles.tomogram) == ["TS_a", "TS_b", "TS_b", "TS_a"] and rp.stack_paths is None
    np.testing.assert_array_equal(rp.visible.sum(axis=1), [21, 15, 15, 21])
    series = {name: tilt_series_of(ts, read_micrographs(ts.micrograph_names, ts.base)) for name, ts in rp.tomograms.items()}
    assert series["TS_b"].tilt_axis_angle == -95.0 and series["TS_b"].n_tilts == 15
    np.testing.assert_array_equal(series["TS_b"].data.values, short.data.values)
    np.testing.assert_allclose(series["TS_b"].per_tilt("shift_x"), short.per_tilt("shift_x"), atol=1e-5)
    ti = from_relion_tilt_series(rp, series, 16)
    assert ti.images.shape == (4, 21, 16, 16)
    np.testing.assert_array_equal(ti.weight[1, 15:], 0.0)
    np.testing.assert_allclose(ti.weight[0], np.cos(np.deg2rad(long.tilt_angles)), atol=1e-6)
