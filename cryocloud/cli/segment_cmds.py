"""`cryocloud segment membranes`: membrane segmentation of a tomogram into an NGFF label image (+ MRC mask)."""

from __future__ import annotations

import posixpath
from typing import Optional

import numpy as np
import typer
from rich.console import Console

from cryocloud.cli.app import app
from cryocloud.cli.options import guarded, read_write_options
from cryocloud.cluster import describe, session
from cryocloud.errors import OutputExistsError
from cryocloud.segment import MembraneSettings, segment_membranes
from cryocloud.segment.chunked import DEFAULT_HIGH
from cryocloud.segment.figures import save_overlay_png
from cryocloud.store import open_url, read_labels, read_volume, require_contrast, resolve, write_labels, write_mrc
from cryocloud.store.labels import parent_image, refuse_existing

segment_app = typer.Typer(help="Segmentation of tomograms into NGFF label images.", no_args_is_help=True)
app.add_typer(segment_app, name="segment")
console = Console(highlight=False, stderr=True)
DEFAULTS = MembraneSettings()  # the one set of defaults, shared with the pipeline and Python


def overlay_url(out_url: str) -> str:
    """Where the overlay figure goes: beside the image for ``<image>/labels/<name>``, else beside OUT."""
    loc = resolve(out_url)
    image = parent_image(loc)
    if image is not None:
        stem = image.url[: -len(".zarr")] if image.url.endswith(".zarr") else image.url
        return f"{stem}_{loc.name}_overlay.png"
    base = out_url.rstrip("/")
    return f"{base[: -len('.zarr')] if base.endswith('.zarr') else base}_overlay.png"


@segment_app.command("membranes")
@guarded(inputs=("in_url",), outputs=("out_url", "mrc"), labels=True)
def membranes(
    in_url: str = typer.Argument(..., help="Tomogram: OME-Zarr or MRC (local path, file:// or s3://)."),
    out_url: str = typer.Argument(..., help="Label image (OME-Zarr); IN.zarr/labels/NAME writes it as a label of the input image."),
    scale_a: Optional[float] = typer.Option(None, "--scale-a", help="Hessian scale, Gaussian s.d. in A (default max(10 A, 1 voxel))."),
    integration_a: Optional[float] = typer.Option(None, "--integration-a", help="Orientation averaging s.d. in A (default 3 x scale)."),
    polarity: str = typer.Option("either", "--polarity", help="dark | bright | either: membrane contrast in the tomogram."),
    low: float = typer.Option(DEFAULTS.low, "--low", help="Hysteresis low threshold, noise s.d. of the response above its median."),
    high: Optional[float] = typer.Option(
        None, "--high", help="Hysteresis high threshold (noise units) every membrane must reach, overriding the adaptive default: "
        f"{DEFAULT_HIGH:g}, or --large-high for a candidate of at least --large-area A^2."
    ),
    large_high: float = typer.Option(DEFAULTS.large_high, "--large-high", help="Adaptive high threshold (noise units) of a large candidate."),
    large_area: float = typer.Option(
        DEFAULTS.large_area_a2, "--large-area", help="A candidate at least this large (A^2 of mid-surface) is large; left out, it is reported."
    ),
    min_size: float = typer.Option(DEFAULTS.min_size_a2, "--min-size", help="Smallest membrane area kept (A^2 of mid-surface)."),
    thickness_a: float = typer.Option(DEFAULTS.thickness_a, "--thickness-a", help="Output membrane thickness (A)."),
    wedge_normalise: bool = typer.Option(
        True, "--wedge-normalise/--no-wedge-normalise", help="Judge each plate against the noise in its own orientation (missing wedge)."
    ),
    complete_vesicles: bool = typer.Option(
        False, "--complete-vesicles", help="Close membranes that fit a sphere across the missing wedge (needs the tilt angles)."
    ),
    fiducial_sigma: Optional[float] = typer.Option(
        20.0, "--fiducial-sigma", help="Gold fiducials: voxels beyond this many robust s.d. of the tomogram; membranes on their streaks are dropped (0: keep all)."
    ),
    chunk: int = typer.Option(96, "--chunk", help="Edge of the processing cubes (voxels)."),
    mrc: Optional[str] = typer.Option(None, "--mrc", help="Also write the membrane mask (int8, 1 = membrane) as MRC here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    anon: bool = typer.Option(False, "--anon", help="Anonymous read access (public buckets)."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="S3-compatible endpoint."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Dask scheduler address (default: cryocloud.cluster)."),
) -> None:
    """Segment membranes: plate filter, hysteresis, connected components; one label per membrane."""
    read_options, write_options = read_write_options(endpoint_url, anon)
    settings = MembraneSettings(
        scale_a=scale_a, integration_a=integration_a, polarity=polarity, low=low, high=high, large_high=large_high,
        large_area_a2=large_area, min_size_a2=min_size, thickness_a=thickness_a, chunk_voxels=chunk,
        wedge_normalise=wedge_normalise, complete_vesicles=complete_vesicles, fiducial_sigma=fiducial_sigma or None,
    )
    tomo = read_volume(in_url, storage_options=read_options)
    if not overwrite:
        refuse_existing(out_url, write_options)
        if mrc is not None and resolve(mrc, write_options).exists():
            raise OutputExistsError(f"{resolve(mrc).url}: exists already; pass --overwrite to replace it")
    nz, ny, nx = tomo.shape
    console.print(f"{in_url}: {nx} x {ny} x {nz} voxels of {tomo.pixel_size:.3f} A")
    with session(scheduler) as client:
        console.print(describe(client))
        require_contrast(tomo.data.data, in_url, what="the tomogram")
        result = segment_membranes(tomo, settings)
        t = result.thresholds
        console.print(f"{result.count} membranes; thresholds low {t.low:.4g} / high {t.high:.4g} / large candidates' high "
                      f"{t.large_high:.4g} (response median {t.median:.4g}, noise s.d. {t.spread:.4g})")
        for c in result.left_out:
            console.print(f"warning: a large candidate left out: {c['area_a2']:.3g} A^2 at (x, y, z) {tuple(c['centre_xyz_a'])} A, "
                          f"peak {c['peak']} noise s.d., {c['needed']} needed (a lower --high keeps it)")
        if complete_vesicles:
            closed = [f for f in result.vesicles if f.completed]
            console.print(f"{len(closed)} of {len(result.vesicles)} membranes closed as vesicles across the missing wedge: "
                          + ", ".join(f"{f.label} (r {f.radius * tomo.pixel_size:.0f} A)" for f in closed))
        write_labels(
            result.labels, out_url, overwrite=overwrite, storage_options=write_options,
            metadata={"stage": "segment membranes", "input": in_url, "parameters": result.labels.attrs["segmentation"]},
        )
    stored = read_labels(out_url, storage_options=write_options)
    if mrc is not None:  # from the stored labels, outside the cluster: write_mrc streams into a local memory map
        write_mrc((stored.data > 0).astype(np.int8), mrc, pixel_size=tomo.pixel_size, overwrite=overwrite, storage_options=write_options)
    png = overlay_url(out_url)
    with open_url(png, "wb", storage_options=write_options) as f:
        save_overlay_png(tomo.data.data, stored.data, f, title=f"{posixpath.basename(in_url.rstrip('/'))}: {result.count} membranes")
    console.print(f"wrote {out_url}{' and ' + mrc if mrc else ''}, {png}")
