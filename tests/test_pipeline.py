"""The pipeline on simulated data: stages persist, resume, reject bad configs; local and S3 outputs."""

import json

import numpy as np
import pytest
import yaml

from cryocloud.cli import main
from cryocloud.errors import CryocloudError
from cryocloud.pipeline import PipelineConfig, load_config, run_pipeline
from cryocloud.store import open_url, read_tomogram

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end

TOY = {"simulate": {"preset": "toy", "overrides": {"n_particles": 2}}, "stages": ["simulate", "reconstruct"]}


def _write_config(tmp_path, **cfg):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_cli_simulates_reconstructs_and_resumes(tmp_path, capsys):
    out = tmp_path / "out"
    cfg = _write_config(tmp_path, output=str(out), **TOY)
    assert main(["run", str(cfg), "--workers", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["simulate"]["n_tilts"] == 21
    tomo = read_tomogram(str(out / "reconstruct" / "tomogram.zarr"))
    assert tomo.shape == (64, 64, 64)
    # proteins are dark in cryo-ET images: the tomogram anti-correlates with the potential
    assert summary["reconstruct"]["correlation_with_truth"] < -0.1
    assert (out / "reconstruct" / "slices.png").stat().st_size > 1000
    chunk_times = {p: p.stat().st_mtime_ns for p in (out / "reconstruct" / "tomogram.zarr" / "0").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["run", str(cfg), "--workers", "1"]) == 0  # resume: nothing recomputed
    assert {p: p.stat().st_mtime_ns for p in chunk_times} == chunk_times
    assert main(["run", str(cfg), "--workers", "1", "--from", "reconstruct"]) == 0
    assert any(p.stat().st_mtime_ns != t for p, t in chunk_times.items())


def test_unknown_key_and_bad_value_name_the_key(tmp_path, capsys):
    bad = _write_config(tmp_path, output="x", reconstruct={"binnig": 2})
    assert main(["run", str(bad)]) == 2
    assert "reconstruct.binnig" in capsys.readouterr().err
    bad = _write_config(tmp_path, reconstruct={"filter": "ramp"})
    with pytest.raises(CryocloudError, match="reconstruct.filter"):
        load_config(bad)
    with pytest.raises(CryocloudError, match="peaks.local_sigma"):
        load_config(_write_config(tmp_path, peaks={"local_sigma": "voxel"}))
    with pytest.raises(CryocloudError, match="stages.*unknown stage 'denoize'"):
        load_config(_write_config(tmp_path, stages=["denoize"]))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(CryocloudError, match="list.yaml: expected a mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(CryocloudError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_pipeline_aligns_misaligned_data_and_writes_to_s3(s3_bucket):
    sim = {"preset": "small", "overrides": {"shape_zyx": (48, 256, 256), "pixel_size_a": 10.0, "n_particles": 20,
                                            "tilt_axis_angle_deg": 85.0, "shift_sigma_a": 40.0}}
    cfg = PipelineConfig(output=f"{s3_bucket.url}/run1", storage_options=s3_bucket.storage_options, simulate=sim,
                         stages=["simulate", "ctf", "align", "reconstruct", "match", "peaks"])
    summary = run_pipeline(cfg)
    assert summary["align"]["axis_error_deg"] < 0.5 and summary["align"]["shift_rms_px"] < 1.0
    assert summary["reconstruct"]["correlation_with_truth"] < -0.1
    assert summary["peaks"]["f4"] >= 0.9  # picks scored against the simulated particles
    assert summary["peaks"]["fiducial_voxels"] > 0  # the 4 gold beads were found (read from S3) and kept out of the picks
    with open_url(f"{s3_bucket.url}/run1/summary.json", "r", storage_options=s3_bucket.storage_options) as fh:
        stored = json.load(fh)
    assert stored["reconstruct"]["shape_zyx"] == summary["reconstruct"]["shape_zyx"] == [48, 256, 256]
    with open_url(f"{s3_bucket.url}/run1/report.html", "r", storage_options=s3_bucket.storage_options) as fh:
        page = fh.read()
    assert page.count("src='data:image/png;base64,") == 7  # montage, CTF x2, residuals, tomogram slices, scores x2
    tomo = read_tomogram(f"{s3_bucket.url}/run1/reconstruct/tomogram.zarr", storage_options=s3_bucket.storage_options)
    assert np.isfinite(tomo.data[24].values).all()
