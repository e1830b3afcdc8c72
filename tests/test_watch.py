"""Live mode: a writer thread plays a microscope (simulated movies and a growing mdoc, one tilt at a
time); the watcher motion-corrects each tilt as it arrives and reconstructs the series once complete.
Also the pipeline's motion stage on the same kind of input (`input: X.mdoc`)."""

import io
import json
import threading
import time

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from cryocloud.cli import main
from cryocloud.pipeline import PipelineConfig, correlation_with_truth, run_pipeline
from cryocloud.simulate import preset, simulate
from cryocloud.store import read_tilt_series, read_tomogram
from cryocloud.watch import WatchSettings

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end

DRIFT_A = 20.0
# cross-correlation alignment takes out what motion correction leaves: each sum sits at its frames' mean position
FAST = {"align": {"refine": "none", "estimate_axis": False}, "reconstruct": {"thickness_px": 64}}


@pytest.fixture(scope="module")
def acquisition():
    """A toy specimen (64^3 at 10 A) collected as 21 movies of 4 frames with 20 A drift per tilt."""
    return simulate(preset("toy", n_particles=3, frames_per_tilt=4, drift_a=DRIFT_A, seed=3))


def microscope(put, result, name, *, interval_s=0.0, written=None):
    """Write the movies (TIFF, counts) in acquisition order with `put(file name, bytes)`, rewriting
    `<name>.mdoc` with one more SerialEM section after each; `written` collects (movie, time.time())."""
    frames = result.frames
    px = frames.pixel_size
    order = np.argsort(frames.per_tilt("acquisition_order"))
    header = f"PixelSpacing = {px}\nVoltage = 300\nImageSize = {frames.data.sizes['x']} {frames.data.sizes['y']}\n\n" \
             f"[T = SerialEM: simulated   Tilt axis angle = {frames.tilt_axis_angle}, binning = 1]\n"
    sections = []
    for k, i in enumerate(order):
        movie = f"{name}_{k:03d}.tif"
        buf = io.BytesIO()
        tifffile.imwrite(buf, np.asarray(frames.data.data[i]).astype(np.uint16), photometric="minisblack")
        put(movie, buf.getvalue())
        if written is not None:
            written.append((movie, time.time()))
        sections.append(f"\n[ZValue = {k}]\nTiltAngle = {frames.tilt_angles[i]:.2f}\nExposureDose = {frames.per_tilt('exposure')[i]:.3f}\n"
                        f"PixelSpacing = {px}\nSubFramePath = D:\\frames\\{movie}\nDateTime = 24-Nov-26  10:{k // 60:02d}:{k % 60:02d}\n")
        put(f"{name}.mdoc", (header + "".join(sections)).encode())
        time.sleep(interval_s)
    return f"{name}.mdoc"


def into(folder):
    """A `put` writing files into a local folder."""
    return lambda name, data: (folder / name).write_bytes(data)


def _drift_error_px(shifts_csv, result) -> float:
    """RMS (px) of measured minus true frame positions (each tilt's mean removed), matched by tilt angle."""
    table = pd.read_csv(shifts_csv)
    truth = np.asarray(result.truth.drift_xy_a)
    angles = result.frames.tilt_angles
    errors = []
    for angle, rows in table.groupby("tilt_angle"):
        true = truth[int(np.argmin(np.abs(angles - angle)))]
        measured = rows.sort_values("frame")[["shift_x_a", "shift_y_a"]].to_numpy()
        errors.append((measured - measured.mean(0)) - (true - true.mean(0)))
    return float(np.sqrt(np.mean(np.sum(np.concatenate(errors) ** 2, axis=1)))) / result.frames.pixel_size


