"""`cryocloud info` and `cryocloud convert`: inspect OME-Zarr, MRC, EM and atomic-model files and convert OME-Zarr and MRC
data at any URL."""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Optional

import numpy as np
import typer
from rich.console import Console

from cryocloud.cli.app import app
from cryocloud.cli.options import guarded, read_write_options, storage_options
from cryocloud.errors import StoreError
from cryocloud.store import (
    em_info, image_info, is_atomic_model, is_em, is_mrc, mrc_info, read_atomic_model, read_mrc, read_tilt_series, read_tilt_series_mrc,
    read_tomogram, require_volume, write_mrc, write_tilt_series, write_tlt, write_tomogram,
)
from cryocloud.store.location import resolve
from cryocloud.store.portal import is_portal_url

console = Console(highlight=False)


ANON = typer.Option(False, "--anon", help="Anonymous read access (public buckets such as the CryoET Data Portal); outputs use credentials.")
ENDPOINT = typer.Option(None, "--endpoint-url", help="S3-compatible endpoint (else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL).")


def _angles_text(angles: list[float]) -> str:
    a = np.asarray(angles)
    return f"{a.size} tilts, {a.min():.2f} .. {a.max():.2f} deg: " + " ".join(f"{v:.2f}" for v in a)


def atomic_model_info(path: str) -> dict:
    """Summary of an atomic model (local mmCIF / PDB, `read_atomic_model`): atoms, mass (Da), radius (A) around the centroid."""
    model = read_atomic_model(path)
    return {"url": path, "format": "atomic model", "name": model.name, "atoms": len(model.xyz), "mass_da": model.mass_da,
            "radius_a": model.radius_a}


def file_info(url: str, options: dict) -> dict:
    """The summary `info` shows of a file that `match` reads: an atomic model, an EM or MRC volume, else an OME-Zarr image."""
    if is_atomic_model(url):
        return atomic_model_info(url)
    if is_em(url):
        return em_info(url, storage_options=options)
    return mrc_info(url, storage_options=options) if is_mrc(url) else image_info(url, storage_options=options)


