"""`cryocloud run`: the pipeline on a config, or on simulated data when none is given."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cryocloud.cli.app import app
from cryocloud.cli.options import guarded


@app.command()
@guarded(inputs=("config",), outputs=("output",))
def run(
    config: Path = typer.Argument(None, help="pipeline config (YAML); omit to simulate a dataset and process it"),
    output: str = typer.Option(None, "--output", "-o", help="output URL; overrides the config's `output`"),
    rerun_from: str = typer.Option(None, "--from", help="recompute this stage and every stage after it"),
    workers: int = typer.Option(None, "--workers", help="local Dask workers (default: one per core)"),
) -> None:
    """Run the pipeline: simulate and motion-correct the simulated movies (or read the input, or motion-correct
    a .mdoc's movies) -> ... -> average; one report.html per tilt series; several inputs run as a batch.
    A CryoET Data Portal input (portal://DATASET/RUN, a tilt series or tomogram, or a key in its bucket) also
    gets a copick overlay of the results in the output (copick_config.json). Resumes completed stages."""
    from cryocloud.cluster import describe, session
    from cryocloud.pipeline import load_config, run_pipeline

    cfg = load_config(config)
    if output:
        cfg = cfg.model_copy(update={"output": output})
    with session(**{**cfg.cluster, **({"n_workers": workers} if workers else {})}) as client:
        typer.echo(describe(client), err=True)
        summary = run_pipeline(cfg, rerun_from=rerun_from)
    typer.echo(json.dumps(summary, indent=2))
    where = cfg.output.rstrip("/")
    if "series" in summary:
        typer.echo(f"batch summary: {where}/batch_summary.json; a report.html per tilt series under {where}/<name>/", err=True)
    elif cfg.report:
        typer.echo(f"report: {where}/report.html", err=True)
    copick = summary.get("copick_config") or summary.get("copick", {}).get("config")
    if copick:  # portal input: the output is also a copick overlay over the portal datasets
        typer.echo(f"copick overlay: {copick}", err=True)
