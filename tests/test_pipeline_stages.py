"""The later stages in the pipeline: denoise (CTF deconvolution), segment (membranes) and average,
persisted, resumable, in summary.json and the report."""

import json

import pytest

from cryocloud.cli import main
from cryocloud.errors import CryocloudError
from cryocloud.pipeline import PipelineConfig, run_pipeline
from cryocloud.store import read_labels, read_mrc, read_tomogram

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end

CONFIG = dict(
    simulate={"preset": "toy", "overrides": {"n_particles": 8, "seed": 1, "membranes": {"vesicles": 1, "vesicle_radius_a": [180.0, 220.0]}}},
    stages=["simulate", "align", "reconstruct", "denoise", "segment", "match", "peaks", "average"],
    align={"refine": "none", "estimate_axis": False},
    denoise={"defocus_a": 30000.0, "tile": 32, "overlap": 8},
    segment={"low": 2.5, "high": 6.0},  # a 64^3 toy at 10 A: a weaker membrane than the default run's 8 A vesicle
    match={"angular_increment_deg": 45.0, "subvolume": 64},
    peaks={"n_false": None, "number": 8},
    average={"box": 16, "iterations": 1, "max_shift_a": 40.0},
)


def test_denoise_segment_and_average_stages_persist_resume_and_report(tmp_path):
    out = tmp_path / "run"
    summary = run_pipeline(PipelineConfig(output=str(out), **CONFIG))
    assert summary["stages"] == CONFIG["stages"]
    # deconvolution brings the tomogram closer to the truth (proteins dark: more negative is better)
    assert summary["denoise"]["correlation_with_truth"] < summary["reconstruct"]["correlation_with_truth"] - 0.05
    denoised = read_tomogram(str(out / "denoise" / "tomogram.zarr"))
    assert denoised.shape == (64, 64, 64)
    # the vesicle is found where it is (accuracy itself is tested in the segment tests)
    assert summary["segment"]["source"] == "denoise" and summary["segment"]["n_membranes"] >= 1
    assert summary["segment"]["dice_resolvable"] > 0.15
    assert read_labels(str(out / "segment" / "membranes.zarr")).shape == (64, 64, 64)
    avg = summary["average"]
    assert avg["n_particles"] == 8 and avg["voxel_size_a"] == 20.0
    assert 40.0 <= avg["resolution_a"] < 400.0  # Nyquist of the 20 A level at best
    for name in ("half1", "half2", "average"):
        assert read_mrc(str(out / "average" / f"{name}.mrc")).shape == (16, 16, 16)
    page = (out / "report.html").read_text()
    for section in ("denoise", "segment", "average", "peaks"):
        assert f"<section id='{section}'>" in page
    assert page.count("src='data:image/png;base64,") == 10  # montage, residuals, slices, before/after, overlay, scores x2, average, FSC
    stored = json.loads((out / "summary.json").read_text())
    assert stored["denoise"]["figures"]["after deconv: central XY and XZ slices"] == "denoise/slices_after.png"

    denoise_chunks = {p: p.stat().st_mtime_ns for p in (out / "denoise" / "tomogram.zarr" / "0").rglob("*") if p.is_file()}
    average_time = (out / "average" / "average.json").stat().st_mtime_ns
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"output": str(out), **CONFIG}))  # JSON is YAML
    assert main(["run", str(cfg), "--workers", "1"]) == 0  # resume: nothing recomputed
    assert {p: p.stat().st_mtime_ns for p in denoise_chunks} == denoise_chunks
    assert (out / "average" / "average.json").stat().st_mtime_ns == average_time
    assert main(["run", str(cfg), "--workers", "1", "--from", "average"]) == 0
    assert (out / "average" / "average.json").stat().st_mtime_ns != average_time
    assert {p: p.stat().st_mtime_ns for p in denoise_chunks} == denoise_chunks  # stages before --from kept


def test_denoise_without_a_known_defocus_names_the_key(tmp_path):
    cfg = PipelineConfig(output=str(tmp_path / "o"), **{**CONFIG, "stages": ["simulate", "reconstruct", "denoise"], "denoise": {"tile": 32}})
    with pytest.raises(CryocloudError, match="denoise.defocus_a"):
        run_pipeline(cfg)
