"""Portal files beside the images: Alignments/ (alignment_metadata.json, .xf/.tlt/.xtilt), Frames/ (the real
EMPIAR-10164 TS_01 mdoc), annotations written in the portal layout and read back through it, and
the HTTPS mirror (a loopback http.server serving a portal-layout tree)."""

from __future__ import annotations

import functools
import http.server
import json
import threading

import numpy as np
import pytest
from conftest import REAL_DATA
from portal_layout import create_portal_bucket, output_bucket, put, put_alignment, tiltseries_metadata, write_portal_zarr

from cryocloud.errors import StoreError
from cryocloud.model import Particles, TiltSeries
from cryocloud.store import parse_mdoc, read_xf
from cryocloud.store.portal import PORTAL_BUCKET, portal_run, read_annotation_mask, read_annotation_points, resolve_portal
from cryocloud.store.portal.alignments import portal_run_alignments, read_portal_alignment, read_portal_mdoc
from cryocloud.store.portal.annotations import write_portal_annotation
from cryocloud.store.portal.https import tilt_series_coordinates_https
from cryocloud.store.tiltfiles import alignments_from_xf

pytestmark = pytest.mark.slow  # a real S3 endpoint (moto server) and the CLI

DS, RUN = "10001", "TS_01"
ANGLES = np.array([-6.0, -3.0, 0.0, 3.0, 6.0])
AXIS = np.array([84.5, 84.6, 84.7, 84.8, 84.9])
SHIFTS = np.array([[1.5, -2.0], [0.5, 0.25], [0.0, 0.0], [-1.0, 3.0], [2.5, -0.75]])  # pixels
MDOC = REAL_DATA / "tiltstack_ts01_mdoc" / "TS_01.mrc.mdoc"


@pytest.fixture(scope="module")
def bucket(s3_endpoint):
    """A portal bucket with two alignments of one run (JSON + IMOD files; IMOD files only) and its Frames/ mdoc."""
    opts = create_portal_bucket(s3_endpoint)
    run = f"{PORTAL_BUCKET}/{DS}/{RUN}"
    put_alignment(opts, f"{run}/Alignments/15", RUN, AXIS, SHIFTS, ANGLES + 0.4)
    put_alignment(opts, f"{run}/Alignments/16", RUN, AXIS - 1.0, -SHIFTS, ANGLES - 0.2, sections=False, x_tilt=1.5)
    put(opts, f"{run}/Frames/{RUN}.mrc.mdoc", MDOC.read_text())
    put(opts, f"{run}/TiltSeries/1/tiltseries_metadata.json", {"pixel_spacing": 5.0, "omezarr_dir": f"{DS}/{RUN}/TiltSeries/1/{RUN}.zarr"})
    # a membrane segmentation mask annotation (OME-Zarr uint8, with an MRC sibling listed too)
    ann = f"{DS}/{RUN}/Reconstructions/VoxelSpacing13.480/Annotations/7"
    mask = np.zeros((8, 16, 16), np.uint8)
    mask[3:5, 2:14, 4:12] = 1
    write_portal_zarr(opts, f"{PORTAL_BUCKET}/{ann}/membrane-1.0_segmentationmask.zarr", mask, 13.48, (0, 1, 2), (256, 256, 256))
    put(opts, f"{PORTAL_BUCKET}/{ann}/membrane-1.0.json", {
        "annotation_object": {"id": "GO:0016020", "name": "membrane"}, "version": "1.0",
        "files": [{"format": "mrc", "shape": "SegmentationMask", "path": f"{ann}/membrane-1.0_segmentationmask.mrc"},
                  {"format": "zarr", "shape": "SegmentationMask", "path": f"{ann}/membrane-1.0_segmentationmask.zarr"}]})
    return opts


def test_alignment_from_sections_and_from_imod_files(bucket):
    listed = portal_run(DS, RUN, storage_options=bucket)
    assert listed.alignments == [f"s3://{PORTAL_BUCKET}/{DS}/{RUN}/Alignments/{i}/alignment_metadata.json" for i in (15, 16)]
    first, second = portal_run_alignments(DS, RUN, storage_options=bucket)
    assert (first.source, first.alignment_type, second.source) == ("json", "GLOBAL", "xf")
    np.testing.assert_allclose(first.tilt_axis_angles, AXIS, atol=1e-9)
    np.testing.assert_allclose(first.shifts_px, SHIFTS, atol=1e-9)
    np.testing.assert_allclose(first.tilt_angles, ANGLES + 0.4)
    assert first.volume_offset_a == (0.0, 0.0, 12.5) and first.included.all()
    # the .xf beside the JSON says the same in IMOD's raw -> aligned form (written to 7 and 3 decimals)
    axis, shifts = alignments_from_xf(read_xf(f"s3://{PORTAL_BUCKET}/{DS}/{RUN}/Alignments/15/{RUN}.xf", storage_options=bucket))
    np.testing.assert_allclose(axis, first.tilt_axis_angles, atol=1e-4)
    np.testing.assert_allclose(shifts, first.shifts_px, atol=2e-3)
    # no per-section parameters: the IMOD files give axis, shifts, refined angles and the x-tilt
    np.testing.assert_allclose(second.tilt_axis_angles, AXIS - 1.0, atol=1e-4)
    np.testing.assert_allclose(second.shifts_px, -SHIFTS, atol=2e-3)
    np.testing.assert_allclose(second.tilt_angles, ANGLES - 0.2)
    np.testing.assert_allclose(second.x_tilt, 1.5)


