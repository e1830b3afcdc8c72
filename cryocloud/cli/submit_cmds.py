"""`cryocloud submit`: run a pipeline config on Kubernetes as a DaskJob (dask-kubernetes operator)."""

from __future__ import annotations

from pathlib import Path

import typer

from cryocloud.cli.app import app
from cryocloud.cli.options import guarded


@app.command()
@guarded(inputs=("config",))
def submit(
    config: Path = typer.Argument(..., help="pipeline config (YAML), as for `cryocloud run`; output must be an object-store URL"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the manifests (YAML) instead of creating them"),
    name: str = typer.Option(None, "--name", help="DaskJob name (default: cryocloud-<config file name>)"),
    namespace: str = typer.Option("default", "--namespace", "-n", help="Kubernetes namespace"),
    image: str = typer.Option(None, "--image", help="container image with cryocloud installed (deploy/Dockerfile)"),
    workers: int = typer.Option(2, "--workers", help="Dask workers"),
    max_workers: int = typer.Option(None, "--max-workers", help="autoscale between --workers and this (DaskAutoscaler)"),
    worker_cpu: int = typer.Option(2, "--worker-cpu", help="cores (and Dask threads) per worker"),
    worker_memory: str = typer.Option("8Gi", "--worker-memory", help="memory per worker: request, limit and Dask memory limit"),
    credentials_secret: str = typer.Option(None, "--credentials-secret", help="Secret whose keys become environment variables (e.g. AWS_ACCESS_KEY_ID)"),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="wait for the job and stream its log"),
) -> None:
    """Create the DaskJob that runs `cryocloud run CONFIG` on a Kubernetes cluster, and follow it."""
    from cryocloud.pipeline import load_config
    from cryocloud.submit import DEFAULT_IMAGE, JobSpec, check_config, job_name, manifests, submit as create, to_yaml

    cfg = load_config(config)
    check_config(cfg, str(config))
    spec = JobSpec(
        name=name or job_name(config),
        namespace=namespace,
        image=image or DEFAULT_IMAGE,
        workers=workers,
        max_workers=max_workers,
        worker_cpu=worker_cpu,
        worker_memory=worker_memory,
        credentials_secret=credentials_secret,
    )
    docs = manifests(cfg, spec)
    if dry_run:
        typer.echo(to_yaml(docs), nl=False)
        return
    state = create(docs, follow=follow, log=lambda line: typer.echo(line, err=True))
    typer.echo(state)
    if state == "Failed":
        raise typer.Exit(1)
