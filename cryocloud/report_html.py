"""report.html: one self-contained page per pipeline run (figures embedded as base64 PNG, inline
CSS, no external assets).

The page is built from the run's summary (what summary.json holds): a table of every stage's key
figures, then one section per stage that ran, in pipeline order, with its figures. A stage lists
its figures in `summary[stage]["figures"]` as {caption: path relative to the output root}; the
PNGs are read from there (the stages drew them with the figure functions of their packages).
"""

from __future__ import annotations

import base64
import html
from typing import Any

from cryocloud.store import Location, open_url

#: section heading of each stage, in page order
SECTION_TITLES = {
    "simulate": "Tilt series (simulated acquisition)",
    "input": "Tilt series",
    "motion": "Motion correction",
    "ctf": "CTF estimation",
    "align": "Tilt-series alignment",
    "reconstruct": "Tomogram",
    "denoise": "Denoised tomogram",
    "segment": "Segmentation",
    "match": "Template matching",
    "peaks": "Picks",
    "average": "Subtomogram average",
}

_CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; background: #fff; }
h1 { border-bottom: 2px solid #456; padding-bottom: .2em; }
section { margin: 1.5em 0; padding: .5em 1em; border-left: 4px solid #8ab; background: #f7f9fa; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #bbb; padding: .2em .6em; text-align: left; font-size: 90%; }
th { background: #dde5ea; }
figure { display: inline-block; margin: .5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ccc; }
figcaption { font-size: 85%; color: #555; }
.note { color: #a40; }
"""


def _scalar_rows(summary: dict) -> list[tuple[str, str, str]]:
    """(stage, key, value) of every non-figure entry of the summary, values as short text."""
    rows = []
    for stage, figures in summary.items():
        if not isinstance(figures, dict):
            continue
        for key, value in figures.items():
            if key in ("figures", "parameters"):
                continue
            rows.append((stage, key, value if isinstance(value, str) else repr(value)))
    return rows


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_report(summary: dict, images: dict[str, bytes | None], *, title: str = "cryocloud run") -> str:
    """The HTML text of the report. `images` maps each figure path named in the summary to its PNG
    bytes (None: missing, noted on the page)."""
    stages = [s for s in summary.get("stages", list(summary)) if s in SECTION_TITLES and isinstance(summary.get(s), dict)]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             "<section id='summary'><h2>Key figures</h2>", _table(_scalar_rows(summary), ("stage", "figure", "value")), "</section>"]
    for stage in stages:
        figures = summary[stage]
        parts.append(f"<section id='{stage}'><h2>{html.escape(SECTION_TITLES[stage])}</h2>")
        if "skipped" in figures:
            parts.append(f"<p class='note'>skipped: {html.escape(str(figures['skipped']))}</p>")
        for caption, path in figures.get("figures", {}).items():
            png = images.get(path)
            if png is None:
                parts.append(f"<p class='note'>{html.escape(caption)}: {html.escape(path)} is missing</p>")
                continue
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(caption)} ({html.escape(path)})</figcaption></figure>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def figure_paths(summary: dict) -> list[str]:
    """Every figure path (relative to the output root) the summary names."""
    return [path for figures in summary.values() if isinstance(figures, dict) for path in figures.get("figures", {}).values()]


def write_report(root: Location, summary: dict, *, title: str = "cryocloud run") -> str:
    """Read the summary's figures under `root`, write `root/report.html`; returns its URL."""
    images: dict[str, Any] = {}
    for path in figure_paths(summary):
        loc = root.child(path)
        if loc.exists():
            with open_url(loc.url, "rb", storage_options=root.storage_options) as fh:
                images[path] = fh.read()
        else:
            images[path] = None
    url = root.child("report.html").url
    with open_url(url, "w", storage_options=root.storage_options) as fh:
        fh.write(render_report(summary, images, title=title))
    return url
