"""`cryocloud run`: the pipeline on a config, or on simulated data when none is given."""

from __future__ import annotations

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
    from cryocloud.progress import announce_dashboard

    cfg = load_config(config)
    if output:
        cfg = cfg.model_copy(update={"output": output})
    with session(**{**cfg.cluster, **({"n_workers": workers} if workers else {})}) as client:
        announce_dashboard(client, describe(client))  # the one line naming the dashboard
        summary = run_pipeline(cfg, rerun_from=rerun_from)
    typer.echo("\n".join(end_of_run(summary, cfg.output.rstrip("/"), report=cfg.report)))


def end_of_run(summary: dict, where: str, *, report: bool) -> list[str]:
    """What `run` prints at the end: the key figures of each stage (batch: each series' status), and where the
    outputs, report.html and summary.json (all the figures) are; `where` is the output URL."""
    from cryocloud.pipeline.batch import KEY_FIGURES

    if "series" in summary:
        lines = [f"  {name}: {record['status']}" + (f" ({record['error']})" if "error" in record else "")
                 for name, record in summary["series"].items()]
        lines += [f"outputs: {where}/<name>/, a report.html and summary.json in each", f"batch summary: {where}/batch_summary.json"]
    else:
        width = max(len(stage) for stage in summary["stages"])
        lines = [f"  {stage:<{width}}  {_stage_figures(summary.get(stage, {}), KEY_FIGURES.get(stage, ()))}" for stage in summary["stages"]]
        lines += [f"outputs: {where}/"] + ([f"report: {where}/report.html"] if report else []) + [f"all figures: {where}/summary.json"]
    copick = summary.get("copick_config") or summary.get("copick", {}).get("config")
    if copick:  # portal input: the output is also a copick overlay over the portal datasets
        lines.append(f"copick overlay: {copick}")
    return ["summary:"] + lines


def _stage_figures(figures: dict, keys: tuple[str, ...]) -> str:
    """One stage's `keys` present in `figures` as "key=value, ...", its reason when skipped, and its seconds."""
    def shown(value: object) -> str:
        return "x".join(map(str, value)) if isinstance(value, list) else f"{value:g}" if isinstance(value, float) else str(value)

    parts = [f"skipped: {figures['skipped']}"] if "skipped" in figures else []
    parts += [f"{key}={shown(figures[key])}" for key in keys if figures.get(key) is not None]
    seconds = [f"({figures['seconds']:.0f} s)"] if "seconds" in figures else []
    return " ".join([", ".join(parts)] + seconds if parts else seconds)
