"""The pipeline from simulated movies: motion correction (drift scored against the simulated truth),
even/odd half reconstructions and Noise2Noise denoising trained on them; resume recomputes nothing."""

import json

import pytest
import torch

from cryocloud.errors import CryocloudError
from cryocloud.pipeline import PipelineConfig, run_pipeline
from cryocloud.pipeline.run import stage_order
from cryocloud.store import read_tilt_series, read_tomogram

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end

CONFIG = dict(
    simulate={"preset": "toy", "overrides": {"n_particles": 4, "seed": 1, "frames_per_tilt": 4, "drift_a": 20.0}},
    stages=["ctf", "align", "reconstruct", "denoise", "match", "peaks"],
    align={"refine": "projection-matching", "iterations": 1, "estimate_axis": False},
    denoise={"method": "noise2noise", "tile": 32, "overlap": 16,
             "noise2noise": {"channels": 4, "patch": 16, "n_patches": 48, "steps": 100, "learning_rate": 3e-3}},
    match={"input": "denoised"},
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_movies_motion_halves_and_noise2noise_persist_score_and_resume(tmp_path):
    out = tmp_path / "run"
    summary = run_pipeline(PipelineConfig(output=str(out), **CONFIG))
    assert summary["stages"] == ["simulate", "motion", "ctf", "align", "reconstruct", "denoise", "match", "peaks"]
    motion = summary["motion"]
    assert motion["frames_per_tilt"] == 4 and motion["n_tilts"] == 21
    # the frames drift by ~9 A RMS (0.9 px); the measured shifts follow them to within 0.2 px
    assert motion["true_drift_rms_a"] > 5.0
    assert motion["drift_rms_error_a"] < 2.0
    # each motion-corrected sum sits at its tilt's mean frame position: the alignment is scored against
    # the simulated image shifts moved there (against the drift-free shifts it reads ~1.4 px)
    assert summary["align"]["shift_rms_px"] < 0.6
    for half in ("even", "odd"):
        assert read_tilt_series(str(out / "motion" / f"{half}.zarr")).data.shape == (21, 64, 64)
        assert read_tomogram(str(out / "reconstruct" / f"{half}.zarr")).shape == (64, 64, 64)
    assert summary["reconstruct"]["halves"] == ["even", "odd"]
    # proteins are dark: a more negative correlation with the potential is closer to the truth
    denoised = summary["denoise"]
    assert denoised["method"] == "noise2noise" and denoised["training_steps"] == 100
    assert denoised["validation_loss_end"] < denoised["validation_loss_start"]
    assert denoised["correlation_with_truth"] < summary["reconstruct"]["correlation_with_truth"] - 0.05
    assert (out / "denoise" / "model" / "model.json").exists() and (out / "denoise" / "model" / "weights.pt").exists()
    page = (out / "report.html").read_text()
    assert "<section id='motion'>" in page and "noise2noise training: loss per step" in page
    assert json.loads((out / "summary.json").read_text())["denoise"]["correlation_with_truth"] == denoised["correlation_with_truth"]
    # template matching on the denoised tomogram: the same search on the denoised halves' difference sets the cut-off
    assert denoised["null"] == "denoise/null.zarr" and read_tomogram(str(out / "denoise" / "null.zarr")).shape == (64, 64, 64)
    assert summary["match"]["input"] == "denoised" and summary["match"]["null_search"] == "match/null"
    assert summary["match"]["whitening"] == "none (noise2noise input)"
    null_search = json.loads((out / "match" / "null" / "match.json").read_text())
    assert null_search["search_id"] == json.loads((out / "match" / "match.json").read_text())["search_id"]
    peaks = summary["peaks"]
    assert peaks["null_threshold"] > 0 and peaks["threshold"] >= peaks["null_threshold"]
    assert peaks["recall"] >= 0.75 and peaks["precision"] >= 0.75

    # the peaks stage (seconds) always reruns; everything before it is kept
    def kept(p):  # everything but the run's summary, its report and the peaks stage's outputs (peaks/, peaks/relion5/)
        return p.is_file() and p.name not in ("summary.json", "report.html") and p.relative_to(out).parts[0] != "peaks"

    written = {p: p.stat().st_mtime_ns for p in out.rglob("*") if kept(p)}
    again = run_pipeline(PipelineConfig(output=str(out), **CONFIG))  # resume: nothing recomputed or rewritten
    assert {p: p.stat().st_mtime_ns for p in written} == written
    assert set(p for p in out.rglob("*") if kept(p)) == set(written)
    for stage in ("motion", "reconstruct", "denoise", "match", "peaks"):
        assert {k: v for k, v in again[stage].items() if k != "seconds"} == {k: v for k, v in summary[stage].items() if k != "seconds"}


def test_motion_of_a_simulation_without_movies_names_the_key(tmp_path):
    cfg = PipelineConfig(output=str(tmp_path / "o"), simulate={"preset": "toy", "overrides": {"n_particles": 2}},
                         stages=["motion", "reconstruct"])
    with pytest.raises(CryocloudError, match="frames_per_tilt"):
        run_pipeline(cfg)
    assert not (tmp_path / "o").exists()
    # the default run simulates movies, so its source is simulate then motion
    assert stage_order(PipelineConfig())[:3] == ["simulate", "motion", "ctf"]


def test_noise2noise_without_half_reconstructions_names_the_key(tmp_path):
    cfg = PipelineConfig(output=str(tmp_path / "o"), simulate={"preset": "toy", "overrides": {"n_particles": 2}},
                         stages=["reconstruct", "denoise"], denoise={"method": "noise2noise"})
    with pytest.raises(CryocloudError, match="denoise.method.*frames_per_tilt"):
        run_pipeline(cfg)
    assert not (tmp_path / "o" / "denoise" / "model").exists()


def test_matching_the_denoised_tomogram_without_the_denoise_stage_names_the_key(tmp_path):
    cfg = PipelineConfig(output=str(tmp_path / "o"), simulate={"preset": "toy", "overrides": {"n_particles": 2}},
                         stages=["reconstruct", "match"], match={"input": "denoised"})
    with pytest.raises(CryocloudError, match="match.input.*denoise stage"):
        run_pipeline(cfg)
    assert not (tmp_path / "o" / "match").exists()
    cfg = PipelineConfig(output=str(tmp_path / "p"), simulate={"preset": "toy", "overrides": {"n_particles": 2}},
                         stages=["reconstruct", "match", "peaks"], peaks={"avoid_membranes": True})
    with pytest.raises(CryocloudError, match="peaks.avoid_membranes.*segment stage"):
        run_pipeline(cfg)
    assert not (tmp_path / "p" / "peaks").exists()


def test_deconvolved_input_is_whitened_by_its_null_volume(tmp_path):
    """match.input: denoised after the deconvolution filter: the denoise stage writes the filtered half
    difference, both searches are whitened by its spectrum, and its search sets a cut-off floor."""
    import numpy as np
    import pandas as pd

    from cryocloud.pick.spectrum import null_spectrum
    from cryocloud.store import read_labels

    out = tmp_path / "run"
    overrides = {"n_particles": 4, "seed": 1, "frames_per_tilt": 2, "drift_a": 0.0, "membranes": {"vesicles": 1, "vesicle_radius_a": [180.0, 220.0]}}
    cfg = PipelineConfig(output=str(out), simulate={"preset": "toy", "overrides": overrides},
                         stages=["ctf", "reconstruct", "denoise", "segment", "match", "peaks"], denoise={"tile": 32, "overlap": 8},
                         segment={"low": 2.5, "high": 6.0},  # the toy's weaker membrane, as in test_pipeline_stages
                         match={"input": "denoised"}, peaks={"avoid_membranes": True})
    summary = run_pipeline(cfg)
    assert summary["denoise"]["null"] == "denoise/null.zarr"
    assert summary["match"]["whitening"] == "noise of the null volume" and summary["match"]["null_search"] == "match/null"
    step, power = json.loads((out / "match" / "null" / "match.json").read_text())["settings"]["noise"]
    expected = null_spectrum(read_tomogram(str(out / "denoise" / "null.zarr"), level=1), quiet=True)
    assert step == pytest.approx(expected.step)
    np.testing.assert_allclose(power, expected.power, rtol=1e-4)
    assert summary["peaks"]["null_threshold"] > 0 and summary["peaks"]["recall"] >= 0.75
    # peaks.avoid_membranes: no pick centred on a voxel of the segment stage's membranes (at the searched level)
    membranes = np.asarray(read_labels(str(out / "segment" / "membranes.zarr"), level=1).values) > 0
    assert summary["peaks"]["membrane_voxels"] == int(membranes.sum()) > 0
    picks = pd.read_csv(out / "peaks" / "particles.csv")[["z", "y", "x"]].to_numpy()
    origin = np.array([float(read_labels(str(out / "segment" / "membranes.zarr"), level=1).coords[d].values[0]) for d in "zyx"])
    voxels = np.round((picks - origin) / summary["match"]["voxel_size_a"]).astype(int)
    assert len(voxels) and not membranes[tuple(voxels.T)].any()
