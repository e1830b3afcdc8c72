"""What `cryocloud run` writes when its output goes to a file: progress as plain periodic lines (no carriage
returns), no "Sending large graph" warning, a short summary naming report.html and summary.json at the end."""

import io
import os
import re
import subprocess
import sys
import time

import dask.array as da
import pytest
import yaml

from cryocloud import progress
from cryocloud.cli.run_cmds import end_of_run
from cryocloud.progress import StageProgress, compute

PROGRESS_LINE = re.compile(r"^(?P<stage>.+): (?P<percent>\d+) % \((?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+)\), [\d.]+ s$")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch):
    """cryocloud.progress's time.monotonic, moved by hand (seconds)."""
    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    return now


def test_plain_lines_at_every_tenth_and_every_30_s_without_carriage_returns(clock):
    out = io.StringIO()
    report = StageProgress("reconstruct", out)
    clock[0] += 2.0
    for done in range(31):  # 30 tasks, all within the same second: a line per 10 % step
        report.update(done, 30)
    clock[0] += 20.0
    report.update(30, 30)  # no new step: no line before 30 s have passed since the last one
    clock[0] += 15.0
    report.update(30, 30)
    report.finish(30, 30)  # the last line already said it
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    matches = [PROGRESS_LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [int(m["percent"]) for m in matches] == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 100]
    assert lines[3] == "reconstruct: 30 % (9/30 tasks), 2.0 s" and lines[-1] == "reconstruct: 100 % (30/30 tasks), 37 s"


def test_quick_work_shows_its_last_line_only_and_a_terminal_gets_one_live_bar(clock):
    out = io.StringIO()
    report = StageProgress("ctf", out, unit="steps")
    for done in range(5):
        report.update(done, 4)
    report.finish(4, 4)
    assert out.getvalue() == "ctf: 100 % (4/4 steps), 0.0 s\n"
    tty = _Terminal()
    report = StageProgress("ctf", tty)
    clock[0] += 2.0
    for done in range(5):
        report.update(done, 4)
    report.finish(4, 4)
    assert tty.getvalue().count("\r") == 6 and tty.getvalue().count("\n") == 1 and tty.getvalue().endswith("(4/4 tasks), 2.0 s\n")


def test_compute_on_the_local_scheduler_writes_periodic_lines_to_a_captured_stderr(capsys):
    def slow(block):
        time.sleep(0.05)
        return block

    (total,) = compute(da.ones(40, chunks=1).map_blocks(slow).sum(), description="slow sum")
    assert total == 40
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out
    lines = captured.err.splitlines()
    assert len(lines) >= 2 and all(PROGRESS_LINE.match(line) and line.startswith("slow sum: ") for line in lines), lines
    assert lines[-1].startswith("slow sum: 100 % ")


def test_end_of_a_batch_names_each_series_and_the_batch_summary():
    batch = {"n_series": 2, "series": {"ts1": {"status": "done", "key_figures": {"ctf.mean_defocus_a": 30000.0}},
                                       "ts2": {"status": "done", "key_figures": {}}}}
    assert end_of_run(batch, "s3://bucket/out", report=True) == [
        "summary:", "  ts1: done", "  ts2: done", "outputs: s3://bucket/out/<name>/, a report.html and summary.json in each",
        "batch summary: s3://bucket/out/batch_summary.json"]
    one = {"stages": ["input", "ctf"], "input": {"n_tilts": 41, "seconds": 1.2},
           "ctf": {"skipped": "pixel size 20 A leaves no Thon rings", "seconds": 0.01}}
    assert end_of_run(one, "out", report=False) == [
        "summary:", "  input  n_tilts=41 (1 s)", "  ctf    skipped: pixel size 20 A leaves no Thon rings (0 s)", "outputs: out/",
        "all figures: out/summary.json"]


@pytest.mark.slow
def test_run_into_a_file_has_periodic_lines_no_large_graph_and_a_short_summary(tmp_path):
    """The run of a toy twin with movies (the motion stage writes its sums: that write once carried each tilt
    series in its graph), stdout and stderr piped; distributed warns of graphs over a threshold set below one
    tilt series (21 x 64 x 64 float32, 344 kB) so that carrying any of them would show."""
    out = tmp_path / "out"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "output": str(out), "simulate": {"preset": "toy", "overrides": {"n_particles": 2, "frames_per_tilt": 4}},
        "stages": ["align", "reconstruct"], "align": {"refine": "none", "estimate_axis": False},
    }))
    env = {**os.environ, "DASK_DISTRIBUTED__ADMIN__LARGE_GRAPH_WARNING_THRESHOLD": "150kB"}
    run = subprocess.run([sys.executable, "-c", "from cryocloud.cli.app import console_main; console_main()", "run", str(config),
                          "--workers", "1"], capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "\r" not in run.stdout + run.stderr
    assert "Sending large graph" not in run.stderr, run.stderr
    progress_lines = [m for m in map(PROGRESS_LINE.match, run.stderr.splitlines()) if m]
    assert any(m["stage"].startswith("motion correction") for m in progress_lines)
    assert any(int(m["percent"]) == 100 for m in progress_lines)
    assert len(re.findall(r"http://\S+/status", run.stderr)) == 1  # the dashboard link, once
    summary = run.stdout[run.stdout.index("summary:"):].splitlines()
    assert len(summary) < 30, summary
    assert [line.split()[0] for line in summary[1:5]] == ["simulate", "motion", "align", "reconstruct"]
    assert "drift_rms_error_a=" in summary[2] and "correlation_with_truth=" in summary[4]
    assert f"report: {out}/report.html" in summary and f"all figures: {out}/summary.json" in summary
    assert (out / "report.html").exists() and (out / "summary.json").exists()
