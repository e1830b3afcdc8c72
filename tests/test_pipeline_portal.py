"""`cryocloud run` on CryoET Data Portal data in place: a portal run in a portal-layout bucket on the moto
S3 server (the digital twin's raw tilt series published as TiltSeries/1, its particles as the portal's
ribosome annotation), processed into the user's own bucket, whose output is also a copick overlay over
the portal dataset (picks, tomograms, segmentation, copick config). The portal is only read.
"""

from __future__ import annotations

import json

import dask
import numpy as np
import pytest
import zarr
from portal_layout import output_bucket, portal_objects, publish_toy_run, s3_client

from cryocloud.cli import main
from cryocloud.errors import OutputExistsError, StoreError
from cryocloud.model import Tomogram
from cryocloud.pick.evaluate import f_beta
from cryocloud.pipeline import PipelineConfig, run_pipeline
from cryocloud.store import open_url, read_labels, read_particles_csv, read_tomogram, write_labels, write_tomogram
from cryocloud.store.portal import PORTAL_BUCKET, portal_run, read_annotation_points
from cryocloud.store.portal.copick import CopickOverlay, from_copick

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end

DS, RUN = "10001", "TS_01"
STAGES = dict(  # the smallest settings the stages have (as tests/test_pipeline_stages.py)
    align={"refine": "none", "estimate_axis": False},
    denoise={"tile": 32, "overlap": 8},
    segment={"low": 2.5, "high": 6.0},
    match={"angular_increment_deg": 45.0, "subvolume": 64},
    peaks={"n_false": None, "number": 8},
    report=False,
)


@pytest.fixture(scope="module")
def portal(s3_endpoint):
    """The portal bucket with one run published from the toy twin (`portal_layout.publish_toy_run`); yields
    (endpoint, the simulation) with the portal endpoint configured (Dask config `cryocloud.portal.endpoint_url`)."""
    import torch

    torch.set_num_threads(1)
    result = publish_toy_run(s3_endpoint, DS, RUN)
    with dask.config.set({"cryocloud.portal.endpoint_url": s3_endpoint}):  # where the pipeline finds "the portal"
        yield s3_endpoint, result


