"""`cryocloud watch`: live processing of a folder or bucket prefix that a microscope is writing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cryocloud.cli.app import app
from cryocloud.cli.options import guarded


@app.command()
@guarded(inputs=("input_url", "config", "gain"), outputs=("output_url",))
def watch(
    input_url: str = typer.Argument(..., help="Folder or bucket prefix where movies (MRC/TIFF) and .mdoc files appear."),
    output_url: str = typer.Argument(..., help="Output URL: one folder per tilt series, watch_summary.json."),
    config: Optional[Path] = typer.Option(None, "--config", help="Pipeline config (YAML): motion, stages (default align, reconstruct), match..."),
    poll: float = typer.Option(2.0, "--poll", help="Seconds between listings."),
    quiet: float = typer.Option(60.0, "--quiet", help="A series whose mdoc is unchanged this long (s) is complete."),
    tilts: Optional[int] = typer.Option(None, "--tilts", help="Or: a series is complete at this many tilts."),
    max_series: Optional[int] = typer.Option(None, "--max-series", help="Stop after this many tilt series."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop after this many seconds."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Local Dask workers (default: one per core)."),
    gain: Optional[str] = typer.Option(None, "--gain", help="Gain reference (MRC/TIFF) multiplying the frames; overrides motion.gain "
                                       "(default: each mdoc's GainReference beside the movies)."),
) -> None:
    """Motion-correct each movie as it arrives; reconstruct (and pick, if configured) each tilt series once complete."""
    from cryocloud.cluster import describe, session
    from cryocloud.pipeline import load_config
    from cryocloud.watch import WatchSettings, watch as follow

    cfg = load_config(config)
    if gain:
        cfg = cfg.model_copy(update={"motion": cfg.motion.model_copy(update={"gain": gain})})
    settings = WatchSettings(poll_s=poll, quiet_s=quiet, tilts_per_series=tilts, max_series=max_series, timeout_s=timeout)
    with session(**{**cfg.cluster, **({"n_workers": workers} if workers else {})}) as client:
        typer.echo(describe(client), err=True)
        summary = follow(input_url, output_url, cfg, settings, client)
    typer.echo(json.dumps({name: s["state"] for name, s in summary["series"].items()}, indent=2))