def test_portal_ls_lists_alignments(bucket, capsys):
    from cryocloud.cli import main

    assert main(["portal", "ls", DS, "--run", RUN, "--endpoint-url", bucket["endpoint_url"]]) == 0
    out = capsys.readouterr().out
    assert f"alignment 15: s3://{PORTAL_BUCKET}/{DS}/{RUN}/Alignments/15/alignment_metadata.json" in out and "alignment 16:" in out


def test_alignment_applied_to_a_tilt_series(bucket):
    ts = TiltSeries.from_array(np.zeros((5, 8, 8), np.float32), pixel_size=5.0, tilt_angles=ANGLES)
    alignment = read_portal_alignment(f"s3://{PORTAL_BUCKET}/{DS}/{RUN}/Alignments/15/alignment_metadata.json", storage_options=bucket)
    aligned = alignment.apply(ts, pixel_size_a=5.0)
    np.testing.assert_allclose(aligned.per_tilt("shift_x"), SHIFTS[:, 0] * 5.0, atol=1e-9)  # A
    np.testing.assert_allclose(aligned.per_tilt("shift_y"), SHIFTS[:, 1] * 5.0, atol=1e-9)
    binned = TiltSeries.from_array(np.zeros((5, 4, 4), np.float32), pixel_size=10.0, tilt_angles=ANGLES)  # level 1 of the same series
    np.testing.assert_allclose(alignment.apply(binned, pixel_size_a=5.0).per_tilt("shift_x"), SHIFTS[:, 0] * 5.0, atol=1e-9)
    np.testing.assert_allclose(aligned.tilt_angles, ANGLES + 0.4)
    assert aligned.tilt_axis_angle == pytest.approx(84.7)
    with pytest.raises(StoreError, match="5 sections for a tilt series of 3 images"):
        alignment.apply(ts.select_tilts(slice(0, 3)), pixel_size_a=5.0)
    # a tilt series with two more images than the alignment has sections (excluded, e.g. dark): dropped on request
    longer = TiltSeries.from_array(np.zeros((7, 8, 8), np.float32), pixel_size=5.0, tilt_angles=np.r_[ANGLES, 9.0, 12.0])
    with pytest.raises(StoreError, match=r"excludes sections \[5, 6\]"):
        alignment.apply(longer, pixel_size_a=5.0)
    kept = alignment.apply(longer, pixel_size_a=5.0, drop_excluded=True)
    assert kept.n_tilts == 5
    np.testing.assert_allclose(kept.per_tilt("shift_y"), SHIFTS[:, 1] * 5.0, atol=1e-9)


def test_bad_alignments(bucket):
    folder = f"{PORTAL_BUCKET}/{DS}/BAD/Alignments/1"
    put(bucket, f"{folder}/alignment_metadata.json", {"per_section_alignment_parameters": [
        {"z_index": 0, "tilt_angle": 0.0, "in_plane_rotation": [[1.0, 0.5], [0.0, 1.0]], "x_offset": 0, "y_offset": 0}]})
    with pytest.raises(StoreError, match=r"per_section_alignment_parameters\[0\].in_plane_rotation.*rotation"):
        read_portal_alignment(f"s3://{folder}/alignment_metadata.json", storage_options=bucket)
    put(bucket, f"{folder}/alignment_metadata.json", {"per_section_alignment_parameters": [{"z_index": "a"}]})
    with pytest.raises(StoreError, match="z_index"):
        read_portal_alignment(f"s3://{folder}/alignment_metadata.json", storage_options=bucket)
    put(bucket, f"{folder}/alignment_metadata.json", {"alignment_type": "GLOBAL"})
    with pytest.raises(StoreError, match="no .xf file"):
        read_portal_alignment(f"s3://{folder}/alignment_metadata.json", storage_options=bucket)


def test_segmentation_mask_annotation(bucket):
    (ann,) = portal_run(DS, RUN, storage_options=bucket).annotations
    mask = read_annotation_mask(ann, storage_options=bucket)
    assert mask.pixel_size == pytest.approx(13.48) and mask.data.dtype == np.uint8
    assert int(mask.data.sum()) == 2 * 12 * 8 and mask.data.values[3, 2, 4] == 1 and mask.data.values[5, 2, 4] == 0
    with pytest.raises(StoreError, match="has no ndjson point file .*zarr SegmentationMask"):
        read_annotation_points(ann, storage_options=bucket)


