"""`cryocloud reconstruct`: weighted back-projection of an aligned tilt series into an OME-Zarr tomogram."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console

from cryocloud.cli.app import app
from cryocloud.cli.options import guarded, read_write_options
from cryocloud.cluster import describe, session
from cryocloud.errors import ModelError, StoreError
from cryocloud.progress import check_task_memory
from cryocloud.reconstruct import reconstruct as reconstruct_tomogram
from cryocloud.reconstruct import slab_task_bytes
from cryocloud.report import save_slices_png
from cryocloud.store import is_mrc, open_url, read_tilt_series, read_tomogram, require_contrast, write_tomogram

console = Console(highlight=False, stderr=True)


def figure_url(out_url: str) -> str:
    """Where the slices figure of an output goes: next to it, `<name>_slices.png`."""
    base = out_url.rstrip("/")
    stem = base[: -len(".zarr")] if base.endswith(".zarr") else base
    return f"{stem}_slices.png"


@app.command()
@guarded(inputs=("in_url",), outputs=("out_url",))
def reconstruct(
    in_url: str = typer.Argument(..., help="Aligned tilt series, or one with its alignment stored by `cryocloud align`, OME-Zarr (local path, file:// or s3://)."),
    out_url: str = typer.Argument(..., help="Output tomogram, OME-Zarr."),
    thickness: Optional[int] = typer.Option(None, "--thickness", help="Z size in binned voxels (default max(64, width/4))."),
    binning: int = typer.Option(1, "--binning", help="Mean-pool the tilt images by this factor first."),
    filter: str = typer.Option("radial", "--filter", help="radial | sirt | none."),
    radial_cutoff: float = typer.Option(0.35, "--radial-cutoff", help="Falloff start, cycles/pixel (0.5 = Nyquist)."),
    radial_falloff: float = typer.Option(0.035, "--radial-falloff", help="Gaussian falloff sigma, cycles/pixel."),
    sirt_iterations: int = typer.Option(10, "--sirt-iterations", help="Equivalent SIRT iterations of --filter sirt."),
    slab_rows: Optional[int] = typer.Option(None, "--slab-rows", help="Y rows per task (default ~64 MiB of output)."),
    halves: Optional[str] = typer.Option(None, "--halves", help="even | odd: the input is that frame-half sum."),
    ngff_version: str = typer.Option("0.4", "--ngff-version", help="0.4 (zarr v2) or 0.5 (zarr v3)."),
    levels: int = typer.Option(3, "--levels", help="Pyramid levels to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    anon: bool = typer.Option(False, "--anon", help="Anonymous read access (public buckets)."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="S3-compatible endpoint."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Dask scheduler address (default: cryocloud.cluster)."),
) -> None:
    """Reconstruct a tomogram; writes OME-Zarr and a PNG of the central XY and XZ slices next to it.

    A tilt series written by `cryocloud align` is resampled with its stored alignment on the fly.
    """
    read_options, write_options = read_write_options(endpoint_url, anon)
    if is_mrc(in_url):
        raise StoreError(in_url, "is an MRC file; expected an OME-Zarr tilt series (convert the stack first: "
                         "cryocloud convert STACK.mrc TS.zarr --tilt-angles STACK.tlt)", field="format")
    ts = read_tilt_series(in_url, storage_options=read_options)
    if ts.n_tilts < 2:
        raise StoreError(in_url, f"holds {ts.n_tilts} tilt image; expected at least 2 to reconstruct from", field="tilt_angle")
    try:
        tomo = reconstruct_tomogram(
            ts,
            thickness_px=thickness,
            binning=binning,
            filter=filter,
            radial_cutoff=radial_cutoff,
            radial_falloff=radial_falloff,
            sirt_iterations=sirt_iterations,
            slab_rows=slab_rows,
            halves=halves,
        )
    except ModelError as exc:
        raise ModelError(exc.field, exc.problem, source=exc.source or in_url) from exc
    if tomo.data.attrs["reconstruction"]["applied_alignment_axis_deg"] is not None:
        console.print(f"{in_url}: applying its stored alignment (tilt axis {ts.tilt_axis_angle:.2f} deg and per-tilt shifts)")
    nz, ny, nx = tomo.shape
    rows = tomo.data.data.chunks[1][0]
    console.print(f"{in_url}: {ts.n_tilts} tilts of {ts.data.shape[1]} x {ts.data.shape[2]} px -> {nx} x {ny} x {nz} voxels "
                  f"of {tomo.pixel_size:.3f} A, {filter} filter, {len(tomo.data.data.chunks[1])} slabs of {rows} rows")
    with session(scheduler) as client:
        console.print(describe(client))
        check_task_memory(client, slab_task_bytes(ts, tomo), "reconstruct", smaller=f"fewer rows per task (--slab-rows, now {rows})")
        require_contrast(ts.data.data, in_url, what="the tilt series")
        write_tomogram(
            tomo, out_url, ngff_version=ngff_version, chunks=(64, rows, 64), levels=levels, overwrite=overwrite,
            storage_options=write_options,
            metadata={"stage": "reconstruct", "parameters": tomo.data.attrs["reconstruction"],
                      **({"defocus_a": tomo.data.attrs["defocus_a"]} if "defocus_a" in tomo.data.attrs else {})},
        )
    stored = read_tomogram(out_url, storage_options=write_options)
    png = figure_url(out_url)
    with open_url(png, "wb", storage_options=write_options) as f:
        save_slices_png(stored.data.data, f, title=f"{out_url} ({filter}, {tomo.pixel_size:.2f} A/voxel)")
    console.print(f"wrote {out_url} and {png}")