def test_pipeline_on_a_portal_run_writes_the_copick_overlay_into_the_output(portal, tmp_path):
    endpoint, result = portal
    truth = result.particles
    before = portal_objects(endpoint)
    out = tmp_path / "results"
    so = {"endpoint_url": endpoint}
    cfg = dict(input=f"portal://{DS}/{RUN}", output=str(out),
               stages=["align", "reconstruct", "denoise", "segment", "match", "peaks"], **STAGES)
    summary = run_pipeline(PipelineConfig(**cfg))
    assert summary["stages"][0] == "input" and summary["input"]["n_tilts"] == 21 and summary["input"]["pixel_size_a"] == 10.0
    run_dir = out / "ExperimentRuns" / RUN
    copick = summary["copick"]
    assert copick["config"] == str(out / "copick_config.json") and copick["overlay_root"] == str(out) and copick["run"] == RUN
    assert json.loads((out / "summary.json").read_text())["copick"] == copick  # summary.json says where the overlay is

    # copick config: the portal dataset as the static layer, the output as the overlay
    config = json.loads((out / "copick_config.json").read_text())
    assert config["config_type"] == "cryoet_data_portal" and config["dataset_ids"] == [int(DS)]
    assert config["overlay_root"] == f"local://{out}" and config["overlay_fs_args"] == {}
    objects = {o["name"]: o for o in config["pickable_objects"]}
    assert objects["ribosome"]["is_particle"] and objects["ribosome"]["radius"] > 0 and not objects["membrane"]["is_particle"]

    # picks: the peaks stage's picks, in Angstrom with their orientations, readable back with our reader
    assert copick["picks"] == str(run_dir / "Picks" / "cryocloud_0_ribosome.json")
    document = json.loads((run_dir / "Picks" / "cryocloud_0_ribosome.json").read_text())
    assert document["unit"] == "angstrom" and document["run_name"] == RUN and document["voxel_spacing"] == 10.0
    picks = from_copick(json.dumps(document))
    peaks = read_particles_csv(str(out / "peaks" / "particles.csv"))
    assert len(picks) == len(peaks) == copick["n_picks"] == 8
    np.testing.assert_allclose(picks.positions, peaks.positions, atol=1e-6)
    np.testing.assert_allclose(picks.rotations, peaks.rotations, atol=1e-9)
    assert not np.allclose(picks.rotations, np.eye(3))  # orientations carried, not identities
    # the picks lie where the portal's own annotation puts the ribosomes (same frame: voxel 0 at 0 A)
    annotation = portal_run(DS, RUN, storage_options=so).annotations[0]
    annotated = read_annotation_points(annotation, storage_options=so).positions
    np.testing.assert_allclose(annotated, truth.positions, atol=0.01)
    assert f_beta(picks.positions, annotated, tolerance=60.0)["recall"] >= 0.5

    # tomograms under VoxelSpacing, zarr format 2 / NGFF 0.4 (what copick reads), equal to the stage outputs
    assert copick["tomograms"] == {name: str(run_dir / "VoxelSpacing10.000" / f"{name}.zarr") for name in ("cryocloud-wbp", "cryocloud-deconv")}
    for name, stage in (("cryocloud-wbp", "reconstruct"), ("cryocloud-deconv", "denoise")):
        url = copick["tomograms"][name]
        group = zarr.open_group(url, mode="r")
        assert group.metadata.zarr_format == 2 and group.attrs["multiscales"][0]["version"] == "0.4"
        np.testing.assert_array_equal(read_tomogram(url).data.values, read_tomogram(str(out / stage / "tomogram.zarr")).data.values)
    # segmentation: the membrane labels
    url = copick["segmentations"]["membrane"]
    assert url == str(run_dir / "Segmentations" / "10.000_cryocloud_0_membrane.zarr")
    labels = read_tomogram(url).data.values
    assert labels.max() == summary["segment"]["n_membranes"]
    np.testing.assert_array_equal(labels, read_labels(str(out / "segment" / "membranes.zarr")).values)

    # resumed: no overlay image is copied again; --from denoise copies the denoised tomogram again, and a run
    # of fewer stages leaves the other results listed in the config
    images = {p: p.stat().st_mtime_ns for p in (run_dir / "VoxelSpacing10.000").rglob("*") if p.is_file()}
    assert run_pipeline(PipelineConfig(**cfg))["copick"] == copick
    assert {p: p.stat().st_mtime_ns for p in images} == images
    run_pipeline(PipelineConfig(**{**cfg, "stages": ["align", "reconstruct", "denoise"]}), rerun_from="denoise")
    changed = {p.relative_to(run_dir).parts[1] for p, t in images.items() if p.stat().st_mtime_ns != t}
    assert changed == {"cryocloud-deconv.zarr"}
    assert json.loads((out / "copick_config.json").read_text())["pickable_objects"] == config["pickable_objects"]

    assert portal_objects(endpoint) == before  # the portal was only read


def test_a_tilt_series_key_runs_into_the_users_bucket(portal, tmp_path, capsys):
    endpoint, _ = portal
    before = portal_objects(endpoint)
    out = f"{output_bucket(endpoint)}/results"
    so = {"endpoint_url": endpoint}
    key = f"s3://{PORTAL_BUCKET}/{DS}/{RUN}/TiltSeries/1/{RUN}.zarr"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"input": key, "output": out, "stages": ["reconstruct"], "storage_options": so, "reconstruct": {"binning": 2},
                               "cluster": {"processes": False, "n_workers": 1, "threads_per_worker": 2}}))
    assert main(["run", str(cfg)]) == 0
    assert f"copick overlay: {out}/copick_config.json" in capsys.readouterr().out  # the end-of-run summary, on stdout
    with open_url(f"{out}/summary.json", "r", storage_options=so) as fh:
        summary = json.load(fh)
    assert summary["input"]["url"] == key and "picks" not in summary["copick"]
    tomogram = f"{out}/ExperimentRuns/{RUN}/VoxelSpacing20.000/cryocloud-wbp.zarr"
    assert summary["copick"]["tomograms"] == {"cryocloud-wbp": tomogram}
    np.testing.assert_array_equal(read_tomogram(tomogram, storage_options=so).data.values,
                                  read_tomogram(f"{out}/reconstruct/tomogram.zarr", storage_options=so).data.values)
    with open_url(f"{out}/copick_config.json", "r", storage_options=so) as fh:
        config = json.load(fh)
    assert config["overlay_root"] == out and config["dataset_ids"] == [int(DS)] and config["pickable_objects"] == []
    assert config["overlay_fs_args"] == so
    with open_url(f"{out}/report.html", "r", storage_options=so) as fh:
        assert f"{out}/copick_config.json" in fh.read()  # the report says where the overlay is
    assert portal_objects(endpoint) == before


