"""report.html: self-contained (figures embedded), one section per stage that ran, renders in headless Chromium."""

import io
import re
import shutil
import subprocess

import numpy as np
from matplotlib.image import imread

from cryocloud.pipeline import PipelineConfig, run_pipeline
from cryocloud.report import save_slices_png
from cryocloud.report_html import render_report
import pytest

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    save_slices_png(np.random.default_rng(seed).normal(size=(8, 32, 32)), buf, title="test")
    return buf.getvalue()


def screenshot(html_path, png_path, height=2400) -> np.ndarray:
    """RGB screenshot (y, x, 3) of a local HTML file taken by headless Chromium."""
    assert CHROMIUM, "chromium is not installed: the README test command installs Debian's chromium"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={png_path.parent / 'profile'}",
         f"--window-size=1200,{height}", f"--screenshot={png_path}", f"file://{html_path}"],
        check=True, capture_output=True, timeout=120,
    )
    return imread(str(png_path))[..., :3]


def test_render_embeds_every_figure_and_only_stages_that_ran():
    summary = {
        "software": {"cryocloud": "0"},
        "simulate": {"n_tilts": 21, "figures": {"tilt series": "simulate/montage.png"}},
        "ctf": {"skipped": "pixel size 10 A leaves no Thon rings"},
        "reconstruct": {"shape_zyx": [8, 32, 32], "correlation_with_truth": -0.3,
                        "figures": {"tomogram": "reconstruct/slices.png", "lost": "reconstruct/lost.png"}},
        "stages": ["simulate", "ctf", "reconstruct"],
    }
    page = render_report(summary, {"simulate/montage.png": _png(0), "reconstruct/slices.png": _png(1), "reconstruct/lost.png": None})
    assert re.findall(r"<section id='(\w+)'>", page) == ["summary", "simulate", "ctf", "reconstruct"]
    sources = re.findall(r"src='([^']*)'", page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"(href|src)=['\"]?(https?:|//)", page)  # no external assets
    assert "correlation_with_truth" in page and "-0.3" in page  # summary table
    assert "skipped: pixel size 10 A" in page
    assert "reconstruct/lost.png is missing" in page
    assert "id='peaks'" not in page and "id='average'" not in page


def test_pipeline_report_renders_in_chromium(tmp_path):
    out = tmp_path / "run"
    cfg = PipelineConfig(output=str(out), simulate={"preset": "toy", "overrides": {"n_particles": 2}},
                         stages=["simulate", "align", "reconstruct"], align={"refine": "none", "estimate_axis": False})
    run_pipeline(cfg)
    page = (out / "report.html").read_text()
    assert re.findall(r"<section id='(\w+)'>", page) == ["summary", "simulate", "align", "reconstruct"]
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 3  # montage, residuals, tomogram slices
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
                          "--dump-dom", f"file://{out / 'report.html'}"], check=True, capture_output=True, text=True, timeout=120).stdout
    assert re.findall(r"<h2>([^<]*)</h2>", dom) == ["Key figures", "Tilt series (simulated acquisition)", "Tilt-series alignment", "Tomogram"]
    shot = screenshot(out / "report.html", tmp_path / "report.png")
    assert shot.std() > 0.1  # not blank
    # the embedded figures are drawn: without them the same page looks clearly different
    (tmp_path / "bare.html").write_text(re.sub(r"<figure>.*?</figure>", "", page, flags=re.S))
    bare = screenshot(tmp_path / "bare.html", tmp_path / "bare.png")
    changed = np.abs(shot - bare).max(axis=2) > 0.1
    assert changed.mean() > 0.2
    grey_levels = np.unique(np.round(shot[changed].mean(axis=1) * 255))
    assert grey_levels.size > 50  # images (grey ramps of slices), not flat boxes
