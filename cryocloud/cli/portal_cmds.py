"""`cryocloud portal ls`: what a CryoET Data Portal dataset holds, read in place from its bucket."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console

from cryocloud.cli.app import app
from cryocloud.cli.options import storage_options
from cryocloud.store.portal import PORTAL_BUCKET, list_runs, portal_run

portal_app = typer.Typer(help="CryoET Data Portal datasets, read in place (anonymous, read-only).", no_args_is_help=True)
app.add_typer(portal_app, name="portal")
console = Console(highlight=False)


def _run_summary(dataset: str, run: str, options: dict | None, bucket: str) -> dict:
    found = portal_run(dataset, run, storage_options=options, bucket=bucket)
    return {
        "run": run,
        "tomograms": [
            {"id": t.ident, "voxel_spacing": t.voxel_spacing, "size_zyx": t.size_zyx,
             "reconstruction_method": t.metadata.get("reconstruction_method"), "url": t.url}
            for t in found.tomograms
        ],
        "tilt_series": [{"id": t.ident, "pixel_size": t.voxel_spacing, "url": t.url} for t in found.tilt_series],
        "annotations": [
            {"object": a.object_name, "version": a.version, "voxel_spacing": a.voxel_spacing,
             "shapes": sorted({str(f["shape"]) for f in a.files})}
            for a in found.annotations
        ],
    }


@portal_app.command("ls")
def ls(
    dataset: str = typer.Argument(..., help="Dataset id, e.g. 10445."),
    run: Optional[list[str]] = typer.Option(None, "--run", help="Only these runs (repeatable); default all."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a listing."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="S3 endpoint (else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)."),
    bucket: str = typer.Option(PORTAL_BUCKET, "--bucket", help="Bucket holding the portal layout."),
) -> None:
    """List the runs of a dataset with their tomograms (voxel spacing, size, method), tilt series and annotations."""
    options = storage_options(endpoint_url)
    runs = run or list_runs(dataset, storage_options=options, bucket=bucket)
    summaries = [_run_summary(dataset, r, options, bucket) for r in runs]
    if as_json:
        typer.echo(json.dumps({"dataset": dataset, "runs": summaries}, indent=1))
        return
    for s in summaries:
        console.print(f"portal://{dataset}/{s['run']}")
        for t in s["tomograms"]:
            size = "x".join(str(n) for n in t["size_zyx"]) if t["size_zyx"] else "?"
            console.print(f"  tomogram {t['id']}: {t['voxel_spacing']:.3f} A, {size} (z, y, x), {t['reconstruction_method'] or '?'}")
        for t in s["tilt_series"]:
            console.print(f"  tilt series {t['id']}: {t['pixel_size']:.3f} A")
        for a in s["annotations"]:
            console.print(f"  annotation {a['object']} v{a['version']} at {a['voxel_spacing']:.3f} A: {', '.join(a['shapes'])}")
