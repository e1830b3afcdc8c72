"""`cryocloud align`: align a raw tilt series; writes it with the alignment in its metadata, IMOD .xf/.tlt and a PNG."""

from __future__ import annotations

import logging
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from cryocloud.alignment import align_tilt_series
from cryocloud.alignment.outputs import write_alignment
from cryocloud.cli.app import app
from cryocloud.cli.options import guarded, read_write_options
from cryocloud.store import read_tilt_series

console = Console(highlight=False, stderr=True)


@app.command()
@guarded(inputs=("in_url",), outputs=("out_url", "xf", "tlt", "aln"))
def align(
    in_url: str = typer.Argument(..., help="Raw tilt series, OME-Zarr (local path, file:// or s3://)."),
    out_url: str = typer.Argument(..., help="Output tilt series with the alignment in its metadata, OME-Zarr."),
    xf: Optional[str] = typer.Option(None, "--xf", help="IMOD .xf output (default: next to OUT_URL)."),
    tlt: Optional[str] = typer.Option(None, "--tlt", help="IMOD .tlt output (default: next to OUT_URL)."),
    aln: Optional[str] = typer.Option(None, "--aln", help="AreTomo .aln output, the same alignment (default: next to OUT_URL)."),
    refine: str = typer.Option("projection-matching", "--refine", help="projection-matching | patch-tracking | none."),
    iterations: int = typer.Option(3, "--iterations", help="Projection-matching iterations."),
    estimate_axis: bool = typer.Option(True, "--estimate-axis/--fixed-axis", help="Fit the tilt-axis angle or keep it."),
    axis_method: Optional[str] = typer.Option(None, "--axis-method", help="projection-matching (default with --refine projection-matching) | patch-model (default otherwise) | common-line."),
    axis_angle: Optional[float] = typer.Option(None, "--axis-angle", help="Tilt-axis angle guess (deg; default: the input's)."),
    tilt_offset: bool = typer.Option(False, "--tilt-offset", help="Estimate a tilt-angle offset (levels the specimen)."),
    binning: Optional[int] = typer.Option(None, "--binning", help="Image binning for alignment (default: to <= 512 px)."),
    thickness: Optional[float] = typer.Option(None, "--thickness", help="Specimen thickness for projection matching (A)."),
    ngff_version: str = typer.Option("0.4", "--ngff-version", help="0.4 (zarr v2) or 0.5 (zarr v3)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    anon: bool = typer.Option(False, "--anon", help="Anonymous read access (public buckets)."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="S3-compatible endpoint."),
) -> None:
    """Align a tilt series: shifts, tilt-axis angle and (optionally) tilt offset; residuals per tilt in a PNG.

    Prints the result's quality figures: the axis angle's standard error, each tilt's patch residual
    against the final geometry, and every search that stopped at a bound instead of converging.
    """
    read_options, write_options = read_write_options(endpoint_url, anon)
    logger = logging.getLogger("cryocloud.alignment")
    handler = RichHandler(console=console, show_path=False)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        ts = read_tilt_series(in_url, storage_options=read_options)
        parameters = {"refine": refine, "iterations": iterations, "estimate_axis": estimate_axis, "axis_angle_guess_deg": axis_angle,
                      "tilt_offset": tilt_offset, "binning": binning, "thickness_a": thickness,
                      "axis_method": axis_method}
        result = align_tilt_series(ts, estimate_axis=estimate_axis, axis_angle_guess_deg=axis_angle, refine=refine,
                                   iterations=iterations, tilt_offset=tilt_offset, binning=binning, thickness_a=thickness,
                                   axis_method=axis_method)
    finally:
        logger.removeHandler(handler)
    urls = write_alignment(ts, result, out_url, parameters=parameters, xf_url=xf, tlt_url=tlt, aln_url=aln, ngff_version=ngff_version,
                           overwrite=overwrite, storage_options=write_options, title=in_url)
    for line in result.quality_lines():
        console.print(line)
    if result.model_residuals_a is not None:
        console.print("patch residual per tilt (deg: A): " + ", ".join(
            f"{t:g}: {r:.1f}" for t, r in sorted(zip(result.tilt_angles_deg, result.model_residuals_a))))
    console.print(f"wrote {', '.join(urls.values())}")
