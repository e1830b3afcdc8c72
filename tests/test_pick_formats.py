"""Particle-list formats: portal ndjson (point, orientedPoint, instancePoint), portal annotation folders,
copick picks and overlay layout, RELION 5 STAR; round trips and the real EMPIAR-10988 TS_037 picks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import starfile
from conftest import REAL_DATA

from cryocloud.errors import ModelError, StoreError
from cryocloud.geometry import random_rotations, relion_euler_to_matrix
from cryocloud.model import Particles, Tomogram
from cryocloud.pick.formats import from_copick, from_star, picks_text, read_picks, to_copick
from cryocloud.store import read_tomogram
from cryocloud.store.portal.annotations import from_ndjson, parse_ndjson, to_ndjson, write_portal_annotation
from cryocloud.store.portal.copick import CopickOverlay

TS037_VS = 13.481  # A per voxel of the TS_037 ground-truth coordinates (README of ribosomeTM_empiar10988)


@pytest.fixture(scope="module")
def ts037() -> Particles:
    """The 1646 real ribosome positions of EMPIAR-10988 TS_037 (integer voxels x, y, z) in Angstrom."""
    voxels = pd.read_csv(REAL_DATA / "ribosomeTM_empiar10988" / "TS_037_cyto_ribosomes.csv", header=None, names=["x", "y", "z"]).to_numpy(float)
    rotations = random_rotations(len(voxels), np.random.default_rng(37))
    return Particles.create(voxels * TS037_VS, rotations, np.linspace(0.1, 0.9, len(voxels)), tomogram="TS_037", class_name="ribosome")


@pytest.mark.slow
def test_real_picks_as_portal_ndjson_of_each_shape(ts037):
    voxels = ts037.positions / TS037_VS
    for shape in ("point", "orientedPoint", "instancePoint"):
        ids = np.arange(len(ts037)) % 7 if shape == "instancePoint" else None
        text = to_ndjson(ts037, TS037_VS, shape=shape, instance_ids=ids)
        records = [json.loads(line) for line in text.splitlines()]
        assert len(records) == 1646 and {r["type"] for r in records} == {shape}
        # the portal stores voxel coordinates of the annotation's spacing: the CSV's integers come back exactly
        np.testing.assert_allclose([[r["location"][k] for k in "xyz"] for r in records], voxels, atol=1e-9)
        assert records[0]["location"] == {"x": 147.0, "y": 851.0, "z": 286.0}
        back, instance = parse_ndjson(text, TS037_VS, class_name="ribosome")
        np.testing.assert_allclose(back.positions, ts037.positions, rtol=1e-12)
        np.testing.assert_allclose(back.scores, ts037.scores)
        if shape == "orientedPoint":
            np.testing.assert_allclose(back.rotations, ts037.rotations, atol=1e-12)
        else:
            assert "xyz_rotation_matrix" not in records[0]
            np.testing.assert_array_equal(back.rotations, np.broadcast_to(np.eye(3), (1646, 3, 3)))
        np.testing.assert_array_equal(instance, ids if ids is not None else -1)
    # the same particles at the portal's 10.012 A spacing: voxel coordinates scale by 13.481 / 10.012
    first = json.loads(to_ndjson(ts037.subset(slice(0, 1)), 10.012, shape="point"))
    assert first["location"]["x"] == pytest.approx(147 * TS037_VS / 10.012)


def test_bad_ndjson_and_shapes():
    with pytest.raises(ModelError, match="line 2.*'type'"):
        from_ndjson('{"type": "point", "location": {"x": 1, "y": 2, "z": 3}}\n{"type": "mesh"}\n', 10.0)
    with pytest.raises(ModelError, match="line 1.*xyz_rotation_matrix"):
        from_ndjson('{"type": "orientedPoint", "location": {"x": 1, "y": 2, "z": 3}, "xyz_rotation_matrix": [[2,0,0],[0,1,0],[0,0,1]]}\n', 10.0)
    one = Particles.create([[1.0, 2.0, 3.0]])
    with pytest.raises(ModelError, match="instance_ids"):
        to_ndjson(one, 10.0, shape="instancePoint")
    with pytest.raises(ModelError, match="shape"):
        to_ndjson(one, 10.0, shape="mesh")
    with pytest.raises(ModelError, match="voxel_spacing"):
        to_ndjson(one, 0.0)


def test_portal_annotation_folder(ts037, tmp_path):
    folder = tmp_path / "10001" / "TS_037" / "Reconstructions" / "VoxelSpacing13.481" / "Annotations" / "1"
    subset = ts037.subset(slice(0, 25))
    meta_url = write_portal_annotation(subset, str(folder), object_name="cytosolic-ribosome", voxel_spacing=TS037_VS,
                                       metadata={"annotation_method": "template matching", "annotation_object": {"id": "GO:0022626"}})
    meta = json.loads((folder / "cytosolic-ribosome-1.0.json").read_text())
    assert meta_url.endswith("cytosolic-ribosome-1.0.json")
    assert meta["annotation_object"] == {"id": "GO:0022626", "name": "cytosolic-ribosome"} and meta["version"] == "1.0"
    assert meta["files"] == [{"format": "ndjson", "shape": "OrientedPoint", "path": "cytosolic-ribosome-1.0_orientedpoint.ndjson",
                              "is_visualization_default": True}]
    back = from_ndjson((folder / meta["files"][0]["path"]).read_text(), meta["voxel_spacing"])
    np.testing.assert_allclose(back.positions, subset.positions)
    with pytest.raises(Exception, match="exists"):
        write_portal_annotation(subset, str(folder), object_name="cytosolic-ribosome", voxel_spacing=TS037_VS)
    with pytest.raises(StoreError, match="read-only"):
        write_portal_annotation(subset, "s3://cryoet-data-portal-public/10001/TS_037/x", object_name="r", voxel_spacing=10.0)


@pytest.mark.slow
def test_copick_round_trip_and_star(ts037, tmp_path):
    text = to_copick(ts037, object_name="ribosome", user_id="cryocloud", session_id="7", run_name="TS_037", voxel_spacing=TS037_VS)
    document = json.loads(text)
    assert (document["unit"], document["run_name"], document["voxel_spacing"]) == ("angstrom", "TS_037", TS037_VS)
    first = document["points"][0]
    assert first["location"] == pytest.approx({"x": 147 * TS037_VS, "y": 851 * TS037_VS, "z": 286 * TS037_VS})
    np.testing.assert_allclose(np.array(first["transformation_"])[:3, :3], ts037.rotations[0])
    np.testing.assert_allclose(np.array(first["transformation_"])[3], [0, 0, 0, 1])
    back = from_copick(text)
    np.testing.assert_allclose(back.positions, ts037.positions)
    np.testing.assert_allclose(back.rotations, ts037.rotations, atol=1e-12)
    assert back.tomogram[0] == "TS_037" and back.class_name[0] == "ribosome"
    with pytest.raises(ModelError, match="unit"):
        from_copick(json.dumps({**document, "unit": "pixel"}))
    with pytest.raises(ModelError, match="points"):
        from_copick('{"points": [{"loc": 1}]}')
    # RELION 5: centred Angstrom coordinates and ZYZ Euler angles that give back the same matrices
    shape = (371, 922, 951)  # z, y, x voxels
    (tmp_path / "picks.star").write_text(picks_text(ts037, "star", pixel_size=TS037_VS, shape_zyx=shape))
    table = starfile.read(tmp_path / "picks.star", always_dict=True)["particles"]
    centre = np.array([951 // 2, 922 // 2, 371 // 2]) * TS037_VS
    centred = table[[f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]].to_numpy()
    np.testing.assert_allclose(centred + centre, ts037.positions, atol=1e-4)
    matrices = relion_euler_to_matrix(table["rlnAngleRot"].to_numpy(), table["rlnAngleTilt"].to_numpy(), table["rlnAnglePsi"].to_numpy())
    np.testing.assert_allclose(matrices, ts037.rotations, atol=1e-4)
    back = read_picks(str(tmp_path / "picks.star"), pixel_size=TS037_VS, shape_zyx=shape)
    np.testing.assert_allclose(back.positions, ts037.positions, atol=1e-4)
    np.testing.assert_allclose(back.rotations, ts037.rotations, atol=1e-4)


def test_star_in_voxels_and_bad_star_files():
    text = "data_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnCoordinateZ #3\n_rlnAutopickFigureOfMerit #4\n10 20 30 0.5\n1 2 3 0.25\n"
    picks = from_star(text, 4.0, (8, 8, 8), source="v.star")
    np.testing.assert_allclose(picks.positions, [[40, 80, 120], [4, 8, 12]])
    np.testing.assert_allclose(picks.rotations, np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(picks.scores, [0.5, 0.25])
    with pytest.raises(StoreError, match="expected columns") as err:
        from_star("data_particles\n\nloop_\n_rlnAngleRot #1\n5\n", 4.0, (8, 8, 8), source="angles.star")
    assert "angles.star" in str(err.value) and err.value.field == "rlnCenteredCoordinateXAngst"
    with pytest.raises(ModelError, match="format"):
        read_picks("picks.txt", pixel_size=4.0)


def test_copick_overlay_layout(ts037, tmp_path):
    overlay = CopickOverlay(str(tmp_path / "out"))
    picks_url = overlay.write_picks(ts037.subset(slice(0, 10)), "TS_037", "ribosome", session_id="1", voxel_spacing=TS037_VS)
    assert picks_url == str(tmp_path / "out" / "ExperimentRuns" / "TS_037" / "Picks" / "cryocloud_1_ribosome.json")
    np.testing.assert_allclose(from_copick(open(picks_url).read()).positions, ts037.positions[:10])
    rng = np.random.default_rng(0)
    tomo = Tomogram.from_array(rng.normal(size=(8, 16, 16)).astype(np.float32), pixel_size=13.481)
    tomo_url = overlay.write_tomogram(tomo, "TS_037", "denoised")
    assert tomo_url == str(tmp_path / "out" / "ExperimentRuns" / "TS_037" / "VoxelSpacing13.481" / "denoised.zarr")
    assert (tmp_path / "out/ExperimentRuns/TS_037/VoxelSpacing13.481/denoised.zarr/.zgroup").exists()  # zarr format 2, as copick reads
    np.testing.assert_array_equal(read_tomogram(tomo_url).data.values, tomo.data.values)
    labels = Tomogram.from_array((tomo.data.values > 1).astype(np.uint8), pixel_size=13.481)
    seg_url = overlay.write_segmentation(labels, "TS_037", "membrane")
    assert seg_url.endswith("ExperimentRuns/TS_037/Segmentations/13.481_cryocloud_0_membrane.zarr")
    seg = read_tomogram(seg_url)
    assert seg.data.dtype == np.uint8 and int(seg.data.sum()) == int(labels.data.sum())
    config_url = overlay.write_config([{"name": "ribosome", "radius": 130.0, "identifier": "GO:0022626"}], dataset_ids=[10001],
                                      overlay_fs_args={"endpoint_url": "http://127.0.0.1:9000", "secret": "s3cr3t"})
    config = json.loads(open(config_url).read())
    assert config["config_type"] == "cryoet_data_portal" and config["dataset_ids"] == [10001]
    assert config["overlay_root"] == f"local://{tmp_path / 'out'}"
    assert config["overlay_fs_args"] == {"endpoint_url": "http://127.0.0.1:9000"}  # never a credential
    assert config["pickable_objects"][0] == {"name": "ribosome", "is_particle": True, "label": 1, "color": [31, 119, 180, 255],
                                                 "radius": 130.0, "identifier": "GO:0022626"}
    for bad in ("../x", "a/b"):
        with pytest.raises(ModelError, match="run"):
            overlay.picks_url(bad, "ribosome")
    with pytest.raises(ModelError, match="user_id"):
        overlay.picks_url("TS_037", "ribosome", user_id="a_b")
    with pytest.raises(StoreError, match="read-only"):
        CopickOverlay("s3://cryoet-data-portal-public/10001")
    with pytest.raises(ModelError, match="static"):
        overlay.write_config([{"name": "ribosome"}])


def test_portal_copick_cli(ts037, tmp_path, capsys):
    from cryocloud.cli import main
    from cryocloud.store import write_particles_csv, write_tomogram

    csv = tmp_path / "particles.csv"
    write_particles_csv(ts037.subset(slice(0, 12)), str(csv))
    tomo = Tomogram.from_array(np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8), pixel_size=13.481)
    write_tomogram(tomo, str(tmp_path / "tomogram.zarr"))
    out = tmp_path / "overlay"
    args = ["portal", "copick", str(out), "--run", "portal://10001/TS_037", "--picks", str(csv), "--object", "ribosome",
            "--radius", "130", "--tomogram", str(tmp_path / "tomogram.zarr"), "--tomo-type", "wbp", "--session", "2"]
    assert main(args) == 0
    assert "12 picks ->" in capsys.readouterr().out
    picks = from_copick((out / "ExperimentRuns/TS_037/Picks/cryocloud_2_ribosome.json").read_text())
    np.testing.assert_allclose(picks.positions, ts037.positions[:12])
    np.testing.assert_array_equal(read_tomogram(str(out / "ExperimentRuns/TS_037/VoxelSpacing13.481/wbp.zarr")).data.values, tomo.data.values)
    config = json.loads((out / "copick_config.json").read_text())
    assert config["dataset_ids"] == [10001] and config["pickable_objects"][0]["radius"] == 130.0
    assert main(args) == 2  # exists: never overwritten without --overwrite
    assert "exists" in capsys.readouterr().err
    assert main(["portal", "copick", "s3://cryoet-data-portal-public/10001", "--run", "portal://10001/TS_037"]) == 2
    assert "read-only" in capsys.readouterr().err
    assert main(["portal", "copick", str(tmp_path / "o2"), "--run", "portal://abc/TS_037"]) == 2
    assert "dataset id must be a number" in capsys.readouterr().err and not (tmp_path / "o2").exists()