@app.command()
@guarded(inputs=("url",))
def info(
    url: str = typer.Argument(..., help="OME-Zarr image, MRC or EM file (local path, file:// or s3://), or a local atomic model "
                                        "(mmCIF / PDB)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
    anon: bool = ANON,
    endpoint_url: Optional[str] = ENDPOINT,
) -> None:
    """Show shape, voxel size, dtype, chunks, pyramid levels, tilt angles and metadata of an image (atoms, mass and radius
    of an atomic model)."""
    if is_portal_url(url):  # the portal's own summary: resolved key, portal metadata, tilt angles
        from cryocloud.cli.portal_cmds import info as portal_info

        return portal_info(url, as_json=as_json, endpoint_url=endpoint_url)
    options = storage_options(endpoint_url, anon=anon)
    summary = file_info(url, options)
    if as_json:
        console.print_json(json.dumps(summary))
        return
    console.print(f"[bold]{summary['url']}[/]  {summary['format']}")
    if summary["format"] == "atomic model":
        console.print(f"name        {summary['name']}")
        console.print(f"atoms       {summary['atoms']} (first model; no waters or hydrogens)")
        console.print(f"mass        {summary['mass_da']:.0f} Da")
        console.print(f"radius      {summary['radius_a']:.1f} A (around the centroid, holding every atom)")
        return
    console.print(f"dtype       {summary['dtype']}")
    px = summary["pixel_size"]
    console.print(f"pixel size  {'unknown' if px is None else f'{px:.4f} A'}")
    if "levels" not in summary:
        console.print(f"shape       {tuple(summary['shape'])} (z, y, x)")
        return
    console.print(f"axes        {tuple(summary['axes'])}")
    for level in summary["levels"]:
        lost = level["n_chunks"] - level["stored_chunks"]
        stored = f"{level['stored_chunks']}/{level['n_chunks']} stored" + (
            f" ({lost} MISSING: data lost)" if lost and summary["every_chunk_stored"] else f" ({lost} read as the fill value)" if lost else ""
        )
        console.print(
            f"level {level['path']:<5} shape {tuple(level['shape'])}  chunks {tuple(level['chunks'])} {stored}  "
            f"scale {tuple(round(s, 4) for s in level['scale'])} translation {tuple(round(t, 4) for t in level['translation'])}"
        )
    block = summary.get("cryocloud")
    if block is None:
        console.print("no cryocloud metadata block (plain NGFF image)")
        return
    console.print(f"kind        {block['kind']}   microscope {block['microscope']}")
    if block.get("per_tilt"):
        console.print(f"tilt axis   {block['tilt_axis_angle']} deg")
        console.print(f"angles      {_angles_text(block['per_tilt']['tilt_angle'])}")
        console.print(f"per tilt    {', '.join(block['per_tilt'])}")
    elif block.get("tilt_angles"):
        console.print(f"angles      {_angles_text(block['tilt_angles'])}")
    prov = block["provenance"]
    console.print(f"provenance  stage {prov['stage']}, cryocloud {prov['software_version']}, {prov['created']}, parameters {prov['parameters']}")
    if prov.get("inputs"):
        console.print(f"inputs      {', '.join(prov['inputs'])}")
    if block.get("metadata"):
        console.print(f"metadata    {json.dumps(block['metadata'])}")


#: suffixes of tilt-series stacks (IMOD: raw .st, aligned .ali / .preali; RELION / cisTEM image stacks .mrcs)
STACK_SUFFIXES = (".st", ".ali", ".preali", ".mrcs")
ANGLE_FILE_SUFFIXES = (".mdoc", ".tlt", ".rawtlt")


def refuse_unannotated_stack(source: str, options: dict | None) -> None:
    """StoreError when an MRC given without tilt angles is a tilt-series stack by its suffix or has tilt angles beside
    it (SOURCE.mdoc, STEM.tlt, STEM.rawtlt): converting it as a volume would silently drop the geometry."""
    stem = source.rsplit(".", 1)[0]
    beside = [f"{source}.mdoc", *(stem + suffix for suffix in ANGLE_FILE_SUFFIXES)]
    found = [url for url in beside if resolve(url, options).exists()]
    if source.lower().endswith(STACK_SUFFIXES) or found:
        why = f"has tilt angles beside it ({', '.join(found)})" if found else "is a tilt-series stack by its suffix"
        raise StoreError(source, f"{why}; pass --tilt-angles FILE or --mdoc FILE to convert it as a tilt series, "
                                 "or --as-volume to convert it as a tomogram", field="tilt_angle")


@app.command()
@guarded(inputs=("source", "tilt_angles", "mdoc", "aln", "warp_xml"), outputs=("target",))
def convert(
    source: str = typer.Argument(..., help="Input: MRC file or OME-Zarr image (URL)."),
    target: str = typer.Argument(..., help="Output: OME-Zarr image (.zarr) or MRC file (.mrc, .st, ...)."),
    tilt_angles: Optional[str] = typer.Option(None, "--tilt-angles", help=".tlt/.rawtlt file: the MRC is a tilt series."),
    mdoc: Optional[str] = typer.Option(None, "--mdoc", help="SerialEM .mdoc: the MRC is a tilt series."),
    aln: Optional[str] = typer.Option(
        None, "--aln", help="AreTomo .aln: the MRC is its raw tilt series; keeps the aligned images with the .aln's tilt angles, tilt axis "
        "and shifts (`reconstruct` applies them); with --mdoc the doses come from the mdoc."),
    warp_xml: Optional[str] = typer.Option(
        None, "--warp-xml", help="Warp tilt-series .xml: the MRC holds its images in the XML's order; tilt angles, axis, shifts, "
        "defocus and dose from the XML (tilts it does not use left out)."),
    pixel_size: Optional[float] = typer.Option(None, "--pixel-size", help="Pixel size (A), overrides the header."),
    exposure: Optional[float] = typer.Option(None, "--exposure", help="Exposure per tilt (e/A^2)."),
    tilt_axis_angle: Optional[float] = typer.Option(None, "--tilt-axis-angle", help="Tilt axis (deg, CCW from image y)."),
    as_volume: bool = typer.Option(False, "--as-volume", help="The MRC is a volume (tomogram, map) even if it looks like a tilt-series stack."),
    ngff_version: str = typer.Option("0.4", "--ngff-version", help="0.4 (zarr format 2) or 0.5 (zarr format 3)."),
    levels: int = typer.Option(3, "--levels", help="Pyramid levels of the OME-Zarr output."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    anon: bool = ANON,
    endpoint_url: Optional[str] = ENDPOINT,
) -> None:
    """Convert MRC <-> OME-Zarr (and OME-Zarr 0.4 <-> 0.5). A tilt series to MRC also writes <name>.tlt.

    `--anon` applies to reading SOURCE (and the angle files); the output is written with credentials.
    """
    options, write_options = read_write_options(endpoint_url, anon)
    if is_mrc(source) and is_mrc(target):
        raise StoreError(target, "input and output are both MRC; one of them must be an OME-Zarr image (.zarr)", field="target")
    write_kwargs = dict(ngff_version=ngff_version, levels=levels, overwrite=overwrite, storage_options=write_options,
                        metadata={"stage": "convert", "parameters": {"source": source}})
    if is_mrc(source):
        if warp_xml:
            from cryocloud.store.warp import read_warp_xml

            warp = read_warp_xml(warp_xml, storage_options=options)
            stack = read_mrc(source, pixel_size=pixel_size or warp.pixel_size_a, storage_options=options)
            if stack.data.shape[0] != len(warp.tilt_angles):
                raise StoreError(warp_xml, f"lists {len(warp.tilt_angles)} tilts but {source} holds {stack.data.shape[0]} images", field="Angles")
            ts = warp.to_tilt_series(stack.data.data, pixel_size=stack.pixel_size, name=stack.data.name)
            write_tilt_series(ts, target, **write_kwargs)
            ignored = ", ".join(f"{k} up to {v:.3g}" for k, v in warp.not_applied.items() if v > 0)
            console.print(f"wrote {target} (a tilt series of {ts.n_tilts} tilts from {warp_xml}: tilt axis {ts.tilt_axis_angle:.2f} deg"
                          + (f"; not applied: {ignored}" if ignored else "") + ")")
            return
        if aln:
            from cryocloud.store.aretomo import read_aln

            alignment = read_aln(aln, storage_options=options)
            raw = read_tilt_series_mrc(source, tilt_angles=None if mdoc else alignment.raw_tilt_angles, mdoc=mdoc, pixel_size=pixel_size,
                                       exposure=exposure, storage_options=options)
            ts = alignment.apply_to(raw, source=aln)
            write_tilt_series(ts, target, **write_kwargs)
            patches = f"; its {alignment.n_patches} local patch alignments are not applied" if alignment.n_patches else ""
            console.print(f"wrote {target} (a tilt series of {ts.n_tilts} tilts aligned by {aln}: tilt axis {ts.tilt_axis_angle:.2f} deg{patches})")
            return
        if tilt_angles or mdoc:
            ts = read_tilt_series_mrc(source, tilt_angles=tilt_angles, mdoc=mdoc, pixel_size=pixel_size, exposure=exposure,
                                      tilt_axis_angle=tilt_axis_angle, storage_options=options)
            write_tilt_series(ts, target, **write_kwargs)
            console.print(f"wrote {target} (a tilt series of {ts.n_tilts} tilts)")
            return
        if not as_volume:
            refuse_unannotated_stack(source, options)
        write_tomogram(require_volume(read_mrc(source, pixel_size=pixel_size, storage_options=options), source), target, **write_kwargs)
        console.print(f"wrote {target} (a tomogram: no --tilt-angles or --mdoc given)")
        return
    kind = (image_info(source, storage_options=options).get("cryocloud") or {}).get("kind", "tomogram")
    if kind == "tilt_series":
        ts = read_tilt_series(source, storage_options=options)
        if is_mrc(target):
            write_mrc(ts, target, overwrite=overwrite, storage_options=write_options)
            tlt = str(PurePosixPath(target).with_suffix(".tlt")) if "://" not in target else target.rsplit(".", 1)[0] + ".tlt"
            write_tlt(tlt, ts.tilt_angles, overwrite=overwrite, storage_options=write_options)
            console.print(f"wrote {target} and {tlt}")
            return
        write_tilt_series(ts, target, **write_kwargs)
    else:
        tomo = read_tomogram(source, storage_options=options)
        if is_mrc(target):
            write_mrc(tomo, target, overwrite=overwrite, storage_options=write_options)
        else:
            write_tomogram(tomo, target, **write_kwargs)
    console.print(f"wrote {target}")
