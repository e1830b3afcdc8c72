"""CryoET Data Portal in place: a portal-layout bucket on the moto S3 server, read through portal://.

The fixture bucket follows the documented layout (chanzuckerberg/cryoet-data-portal-backend
schema/README.md and test_infra/test_files/30001): zarr format 2, NGFF 0.4, levels "0", "1", "2"
mean-pooled by 2 with scale transforms only, Blosc lz4, "/" chunk separators, no consolidated
metadata; tomogram_metadata.json / tiltseries_metadata.json / annotation JSON with the portal
field names; a .rawtlt; one run in the older layout (Tomograms/VoxelSpacing*/CanonicalTomogram).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import dask
import numpy as np
import pytest
from portal_layout import annotation, create_portal_bucket, put, write_portal_zarr

from cryocloud.cli import main
from cryocloud.errors import ModelError, StoreError
from cryocloud.model import Particles
from cryocloud.pick.formats import from_ndjson, to_ndjson
from cryocloud.store import read_tilt_series, read_tomogram
from cryocloud.store.portal import (
    PORTAL_BUCKET, is_portal_url, list_runs, names_tomogram, parse_portal_url, portal_run, read_annotation_points, read_portal_tilt_series,
    read_portal_tomogram,
)

pytestmark = pytest.mark.slow  # a real S3 endpoint (moto server) and the CLI

DS, RUN, OLD_RUN = "10001", "TS_01", "TS_02"
VS, OLD_VS, TS_PX = 10.012, 13.48, 5.006
TS_ANGLES = np.array([-6.0, -3.0, 0.0, 3.0, 6.0])  # image order (z_index 0..4), as in the .rawtlt
TS_FRAME_ORDER = [4, 2, 0, 1, 3]  # acquisition order: 0, 3, -3, 6, -6 (dose symmetric)
TS_DEFOCUS = [31000.0, 30500.0, 30000.0, 30200.0, 30800.0]  # A


@pytest.fixture(scope="module")
def portal(s3_endpoint):
    """Portal-layout bucket named like the real one, on a freshly reset moto endpoint, built once for the
    module (the tests only read it); yields (options, ground truth)."""
    opts = create_portal_bucket(s3_endpoint)
    rng = np.random.default_rng(7)
    truth = {}
    run = f"{PORTAL_BUCKET}/{DS}/{RUN}"
    tomo_dir = f"{DS}/{RUN}/Reconstructions/VoxelSpacing{VS:.3f}/Tomograms/501"
    truth["tomo"] = write_portal_zarr(opts, f"{PORTAL_BUCKET}/{tomo_dir}/{RUN}.zarr", rng.normal(size=(24, 32, 40)).astype(np.float32), VS, (0, 1, 2), (16, 16, 16))
    put(opts, f"{PORTAL_BUCKET}/{tomo_dir}/tomogram_metadata.json", {
        "voxel_spacing": VS, "reconstruction_method": "WBP", "is_visualization_default": True, "run_name": RUN,
        "size": {"z": 24, "y": 32, "x": 40}, "omezarr_dir": f"{tomo_dir}/{RUN}.zarr", "mrc_file": f"{tomo_dir}/{RUN}.mrc",
    })
    ts_dir = f"{DS}/{RUN}/TiltSeries/77"
    truth["ts"] = write_portal_zarr(opts, f"{PORTAL_BUCKET}/{ts_dir}/{RUN}.zarr", rng.normal(size=(5, 32, 32)).astype(np.float32), TS_PX, (1, 2), (1, 1024, 1024))
    sections = [
        {"z_index": z, "raw_angle": float(TS_ANGLES[z]), "frame_acquisition_order": TS_FRAME_ORDER[z],
         "major_defocus": TS_DEFOCUS[z], "minor_defocus": TS_DEFOCUS[z] - 400.0, "astigmatic_angle": 30.0 + z}
        for z in (3, 0, 4, 1, 2)  # listed out of order: matched by z_index
    ]
    put(opts, f"{PORTAL_BUCKET}/{ts_dir}/tiltseries_metadata.json", {
        "pixel_spacing": TS_PX, "acceleration_voltage": 300000, "spherical_aberration_constant": 2.7, "tilt_axis": 84.7,
        "is_aligned": False, "total_flux": 100.0, "omezarr_dir": f"{ts_dir}/{RUN}.zarr", "per_section_parameter": sections,
        "size": {"z": 5, "y": 32, "x": 32},
    })
    put(opts, f"{PORTAL_BUCKET}/{ts_dir}/{RUN}.rawtlt", "".join(f"{a:.2f}\n" for a in TS_ANGLES))
    ann_dir = f"{PORTAL_BUCKET}/{DS}/{RUN}/Reconstructions/VoxelSpacing{VS:.3f}/Annotations/9"
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    points = [{"type": "orientedPoint", "location": {"x": 4.0, "y": 5.5, "z": 6.0}, "xyz_rotation_matrix": rot.tolist()},
              {"type": "orientedPoint", "location": {"x": 10.0, "y": 2.0, "z": 1.0}, "xyz_rotation_matrix": np.eye(3).tolist()}]
    annotation(opts, ann_dir, "ribosome", points, "OrientedPoint")
    truth["rot"] = rot
    old_dir = f"{DS}/{OLD_RUN}/Tomograms/VoxelSpacing{OLD_VS:.3f}/CanonicalTomogram"
    truth["old"] = write_portal_zarr(opts, f"{PORTAL_BUCKET}/{old_dir}/{OLD_RUN}.zarr", rng.normal(size=(8, 16, 16)).astype(np.float32), OLD_VS, (0, 1, 2), (256, 256, 256))
    put(opts, f"{PORTAL_BUCKET}/{old_dir}/tomogram_metadata.json", {
        "voxel_spacing": OLD_VS, "reconstruction_method": "SART", "size": {"z": 8, "y": 16, "x": 16}, "omezarr_dir": f"{old_dir}/{OLD_RUN}.zarr",
    })
    flat = f"{DS}/{OLD_RUN}/Tomograms/VoxelSpacing{OLD_VS:.3f}/Annotations"  # older layout: flat annotation files
    records = [{"type": "point", "location": {"x": 1.0, "y": 2.0, "z": 3.0}},
               {"type": "instancePoint", "location": {"x": 7.0, "y": 8.0, "z": 0.5}, "instance_id": 2}]
    put(opts, f"{PORTAL_BUCKET}/{flat}/100-actin-1.0_point.ndjson", "".join(json.dumps(r) + "\n" for r in records))
    put(opts, f"{PORTAL_BUCKET}/{flat}/100-actin-1.0.json", {
        "annotation_object": {"name": "actin"}, "version": "1.0",
        "files": [{"format": "ndjson", "shape": "Point", "path": f"{flat}/100-actin-1.0_point.ndjson"}],
    })
    assert run  # the bucket is filled
    return opts, truth


def test_parse_addresses():
    ref = parse_portal_url("portal://10445/TS_100_3/vs/10.012/tomogram/1234")
    assert (ref.dataset, ref.run, ref.kind, ref.voxel_spacing, ref.ident) == ("10445", "TS_100_3", "tomogram", 10.012, "1234")
    ref = parse_portal_url(f"s3://{PORTAL_BUCKET}/10445/TS_1/Reconstructions/VoxelSpacing10.012/Tomograms/77/tomogram_metadata.json")
    assert (ref.kind, ref.voxel_spacing, ref.ident) == ("tomogram", 10.012, "77")
    ref = parse_portal_url(f"s3://{PORTAL_BUCKET}/10445/TS_1/Tomograms/VoxelSpacing13.480/CanonicalTomogram/TS_1.zarr")
    assert ref.image_key == f"{PORTAL_BUCKET}/10445/TS_1/Tomograms/VoxelSpacing13.480/CanonicalTomogram/TS_1.zarr"
    assert is_portal_url("portal://1/2") and not is_portal_url("s3://other/1/2")
    tomograms = ("portal://1/TS/tomogram/3", "portal://1/TS/vs/10.0", f"s3://{PORTAL_BUCKET}/1/TS/Reconstructions/VoxelSpacing10.000/Tomograms/3/TS.zarr",
                 f"s3://{PORTAL_BUCKET}/1/TS/Tomograms/VoxelSpacing13.480/CanonicalTomogram/TS.zarr")
    others = ("portal://1/TS", "portal://1/TS/tiltseries/2", f"s3://{PORTAL_BUCKET}/1/TS/TiltSeries/2/TS.zarr", f"s3://{PORTAL_BUCKET}/1/TS")
    assert all(names_tomogram(u) for u in tomograms) and not any(names_tomogram(u) for u in others)
    for bad in ("portal://10445", "portal://10445/TS/vs/abc", "portal://10445/TS/volume/3", f"s3://{PORTAL_BUCKET}/10445/TS/Frames"):
        with pytest.raises(StoreError, match="url"):
            parse_portal_url(bad)


def test_read_tomogram_levels_and_centres(portal):
    opts, truth = portal
    tomo = read_portal_tomogram(f"portal://{DS}/{RUN}", storage_options=opts)
    assert tomo.pixel_size == pytest.approx(VS)
    # the run's tilt series gives the tomogram its wedge (angles), microscope and mean defocus (A)
    np.testing.assert_allclose(tomo.tilt_angles, TS_ANGLES)
    assert tomo.microscope.voltage_kv == pytest.approx(300.0)
    assert tomo.data.attrs["defocus_a"] == pytest.approx(np.mean(TS_DEFOCUS) - 200.0)
    np.testing.assert_array_equal(tomo.data.values, truth["tomo"][0])
    level2 = read_portal_tomogram(f"portal://{DS}/{RUN}/vs/{VS}/tomogram/501", level=2, storage_options=opts)
    np.testing.assert_array_equal(level2.data.values, truth["tomo"][2])
    assert level2.pixel_size == pytest.approx(4 * VS)
    # level-2 voxel j averages level-0 voxels 4j..4j+3: centre (4j + 1.5) * VS
    np.testing.assert_allclose(level2.data.x.values, (4 * np.arange(10) + 1.5) * VS)
    # the same voxel through a plain s3 key, and the older layout
    direct = read_portal_tomogram(f"s3://{PORTAL_BUCKET}/{DS}/{RUN}/Reconstructions/VoxelSpacing{VS:.3f}/Tomograms/501", storage_options=opts)
    np.testing.assert_array_equal(direct.data.values, truth["tomo"][0])
    old = read_portal_tomogram(f"portal://{DS}/{OLD_RUN}", level=1, storage_options=opts)
    np.testing.assert_array_equal(old.data.values, truth["old"][1])
    assert old.tilt_angles is None and "defocus_a" not in old.data.attrs  # a run without a tilt series
    assert old.pixel_size == pytest.approx(2 * OLD_VS)


def test_read_tilt_series_coordinates(portal):
    opts, truth = portal
    ts = read_portal_tilt_series(f"portal://{DS}/{RUN}/tiltseries", storage_options=opts)
    np.testing.assert_array_equal(ts.data.values, truth["ts"][0])
    np.testing.assert_allclose(ts.tilt_angles, TS_ANGLES)
    np.testing.assert_array_equal(ts.data.acquisition_order.values, TS_FRAME_ORDER)
    np.testing.assert_allclose(ts.data.exposure.values, 20.0)
    np.testing.assert_allclose(ts.data.pre_exposure.values, [80.0, 40.0, 0.0, 20.0, 60.0])
    np.testing.assert_allclose(ts.data.defocus_u.values, TS_DEFOCUS)
    np.testing.assert_allclose(ts.data.defocus_v.values, np.array(TS_DEFOCUS) - 400.0)
    np.testing.assert_allclose(ts.data.astigmatism_angle.values, 30.0 + np.arange(5))
    assert ts.pixel_size == pytest.approx(TS_PX) and ts.tilt_axis_angle == pytest.approx(84.7)
    assert ts.microscope.voltage_kv == pytest.approx(300.0)
    binned = read_portal_tilt_series(f"portal://{DS}/{RUN}/tiltseries/77", level=1, storage_options=opts)
    assert binned.data.shape == (5, 16, 16)  # never binned along the tilt axis
    np.testing.assert_array_equal(binned.data.values, truth["ts"][1])
    np.testing.assert_allclose(binned.data.y.values[:2], [0.5 * TS_PX, 2.5 * TS_PX])


def test_run_listing_and_annotation_points(portal):
    opts, truth = portal
    assert list_runs(DS, storage_options=opts) == [RUN, OLD_RUN]
    run = portal_run(DS, RUN, storage_options=opts)
    assert [(t.ident, t.voxel_spacing, t.size_zyx) for t in run.tomograms] == [("501", VS, (24, 32, 40))]
    assert [t.ident for t in run.tilt_series] == ["77"]
    (ann,) = run.annotations
    assert (ann.object_name, ann.version, ann.voxel_spacing) == ("ribosome", "1.0", pytest.approx(VS))
    particles = read_annotation_points(ann, storage_options=opts, tomogram=RUN)
    np.testing.assert_allclose(particles.positions, np.array([[4.0, 5.5, 6.0], [10.0, 2.0, 1.0]]) * VS)
    np.testing.assert_allclose(particles.rotations[0], truth["rot"])
    assert list(particles.class_name) == ["ribosome", "ribosome"] and list(particles.tomogram) == [RUN, RUN]


def test_portal_ls_cli(portal, capsys):
    opts, _ = portal
    assert main(["portal", "ls", DS, "--endpoint-url", opts["endpoint_url"]]) == 0
    out = capsys.readouterr().out
    assert f"portal://{DS}/{RUN}" in out and f"portal://{DS}/{OLD_RUN}" in out
    assert "tomogram 501: 10.012 A, 24x32x40 (z, y, x), WBP" in out
    assert "tomogram canonical: 13.480 A, 8x16x16 (z, y, x), SART" in out
    assert "annotation ribosome v1.0 at 10.012 A: OrientedPoint" in out
    assert main(["portal", "ls", DS, "--run", RUN, "--json", "--endpoint-url", opts["endpoint_url"]]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["runs"][0]["tilt_series"][0]["pixel_size"] == pytest.approx(TS_PX)


def test_bad_portal_locations(portal, capsys):
    opts, _ = portal
    with pytest.raises(StoreError, match="run 'NOPE' of dataset"):
        read_portal_tomogram(f"portal://{DS}/NOPE", storage_options=opts)
    with pytest.raises(StoreError, match=r"no tomogram matches .*the run has: 501 \(10.012 A\)"):
        read_portal_tomogram(f"portal://{DS}/{RUN}/vs/7.5", storage_options=opts)
    with pytest.raises(StoreError, match="names a tilt series, expected a tomogram"):
        read_portal_tomogram(f"portal://{DS}/{RUN}/tiltseries", storage_options=opts)
    assert main(["portal", "ls", "99999", "--endpoint-url", opts["endpoint_url"]]) == 2
    assert "dataset '99999'" in capsys.readouterr().err


def test_store_readers_client_objects_and_endpoint_config(portal, monkeypatch):
    opts, truth = portal
    # the generic store readers (used by every stage) take portal addresses
    np.testing.assert_array_equal(read_tomogram(f"portal://{DS}/{RUN}", level=1, storage_options=opts).data.values, truth["tomo"][1])
    ts_key = f"s3://{PORTAL_BUCKET}/{DS}/{RUN}/TiltSeries/77/{RUN}.zarr"
    ts = read_tilt_series(ts_key, storage_options=opts)  # a bare .zarr key: metadata found next to it
    np.testing.assert_allclose(ts.tilt_angles, TS_ANGLES)
    # objects of the cryoet_data_portal client, duck-typed on their s3_* attributes
    client_ts = SimpleNamespace(s3_omezarr_dir=ts_key, s3_mrc_file=ts_key[:-5] + ".mrc")
    np.testing.assert_array_equal(read_portal_tilt_series(client_ts, storage_options=opts).data.acquisition_order.values, TS_FRAME_ORDER)
    client_run = SimpleNamespace(s3_prefix=f"s3://{PORTAL_BUCKET}/{DS}/{OLD_RUN}/")
    np.testing.assert_array_equal(read_tomogram(client_run, storage_options=opts).data.values, truth["old"][0])
    # endpoint from the config, then from the AWS SDK variable
    with dask.config.set({"cryocloud.portal.endpoint_url": opts["endpoint_url"]}):
        assert read_portal_tomogram(f"portal://{DS}/{RUN}").data.shape == (24, 32, 40)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", opts["endpoint_url"])
    assert read_portal_tomogram(f"portal://{DS}/{OLD_RUN}").data.shape == (8, 16, 16)


def test_older_layout_points_and_ndjson_round_trip(portal):
    opts, _ = portal
    (ann,) = portal_run(DS, OLD_RUN, storage_options=opts).annotations
    assert (ann.object_name, ann.voxel_spacing) == ("actin", pytest.approx(OLD_VS))
    points = read_annotation_points(ann, storage_options=opts)
    np.testing.assert_allclose(points.positions, np.array([[1.0, 2.0, 3.0], [7.0, 8.0, 0.5]]) * OLD_VS)
    np.testing.assert_allclose(points.rotations, np.broadcast_to(np.eye(3), (2, 3, 3)))
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(4, 3, 3)))
    picks = Particles.create(rng.uniform(0, 500, size=(4, 3)), q, rng.uniform(size=4))
    back = from_ndjson(to_ndjson(picks, 10.0), 10.0)
    np.testing.assert_allclose(back.positions, picks.positions)
    np.testing.assert_allclose(back.rotations, picks.rotations)
    np.testing.assert_allclose(back.scores, picks.scores)
    with pytest.raises(ModelError, match="line 2.*'type'"):
        from_ndjson('{"type": "point", "location": {"x": 1, "y": 2, "z": 3}}\n{"type": "mesh"}\n', 10.0)
    with pytest.raises(ModelError, match="line 1.*location"):
        from_ndjson('{"type": "point", "location": {"x": 1}}\n', 10.0)


def test_portal_info_cli(portal, capsys):
    opts, _ = portal
    assert main(["portal", "info", f"portal://{DS}/{RUN}", "--endpoint-url", opts["endpoint_url"]]) == 0
    out = capsys.readouterr().out
    assert f"-> s3://{PORTAL_BUCKET}/{DS}/{RUN}/Reconstructions/VoxelSpacing{VS:.3f}/Tomograms/501/{RUN}.zarr" in out
    assert "tomogram 501, 10.012 A, dtype float32" in out
    assert "level 2   shape (6, 8, 10)" in out and "reconstruction_method" in out
    assert main(["portal", "info", f"portal://{DS}/{RUN}/tiltseries", "--json", "--endpoint-url", opts["endpoint_url"]]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["portal"]["kind"] == "tilt_series" and summary["portal"]["tilt_axis"] == 84.7
    assert summary["portal"]["tilt_angles"] == TS_ANGLES.tolist() and summary["portal"]["acquisition_order"] == TS_FRAME_ORDER
    assert [lv["shape"] for lv in summary["levels"]] == [[5, 32, 32], [5, 16, 16], [5, 8, 8]]
    assert main(["portal", "info", f"portal://{DS}/{RUN}/vs/3.0", "--endpoint-url", opts["endpoint_url"]]) == 2
    assert "no tomogram matches" in capsys.readouterr().err
    assert main(["info", f"portal://{DS}/{RUN}/tiltseries", "--json", "--endpoint-url", opts["endpoint_url"]]) == 0
    assert json.loads(capsys.readouterr().out) == summary  # `cryocloud info` takes portal addresses too