def test_images_resolve_without_reading_other_metadata(bucket):
    run = f"{PORTAL_BUCKET}/{DS}/MIXED"
    put(bucket, f"{run}/TiltSeries/4/tiltseries_metadata.json", {"pixel_spacing": 7.5, "omezarr_dir": f"{DS}/MIXED/TiltSeries/4/MIXED.zarr"})
    put(bucket, f"{run}/Reconstructions/VoxelSpacing7.500/Annotations/2/broken-1.0.json", "{not json")
    found = resolve_portal(f"portal://{DS}/MIXED/tiltseries", "tilt_series", storage_options=bucket)  # annotations not read
    assert (found.ident, found.voxel_spacing, found.url) == ("4", 7.5, f"s3://{run}/TiltSeries/4/MIXED.zarr")
    with pytest.raises(StoreError, match=r"broken-1.0.json: is not valid JSON"):
        portal_run(DS, "MIXED", storage_options=bucket)


def test_frames_mdoc_is_the_real_one(bucket):
    mdoc = read_portal_mdoc(DS, RUN, storage_options=bucket)
    local = parse_mdoc(MDOC.read_text(), source=str(MDOC))
    assert mdoc.n_tilts == local.n_tilts == 41
    np.testing.assert_array_equal(mdoc.tilt_angle, local.tilt_angle)
    assert mdoc.tilt_angle.min() == pytest.approx(-60.0, abs=0.1) and mdoc.tilt_angle.max() == pytest.approx(60.0, abs=0.1)
    np.testing.assert_array_equal(np.sort(mdoc.acquisition_order), np.arange(41))
    with pytest.raises(StoreError, match="no .mdoc in its Frames folder"):
        read_portal_mdoc(DS, "NOPE", storage_options=bucket)


def test_annotation_written_in_portal_layout_reads_back_through_it(bucket, s3_endpoint):
    out = output_bucket(s3_endpoint)
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(6, 3, 3)))
    q *= np.sign(np.linalg.det(q))[:, None, None]
    picks = Particles.create(rng.uniform(0, 900, size=(6, 3)), q, rng.uniform(size=6))
    folder = f"{out}/{DS}/{RUN}/Reconstructions/VoxelSpacing10.012/Annotations/1"
    write_portal_annotation(picks, folder, object_name="ribosome", voxel_spacing=10.012, storage_options=bucket)
    private = {**bucket, "anon": False}  # the user's own bucket: credentials, not anonymous
    (ann,) = portal_run(DS, RUN, storage_options=private, bucket=out[5:]).annotations
    assert (ann.object_name, ann.voxel_spacing) == ("ribosome", pytest.approx(10.012))
    back = read_annotation_points(ann, storage_options=private)
    np.testing.assert_allclose(back.positions, picks.positions, rtol=1e-12)
    np.testing.assert_allclose(back.rotations, q, atol=1e-12)


@pytest.fixture
def https_mirror(tmp_path):
    """A loopback HTTP server serving a portal-layout tree (the mirror's role); yields (base URL, tree)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    finally:
        server.shutdown()
        server.server_close()


def test_tilt_angles_over_the_https_mirror(https_mirror):
    base, tree = https_mirror
    folder = tree / DS / RUN / "TiltSeries" / "3"
    folder.mkdir(parents=True)
    order, du = [4, 2, 0, 1, 3], [31000.0, 30500.0, 30000.0, 30200.0, 30800.0]
    meta = tiltseries_metadata(f"{DS}/{RUN}/TiltSeries/3", RUN, 5.0, ANGLES - 1.0, order, du, np.array(du) - 400, [30.0] * 5,
                               axis=84.7, flux=100.0, shape=(5, 64, 64))
    (folder / "tiltseries_metadata.json").write_text(json.dumps(meta))
    coords = tilt_series_coordinates_https(DS, RUN, "3", base=base)
    np.testing.assert_allclose(coords["tilt_angle"], ANGLES - 1.0)  # raw_angle: no .rawtlt there
    (folder / f"{RUN}.rawtlt").write_text("".join(f"{a:.2f}\n" for a in ANGLES))
    coords = tilt_series_coordinates_https(DS, RUN, "3", base=base)
    np.testing.assert_allclose(coords["tilt_angle"], ANGLES)  # the .rawtlt wins, as over S3
    np.testing.assert_array_equal(coords["acquisition_order"], order)
    np.testing.assert_allclose(coords["defocus_u"], du)
    np.testing.assert_allclose(coords["exposure"], 20.0)
    with pytest.raises(StoreError, match="does not exist on the HTTPS mirror"):
        tilt_series_coordinates_https(DS, RUN, "99", base=base)
    (folder / "tiltseries_metadata.json").write_text(json.dumps({**meta, "size": None}))
    with pytest.raises(StoreError, match="size"):
        tilt_series_coordinates_https(DS, RUN, "3", base=base)
