"""`cryocloud portal ls` / `cryocloud portal info`: what a CryoET Data Portal dataset holds and what one
of its images is, read in place from its bucket."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console

from cryocloud.cli.app import app
from cryocloud.cli.options import guarded, storage_options
from cryocloud.errors import StoreError
from cryocloud.store import image_info
from cryocloud.store.portal import PORTAL_BUCKET, list_runs, parse_portal_url, portal_options, portal_run, read_portal_tilt_series, resolve_portal

portal_app = typer.Typer(help="CryoET Data Portal datasets, read in place (anonymous, read-only).", no_args_is_help=True)
app.add_typer(portal_app, name="portal")
console = Console(highlight=False, soft_wrap=True)  # URLs stay on one line


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
        "alignments": found.alignments,
    }


ENDPOINT = typer.Option(None, "--endpoint-url", help="S3 endpoint (else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL).")
METADATA_FIELDS = ("reconstruction_method", "processing", "is_visualization_default", "size", "acceleration_voltage",
                   "spherical_aberration_constant", "tilt_axis", "is_aligned", "total_flux", "tilt_range", "tilt_step")


def portal_info(url: str, options: dict | None) -> dict:
    """`image_info` of the image a portal address names, plus its portal metadata (and angles for a tilt series)."""
    kind = parse_portal_url(url).kind or "tomogram"
    found = resolve_portal(url, kind, storage_options=options)
    summary = image_info(found.url, storage_options=portal_options(options))
    summary["portal"] = {
        "kind": kind, "id": found.ident, "voxel_spacing": found.voxel_spacing, "metadata_url": found.metadata_url,
        **{k: found.metadata[k] for k in METADATA_FIELDS if k in found.metadata},
    }
    if kind == "tilt_series" and found.metadata_url:
        coords = read_portal_tilt_series(url, storage_options=options).data.coords
        summary["portal"]["tilt_angles"] = [float(a) for a in coords["tilt_angle"].values]
        summary["portal"]["acquisition_order"] = [int(o) for o in coords["acquisition_order"].values]
    return summary


@portal_app.command("info")
@guarded(inputs=("url",))
def info(
    url: str = typer.Argument(..., help="portal://DATASET/RUN[/vs/SPACING][/tomogram/ID | /tiltseries[/ID]] or an s3:// key in the portal bucket."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    endpoint_url: Optional[str] = ENDPOINT,
) -> None:
    """Show a portal tomogram or tilt series: where it is, levels, chunks, voxel size, metadata and tilt angles."""
    summary = portal_info(url, storage_options(endpoint_url))
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
        return
    portal = summary["portal"]
    console.print(f"{url} -> {summary['url']}  {summary['format']}")
    console.print(f"{portal['kind'].replace('_', ' ')} {portal['id']}, {portal['voxel_spacing']:.3f} A, dtype {summary['dtype']}, axes {tuple(summary['axes'])}")
    for level in summary["levels"]:
        console.print(f"level {level['path']:<3} shape {tuple(level['shape'])}  chunks {tuple(level['chunks'])}  scale {tuple(round(v, 3) for v in level['scale'])}")
    for key in METADATA_FIELDS:
        if key in portal:
            console.print(f"{key:<30} {portal[key]}")
    if "tilt_angles" in portal:
        angles = portal["tilt_angles"]
        console.print(f"tilt angles: {len(angles)} tilts, {min(angles):.1f} .. {max(angles):.1f} deg; first exposed "
                      f"{[angles[i] for i in sorted(range(len(angles)), key=portal['acquisition_order'].__getitem__)[:3]]}")


@portal_app.command("ls")
@guarded()
def ls(
    dataset: str = typer.Argument(..., help="Dataset id, e.g. 10445."),
    run: Optional[list[str]] = typer.Option(None, "--run", help="Only these runs (repeatable); default all."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a listing."),
    endpoint_url: Optional[str] = ENDPOINT,
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
        for url in s["alignments"]:
            console.print(f"  alignment {url.rsplit('/', 2)[-2]}: {url}")


@portal_app.command("copick")
@guarded(inputs=("run_url", "picks", "tomogram"), outputs=("output",))
def copick(
    output: str = typer.Argument(..., help="Overlay root: your output URL (folder or s3://bucket/prefix)."),
    run_url: str = typer.Option(..., "--run", help="The portal run the results belong to: portal://DATASET/RUN."),
    picks: Optional[list[str]] = typer.Option(None, "--picks", help="Particle CSV (x, y, z in A, as `cryocloud run` writes peaks/particles.csv); repeatable."),
    object_name: str = typer.Option("particle", "--object", help="copick pickable object name of the picks."),
    radius: Optional[float] = typer.Option(None, "--radius", help="Particle radius (A) for the copick config."),
    tomogram: Optional[str] = typer.Option(None, "--tomogram", help="A tomogram (OME-Zarr) to add as VoxelSpacing{vs}/{--tomo-type}.zarr."),
    tomo_type: str = typer.Option("cryocloud", "--tomo-type", help="copick tomogram type of --tomogram."),
    user_id: str = typer.Option("cryocloud", "--user", help="copick user id (no '_')."),
    session_id: str = typer.Option("0", "--session", help="copick session id (no '_')."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files."),
    endpoint_url: Optional[str] = ENDPOINT,
) -> None:
    """Lay results of a portal run out as a copick overlay next to the portal's data, with its copick config."""
    from cryocloud.store import read_particles_csv, read_tomogram
    from cryocloud.store.portal.copick import CopickOverlay

    ref = parse_portal_url(run_url)
    if not ref.dataset.isdigit():
        raise StoreError(run_url, f"the portal dataset id must be a number (copick's dataset_ids), got {ref.dataset!r}", field="dataset")
    options = storage_options(endpoint_url)
    overlay = CopickOverlay(output, options)
    for url in picks or []:
        particles = read_particles_csv(url, storage_options=options)
        console.print(f"{len(particles)} picks -> {overlay.write_picks(particles, ref.run, object_name, user_id=user_id, session_id=session_id, overwrite=overwrite)}")
    if tomogram:
        volume = read_tomogram(tomogram, storage_options=options)
        console.print(f"tomogram -> {overlay.write_tomogram(volume, ref.run, tomo_type, overwrite=overwrite)}")
    obj = {"name": object_name, "is_particle": True, **({"radius": radius} if radius else {})}
    config = overlay.write_config([obj], dataset_ids=[int(ref.dataset)], overlay_fs_args={k: v for k, v in (options or {}).items() if k == "endpoint_url"},
                                  description=f"cryocloud results for {run_url}", overwrite=overwrite)
    console.print(f"copick config -> {config}")