def test_the_outputs_storage_options_never_reach_the_portal(portal, tmp_path):
    endpoint, _ = portal
    dead = "http://127.0.0.1:9"  # nothing listens: a portal read sent there would fail
    summary = run_pipeline(PipelineConfig(input=f"portal://{DS}/{RUN}/tiltseries", output=str(tmp_path / "o"), stages=["reconstruct"],
                                          reconstruct={"binning": 2}, report=False, storage_options={"endpoint_url": dead}))
    assert summary["input"]["n_tilts"] == 21
    config = json.loads((tmp_path / "o" / "copick_config.json").read_text())
    assert config["overlay_fs_args"] == {}  # a local overlay needs no endpoint


def test_a_batch_of_portal_runs_shares_one_overlay(portal, tmp_path, capsys):
    endpoint, _ = portal
    s3 = s3_client(endpoint)
    for name in ("tiltseries_metadata.json", f"{RUN}.rawtlt"):  # a run of another dataset (its metadata name the same image)
        s3.copy_object(Bucket=PORTAL_BUCKET, Key=f"10002/TS_02/TiltSeries/1/{name}", ACL="public-read",
                       CopySource={"Bucket": PORTAL_BUCKET, "Key": f"{DS}/{RUN}/TiltSeries/1/{name}"})
    before = portal_objects(endpoint)
    out = tmp_path / "batch"
    cfg = tmp_path / "batch.yaml"
    cfg.write_text(json.dumps({"inputs": [f"portal://{DS}/{RUN}", "portal://10002/TS_02"], "output": str(out), "stages": ["reconstruct"],
                               "reconstruct": {"binning": 2}, "report": False, "cluster": {"processes": False, "n_workers": 1}}))
    assert main(["run", str(cfg)]) == 0
    assert f"copick overlay: {out}/copick_config.json" in capsys.readouterr().out  # the end-of-run summary, on stdout
    batch = json.loads((out / "batch_summary.json").read_text())
    assert batch["copick_config"] == str(out / "copick_config.json")
    config = json.loads((out / "copick_config.json").read_text())
    assert config["dataset_ids"] == [10001, 10002] and config["overlay_root"] == f"local://{out}"
    for run in (RUN, "TS_02"):  # stage outputs per series, the overlay shared at the output root
        assert batch["series"][run]["copick"]["overlay_root"] == str(out) and not (out / run / "copick_config.json").exists()
        np.testing.assert_array_equal(read_tomogram(str(out / "ExperimentRuns" / run / "VoxelSpacing20.000" / "cryocloud-wbp.zarr")).data.values,
                                      read_tomogram(str(out / run / "reconstruct" / "tomogram.zarr")).data.values)
    assert portal_objects(endpoint) == before


def test_copy_image_refuses_what_copick_cannot_read_and_existing_images(tmp_path):
    tomo = Tomogram.from_array(np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8), pixel_size=5.0)
    write_tomogram(tomo, str(tmp_path / "v04.zarr"))
    write_tomogram(tomo, str(tmp_path / "v05.zarr"), ngff_version="0.5")
    overlay = CopickOverlay(str(tmp_path / "overlay"))
    url = overlay.copy_tomogram(str(tmp_path / "v04.zarr"), RUN, 5.0, "wbp")
    np.testing.assert_array_equal(read_tomogram(url).data.values, tomo.data.values)
    labels = (np.arange(4 * 8 * 8).reshape(4, 8, 8) // 50).astype(np.uint16)  # labels 0..5
    write_labels(labels, str(tmp_path / "labels.zarr"), pixel_size=5.0)
    url = overlay.copy_segmentation(str(tmp_path / "labels.zarr"), RUN, 5.0, "membrane")
    assert url == str(tmp_path / "overlay" / "ExperimentRuns" / RUN / "Segmentations" / "5.000_cryocloud_0_membrane.zarr")
    np.testing.assert_array_equal(read_labels(url).values, labels)
    with pytest.raises(OutputExistsError, match="wbp.zarr"):
        overlay.copy_tomogram(str(tmp_path / "v04.zarr"), RUN, 5.0, "wbp")
    with pytest.raises(StoreError, match="zarr format 2") as err:
        overlay.copy_tomogram(str(tmp_path / "v05.zarr"), RUN, 5.0, "other")
    assert "v05.zarr" in str(err.value)


def test_portal_input_with_a_dataset_that_is_no_id_is_refused_before_any_stage(tmp_path):
    cfg = PipelineConfig(input="portal://my-data/TS_01", output=str(tmp_path / "o"), stages=["reconstruct"])
    with pytest.raises(StoreError, match="input.*dataset id must be a number"):
        run_pipeline(cfg)
    assert not (tmp_path / "o").exists()