def test_watch_corrects_tilts_as_they_arrive_and_reconstructs(tmp_path, acquisition):
    incoming, out = tmp_path / "microscope", tmp_path / "live"
    incoming.mkdir()
    cfg = tmp_path / "live.yaml"
    cfg.write_text(yaml.safe_dump({"stages": ["align", "reconstruct"], **FAST}))
    written = []
    writer = threading.Thread(target=microscope, args=(into(incoming), acquisition, "ts01"), kwargs={"interval_s": 0.3, "written": written})
    writer.start()
    try:
        code = main(["watch", str(incoming), str(out), "--config", str(cfg), "--poll", "0.2", "--quiet", "10",
                     "--max-series", "1", "--timeout", "300", "--workers", "1"])
    finally:
        writer.join()
    assert code == 0
    summary = json.loads((out / "watch_summary.json").read_text())["series"]["ts01"]
    assert summary["state"] == "done" and summary["n_tilts"] == summary["n_corrected"] == 21
    assert (out / "ts01" / "reconstruct" / "even.zarr").exists() and (out / "ts01" / "reconstruct" / "odd.zarr").exists()
    # each tilt was motion-corrected while the microscope was still collecting
    last_movie_time = written[-1][1]  # file times and time.time() share the clock here
    per_tilt = sorted((out / "ts01" / "motion" / "tilts").glob("*.mrc"))
    assert len(per_tilt) == 21
    early = [p for p in per_tilt if p.stat().st_mtime < last_movie_time]
    assert len(early) >= 15, f"only {len(early)} of 21 tilts were corrected before the last one arrived"
    assert _drift_error_px(out / "ts01" / "motion" / "shifts.csv", acquisition) < 0.3  # vs the simulated drift (2 px per tilt)
    tomo = read_tomogram(str(out / "ts01" / "reconstruct" / "tomogram.zarr"))
    assert tomo.shape == (64, 64, 64)
    assert correlation_with_truth(tomo, acquisition.volume, np.zeros(3)) < -0.1
    report = (out / "ts01" / "report.html").read_text()
    assert "<section id='motion'>" in report and "<section id='reconstruct'>" in report


def test_pipeline_motion_stage_from_mdoc(tmp_path, acquisition):
    folder = tmp_path / "movies"
    folder.mkdir()
    mdoc = folder / microscope(into(folder), acquisition, "ts02")
    cfg = PipelineConfig(input=str(mdoc), output=str(tmp_path / "out"), stages=["align", "reconstruct"], **FAST)
    summary = run_pipeline(cfg)
    assert summary["stages"] == ["motion", "align", "reconstruct"]
    assert summary["motion"]["n_tilts"] == 21 and summary["motion"]["pixel_size_a"] == 10.0
    # the even/odd-frame sums are kept (same tilts, same order, half the dose each) and reconstructed
    assert summary["motion"]["halves"] == summary["reconstruct"]["halves"] == ["even", "odd"]
    total, even, odd = (read_tilt_series(str(tmp_path / "out" / "motion" / f"{n}.zarr")) for n in ("tilt_series", "even", "odd"))
    np.testing.assert_allclose(np.asarray(even.data) + np.asarray(odd.data), np.asarray(total.data), rtol=1e-4, atol=1e-3 * float(np.abs(total.data).max()))
    np.testing.assert_array_equal(even.tilt_angles, total.tilt_angles)
    np.testing.assert_allclose(even.per_tilt("exposure") + odd.per_tilt("exposure"), total.per_tilt("exposure"))
    assert np.all(even.per_tilt("exposure") == odd.per_tilt("exposure"))  # 4 frames: 2 + 2
    assert (tmp_path / "out" / "reconstruct" / "even.zarr").exists() and (tmp_path / "out" / "reconstruct" / "odd.zarr").exists()
    assert _drift_error_px(tmp_path / "out" / "motion" / "shifts.csv", acquisition) < 0.3
    tomo = read_tomogram(str(tmp_path / "out" / "reconstruct" / "tomogram.zarr"))
    assert correlation_with_truth(tomo, acquisition.volume, np.zeros(3)) < -0.1
    assert (tmp_path / "out" / "motion" / "drift.png").stat().st_size > 5000


def test_watch_needs_a_stop_condition():
    from cryocloud.errors import CryocloudError

    with pytest.raises(CryocloudError, match="max_series or timeout_s"):
        WatchSettings()
