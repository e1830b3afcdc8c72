"""`cryocloud match` / `extract-peaks` end to end, particle-list formats, templates and weights."""

import io
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import starfile

from cryocloud.cli import main
from cryocloud.errors import ModelError, StoreError
from cryocloud.geometry import random_rotations, relion_euler_to_matrix, rotation_angle_deg
from cryocloud.model import Particles, Tomogram
from cryocloud.pick.formats import picks_text
from cryocloud.pick.peaks import false_alarm_threshold, non_maximum_suppression
from cryocloud.pick.template import equivalent_radius, map_from_model, prepare_template, read_map, resample, spherical_mask
from cryocloud.pick.weighting import TiltWeighting, tilt_weight
from cryocloud.store import write_tomogram
from test_pick_match import REAL, _synthetic

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end


def test_em_reader_and_template_preparation(tmp_path):
    em, _ = read_map(str(REAL / "pytom_templates" / "human_ribo_21A.em"), voxel_size=21.0)
    mrc, px = read_map(str(REAL / "pytom_templates" / "emd_5592_21A.mrc"))
    assert em.shape == (32, 32, 32) and mrc.shape == (20, 20, 20) and px == 1.0
    with pytest.raises(ModelError, match="voxel_size"):
        read_map(str(REAL / "pytom_templates" / "human_ribo_21A.em"))
    bad = tmp_path / "bad.em"
    bad.write_bytes(bytes([6, 0, 0, 7]) + bytes(508))
    with pytest.raises(StoreError, match="data type"):
        read_map(str(bad), voxel_size=21.0)
    # resampling keeps the physical box and the values of a smooth map
    z, y, x = np.mgrid[:32, :32, :32] - 16
    blob = np.exp(-(x**2 + y**2 + z**2) / 50.0)
    half = resample(blob, 10.0, 20.0)
    assert half.shape == (16, 16, 16)
    assert half[8, 8, 8] == pytest.approx(1.0, abs=0.02)
    t = prepare_template(em, 21.0, 21.0)
    assert t.spherical and t.box % 2 == 0 and t.mask[t.box // 2, t.box // 2, t.box // 2] == 1
    assert np.all(spherical_mask(t.box, t.radius - 2.0)[t.mask == 0] == 0)


def test_particle_radius_is_the_particles_not_the_voxels_or_the_masks():
    """Picks closer than twice the particle radius are suppressed: it must measure the particle
    (a uniform ball gives its own radius), whatever the voxel size, and lie inside the mask."""
    from cryocloud.store import BUNDLED_STRUCTURE

    z, y, x = np.mgrid[:48, :48, :48] - 24
    assert equivalent_radius((x**2 + y**2 + z**2 <= 12.0**2).astype(np.float32)) == pytest.approx(12.0, rel=0.03)
    radii_a = []
    for px in (8.0, 10.0, 16.0):
        t = prepare_template(map_from_model(str(BUNDLED_STRUCTURE), px), px, px)
        radii_a.append(t.particle_radius * px)
        assert t.particle_radius < 0.75 * t.radius
    assert max(radii_a) / min(radii_a) < 1.03


def test_tilt_weight_is_the_real_missing_wedge_with_ctf_and_dose():
    shape, px = (32, 32, 32), 10.0
    wedge = tilt_weight(shape, px, TiltWeighting.wedge(-60, 60, 3))
    kz, kx = np.fft.fftfreq(32)[:, None], np.fft.rfftfreq(32)[None, :]
    angle = np.degrees(np.arctan2(np.abs(kz), kx))  # angle of (kx, kz) from the x axis in the y = 0 plane
    plane = wedge[:, 0, :]
    inside = (angle < 55) & (np.hypot(kz, kx) > 0) & (np.hypot(kz, kx) < 0.15)
    missing = (angle > 35 + 90 - 60 + 10) & (np.hypot(kz, kx) > 0.05)  # more than 10 deg into the wedge (> 40 deg)
    assert np.all(plane[inside] > 0.99)
    assert np.all(plane[missing & (angle > 40)] == 0)
    # dose and a signed CTF: negative at low frequency for underfocus, attenuated by the dose
    n = 41
    tilts = TiltWeighting(np.linspace(-60, 60, n), dose=np.arange(n) * 3.0 + 1.5, defocus_u=np.full(n, 30000.0), defocus_v=np.full(n, 30000.0))
    weighted = tilt_weight(shape, px, tilts)
    assert weighted[0, 0, 1] < 0  # (1/320 A^-1, in the xy plane)
    assert np.abs(weighted).max() <= 1.0
    assert np.all(weighted[:, 0, :][missing & (angle > 40)] == 0)


def test_false_alarm_threshold_and_nms():
    # N_search = 1e9 and one false alarm: erfcinv(2e-9) * sqrt(2) = 5.998 sigma
    assert false_alarm_threshold(0.05, 1e9, 1.0) == pytest.approx(5.998 * 0.05, rel=1e-3)
    with pytest.raises(ModelError, match="n_false"):
        false_alarm_threshold(0.05, 10, 20)
    positions = np.array([[0, 0, 0], [0, 0, 3], [0, 0, 10], [0, 0, 12]])
    kept = non_maximum_suppression(positions, np.array([0.9, 1.0, 0.5, 0.6]), radius=5)
    assert kept.tolist() == [1, 3]


def test_formats_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rotations = random_rotations(3, rng)
    particles = Particles.create(np.array([[100.0, 200.0, 50.0], [10.0, 20.0, 30.0], [0.0, 0.0, 0.0]]), rotations, [0.5, 0.4, 0.3], "TS_1", "ribosome")
    px, shape = 10.0, (20, 40, 30)
    lines = [json.loads(line) for line in picks_text(particles, "ndjson", pixel_size=px, shape_zyx=shape).splitlines()]
    assert lines[0]["type"] == "orientedPoint" and lines[0]["location"] == {"x": 10.0, "y": 20.0, "z": 5.0}
    assert np.allclose(lines[1]["xyz_rotation_matrix"], rotations[1])
    (tmp_path / "p.star").write_text(picks_text(particles, "star", pixel_size=px, shape_zyx=shape))
    star = starfile.read(tmp_path / "p.star")
    assert star["rlnCenteredCoordinateXAngst"].tolist() == [100.0 - 150.0, 10.0 - 150.0, -150.0]  # centre x = 15 voxels
    assert star["rlnCenteredCoordinateZAngst"].tolist() == [50.0 - 100.0, 30.0 - 100.0, -100.0]
    back = relion_euler_to_matrix(star["rlnAngleRot"], star["rlnAngleTilt"], star["rlnAnglePsi"])
    assert np.max(rotation_angle_deg(back, rotations)) < 1e-6
    copick = json.loads(picks_text(particles, "copick", pixel_size=px, shape_zyx=shape, object_name="ribosome"))
    assert copick["pickable_object_name"] == "ribosome" and copick["points"][0]["location"]["x"] == 100.0
    assert np.allclose(np.array(copick["points"][2]["transformation_"])[:3, :3], rotations[2])
    table = pd.read_csv(io.StringIO(picks_text(particles, "csv", pixel_size=px, shape_zyx=shape)))
    assert np.allclose(Particles.from_dataframe(table).rotations, rotations)


@pytest.mark.slow
def test_cli_match_then_extract_peaks(tmp_path, capsys):
    tomo, template, positions, truth_rotations = _synthetic()
    write_tomogram(Tomogram.from_array(tomo.data.data, pixel_size=21.0), str(tmp_path / "tomo.zarr"))
    out = tmp_path / "tm"
    args = ["match", str(tmp_path / "tomo.zarr"), str(REAL / "pytom_templates" / "human_ribo_21A.em"), str(out),
            "--template-voxel-size", "21", "--angular-increment", "30", "--subvolume", "64", "--ctf", "none"]
    assert main(args) == 0
    summary = json.loads((out / "match.json").read_text())
    assert summary["n_orientations"] == 552 and 0 < summary["score_std"] < 0.2
    assert summary["particle_radius_voxels"] == pytest.approx(template.particle_radius, rel=1e-6)  # extract-peaks' default spacing
    assert main(args) == 2  # a finished result is not overwritten
    assert main(["extract-peaks", str(out), str(tmp_path / "picks.star")]) == 0
    picks = starfile.read(tmp_path / "picks.star")
    centred = picks[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]].to_numpy()
    found = centred / 21.0 + np.array([36, 36, 20])
    for p in positions[:, ::-1]:
        assert np.min(np.linalg.norm(found - p, axis=1)) <= 1.0
    assert len(picks) <= len(positions) + 1
    # an empirical cut-off from the same search on a null volume (noise of the tomogram's level, no particles)
    noise = np.random.default_rng(5).normal(scale=float(tomo.data.std()), size=tomo.shape).astype(np.float32)
    write_tomogram(Tomogram.from_array(noise, pixel_size=21.0), str(tmp_path / "null.zarr"))
    template_path, options = args[2], args[4:]
    assert main(["match", str(tmp_path / "null.zarr"), template_path, str(tmp_path / "tm_null"), *options]) == 0
    capsys.readouterr()
    assert main(["extract-peaks", str(out), str(tmp_path / "null_picks.csv"), "--null-match", str(tmp_path / "tm_null")]) == 0
    assert "the null search's" in capsys.readouterr().err
    with_null = pd.read_csv(tmp_path / "null_picks.csv")
    assert len(with_null) == len(positions)  # the null's cut-off keeps the particles and nothing else
    assert plt.imread(tmp_path / "null_picks_histogram.png").shape[0] > 300  # with the null's histogram
    assert main(["extract-peaks", str(out), str(tmp_path / "no_cut.csv"), "--null-match", str(tmp_path / "tm_null"), "--n-false", "0"]) == 2
    assert "null_match" in capsys.readouterr().err and not (tmp_path / "no_cut.csv").exists()  # the null sets a cut-off
    coarser = list(options)
    coarser[coarser.index("--angular-increment") + 1] = "45"  # another search
    assert main(["match", str(tmp_path / "null.zarr"), template_path, str(tmp_path / "tm_45"), *coarser]) == 0
    assert main(["extract-peaks", str(out), str(tmp_path / "bad_null.csv"), "--null-match", str(tmp_path / "tm_45")]) == 2
    err = capsys.readouterr().err
    assert "search_id" in err and "tm_45" in err and not (tmp_path / "bad_null.csv").exists()
    slices, histogram = (plt.imread(tmp_path / f"picks_{name}.png") for name in ("slices", "histogram"))  # decodable PNGs
    assert slices.shape[0] > 300 and slices.shape[1] >= slices.shape[0] and histogram.shape[0] > 300
    assert main(["extract-peaks", str(tmp_path / "nothing"), str(tmp_path / "x.csv")]) == 2
    # a damaged angles.npy: exit 2 with the file and what was expected, never unpickled
    for damaged in (np.zeros((552, 3)), np.zeros((551, 3, 3)), np.array([{"a": 1}], dtype=object)):
        buffer = io.BytesIO()
        np.save(buffer, damaged, allow_pickle=True)
        (out / "angles.npy").write_bytes(buffer.getvalue())
        assert main(["extract-peaks", str(out), str(tmp_path / "bad.csv")]) == 2
        err = capsys.readouterr().err
        assert "angles.npy" in err and "(N, 3, 3)" in err and not (tmp_path / "bad.csv").exists()
