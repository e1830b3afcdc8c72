"""`cryocloud curate gallery | apply | export`: minislab galleries for accept/reject, the accepted
picks read back, and a 2D particle stack + STAR for 2D classification."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import typer
from rich.console import Console

from cryocloud.cli.app import app
from cryocloud.cli.options import guarded, read_write_options
from cryocloud.errors import ModelError
from cryocloud.model import Particles
from cryocloud.store import read_volume, require_contrast, resolve
from cryocloud.store.textfiles import write_text

curate_app = typer.Typer(help="Curate picks: minislab galleries, accept/reject, 2D particle stacks.", no_args_is_help=True)
app.add_typer(curate_app, name="curate")
console = Console(highlight=False, stderr=True)

BOX = typer.Option(32, "--box", help="Minislab edge (voxels).")
THICKNESS = typer.Option(None, "--thickness", help="Slab thickness (A; default half the box edge).")
AXIS = typer.Option("z", "--axis", help="Viewing axis: z (tomogram) or particle (each pick's own z axis).")
ENDPOINT = typer.Option(None, "--endpoint-url", help="S3-compatible endpoint.")
ANON = typer.Option(False, "--anon", help="Anonymous read access (public buckets).")


def _inputs(picks_url: str, tomogram_url: str, options: dict | None):
    from cryocloud.pick.formats import read_picks

    tomo = read_volume(tomogram_url, storage_options=options)
    particles = read_picks(picks_url, pixel_size=tomo.pixel_size, shape_zyx=tomo.shape, storage_options=options)
    if len(particles) == 0:
        raise ModelError("picks", "the pick list is empty", source=picks_url)
    particles.require_inside(tomo.shape, tomo.pixel_size, source=picks_url)
    return tomo, particles


@curate_app.command("gallery")
@guarded(inputs=("picks_url", "tomogram_url"), outputs=("out_url",))
def gallery(
    picks_url: str = typer.Argument(..., help="Pick list (.csv, .ndjson, .star, copick .json)."),
    tomogram_url: str = typer.Argument(..., help="Tomogram the picks belong to (OME-Zarr / MRC)."),
    out_url: str = typer.Argument(..., help="Output folder: gallery_NNN.png, ranking.csv, decisions.csv."),
    box: int = BOX,
    thickness: Optional[float] = THICKNESS,
    axis: str = AXIS,
    sort: str = typer.Option("score", "--sort", help="Gallery order: score | agreement (with the average of the top N) | input."),
    top_n: int = typer.Option(20, "--top-n", help="Particles in the first average (--sort agreement)."),
    mask_radius: Optional[float] = typer.Option(None, "--mask-radius", help="Correlation mask radius (A; default the box)."),
    columns: int = typer.Option(10, "--columns"),
    rows: int = typer.Option(8, "--rows"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing decisions.csv."),
    endpoint_url: Optional[str] = ENDPOINT,
    anon: bool = ANON,
) -> None:
    """Minislab gallery pages labelled with index and score, a ranking and a decisions.csv to edit (accept 1 -> 0)."""
    from cryocloud.curate.decisions import decisions_csv
    from cryocloud.curate.gallery import write_gallery
    from cryocloud.curate.minislab import minislabs
    from cryocloud.curate.rank import agreement_with_average, rank_by_agreement, rank_by_score
    from cryocloud.progress import compute
    from cryocloud.report import save_slices_png
    from cryocloud.store import open_url

    if sort not in ("score", "agreement", "input"):
        raise ModelError("sort", f"expected score, agreement or input, got {sort!r}")
    read_options, write_options = read_write_options(endpoint_url, anon)
    tomo, particles = _inputs(picks_url, tomogram_url, read_options)
    out = resolve(out_url, write_options)
    ranking = pd.DataFrame({"index": np.arange(len(particles)), "score": particles.scores})
    order = rank_by_score(particles) if sort == "score" else np.arange(len(particles))
    (images,) = compute(minislabs(tomo, particles, box=box, thickness_a=thickness or box * tomo.pixel_size / 2, axis=axis), description="minislabs")
    require_contrast(images, tomogram_url, what="the tomogram around the picks")
    if sort == "agreement":
        correlation, average = agreement_with_average(tomo, particles, box=box, top_n=min(top_n, len(particles)), mask_radius_a=mask_radius)
        ranking["agreement"] = correlation
        order = rank_by_agreement(correlation)
        with open_url(out.child("average_slices.png").url, "wb", storage_options=write_options) as f:
            save_slices_png(average, f, title=f"average of the top {min(top_n, len(particles))} by score")
    pages = write_gallery(images[order], order, particles.scores[order], out.url, columns=columns, rows=rows, title=picks_url.rstrip("/").rsplit("/", 1)[-1], storage_options=write_options)
    write_text(out.child("ranking.csv").url, ranking.iloc[order].to_csv(index=False), overwrite=True, storage_options=write_options)
    write_text(out.child("decisions.csv").url, decisions_csv(particles, order), overwrite=overwrite, storage_options=write_options)
    console.print(f"{out.url}: {len(pages)} gallery pages of {len(particles)} particles; edit decisions.csv, then `cryocloud curate apply`")


@curate_app.command("apply")
@guarded(inputs=("picks_url", "decisions_url", "tomogram_url"), outputs=("out_url",))
def apply(
    picks_url: str = typer.Argument(..., help="The pick list the decisions refer to."),
    decisions_url: str = typer.Argument(..., help="decisions.csv (index, accept) or JSON {\"accept\": [...]} / {\"reject\": [...]}."),
    out_url: str = typer.Argument(..., help="Accepted picks: .csv, .ndjson, .star or copick .json."),
    tomogram_url: Optional[str] = typer.Option(None, "--tomogram", help="Tomogram (voxel size and shape), needed for ndjson / STAR."),
    format: Optional[str] = typer.Option(None, "--format", help="ndjson | star | copick | csv (default from the name)."),
    object_name: str = typer.Option("particle", "--object-name", help="Class / copick object name."),
    endpoint_url: Optional[str] = ENDPOINT,
    anon: bool = ANON,
) -> None:
    """Write the accepted picks."""
    from cryocloud.curate.decisions import apply_decisions
    from cryocloud.pick.formats import read_picks
    from cryocloud.pick.formats import format_from_name, write_picks

    read_options, write_options = read_write_options(endpoint_url, anon)
    fmt = format or format_from_name(out_url)
    px = shape = None
    if tomogram_url:
        tomo = read_volume(tomogram_url, storage_options=read_options)
        px, shape = tomo.pixel_size, tomo.shape
    particles = read_picks(picks_url, pixel_size=px, shape_zyx=shape, storage_options=read_options)
    if fmt in ("ndjson", "star") and px is None:
        raise ModelError("tomogram", f"writing {fmt} needs the tomogram's voxel size and shape: give --tomogram", source=out_url)
    accepted = apply_decisions(particles, decisions_url, storage_options=read_options)
    write_picks(accepted, out_url, fmt, storage_options=write_options, pixel_size=px, shape_zyx=shape, object_name=object_name)
    console.print(f"{out_url}: {len(accepted)} of {len(particles)} particles accepted")


@curate_app.command("export")
@guarded(inputs=("picks_url", "tomogram_url", "decisions_url"), outputs=("out_url",))
def export(
    picks_url: str = typer.Argument(..., help="Pick list."),
    tomogram_url: str = typer.Argument(..., help="Tomogram the picks belong to."),
    out_url: str = typer.Argument(..., help="Output folder: particles.mrcs (minislab stack) and particles.star (RELION)."),
    decisions_url: Optional[str] = typer.Option(None, "--decisions", help="Export only the accepted picks."),
    box: int = BOX,
    thickness: Optional[float] = THICKNESS,
    axis: str = AXIS,
    overwrite: bool = typer.Option(False, "--overwrite"),
    endpoint_url: Optional[str] = ENDPOINT,
    anon: bool = ANON,
) -> None:
    """A 2D particle stack (minislabs) and its STAR file for 2D classification (CTF correction off)."""
    from cryocloud.curate.decisions import apply_decisions
    from cryocloud.curate.export import export_stack
    from cryocloud.curate.minislab import minislabs
    from cryocloud.progress import compute

    read_options, write_options = read_write_options(endpoint_url, anon)
    tomo, particles = _inputs(picks_url, tomogram_url, read_options)
    if decisions_url:
        particles = apply_decisions(particles, decisions_url, storage_options=read_options)
    if not any(particles.tomogram.astype(str)):  # RELION needs a micrograph name per particle
        particles = Particles.create(particles.positions, particles.rotations, particles.scores, tomogram_url, particles.class_name)
    (images,) = compute(minislabs(tomo, particles, box=box, thickness_a=thickness or box * tomo.pixel_size / 2, axis=axis), description="minislabs")
    require_contrast(images, tomogram_url, what="the tomogram around the picks")
    stack, star = export_stack(images, particles, out_url, pixel_size_a=tomo.pixel_size, microscope=tomo.microscope, overwrite=overwrite, storage_options=write_options)
    console.print(f"{star}: {len(particles)} particles in {stack}")


@curate_app.command("auto")
@guarded(inputs=("picks_url", "tomogram_url"), outputs=("out_url",))
def auto(
    picks_url: str = typer.Argument(..., help="Pick list (e.g. template matching's, .csv, .ndjson, .star, copick .json)."),
    tomogram_url: str = typer.Argument(..., help="Tomogram the picks belong to (OME-Zarr / MRC)."),
    out_url: str = typer.Argument(..., help="Output folder: decisions.csv (index, score, agreement, accept) and average_slices.png."),
    keep: str = typer.Option("split", "--keep", help="split (two-class split of the agreement) | top:F (best fraction F) | min:C (agreement >= C)."),
    box: int = typer.Option(24, "--box", help="Box edge for the average and the agreement (voxels)."),
    top_n: int = typer.Option(10, "--top-n", help="Best-scoring picks in the first average."),
    mask_radius: Optional[float] = typer.Option(None, "--mask-radius", help="Correlation mask radius (A; default the box)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing decisions.csv."),
    endpoint_url: Optional[str] = ENDPOINT,
    anon: bool = ANON,
) -> None:
    """Accept/reject picks by their agreement with the average of the best-scoring ones; the
    decisions.csv can be reviewed (with `curate gallery`) and read by `curate apply`."""
    from cryocloud.curate.auto import curate_automatically
    from cryocloud.curate.decisions import decisions_csv
    from cryocloud.curate.rank import rank_by_agreement
    from cryocloud.report import save_slices_png
    from cryocloud.store import open_url

    read_options, write_options = read_write_options(endpoint_url, anon)
    tomo, particles = _inputs(picks_url, tomogram_url, read_options)
    if len(particles) < 2:
        raise ModelError("picks", f"automatic curation needs at least 2 picks, got {len(particles)}", source=picks_url)
    curation = curate_automatically(tomo, particles, box=box, top_n=top_n, mask_radius_a=mask_radius, keep=keep)
    require_contrast(curation.average, tomogram_url, what="the tomogram around the best-scoring picks")
    out = resolve(out_url, write_options)
    with open_url(out.child("average_slices.png").url, "wb", storage_options=write_options) as f:
        save_slices_png(curation.average, f, title=f"average of the top {min(top_n, len(particles))} by score")
    text = decisions_csv(particles, rank_by_agreement(curation.agreement), accepted=curation.accepted, agreement=curation.agreement)
    write_text(out.child("decisions.csv").url, text, overwrite=overwrite, storage_options=write_options)
    console.print(f"{out.child('decisions.csv').url}: {int(curation.accepted.sum())} of {len(particles)} picks accepted (agreement >= {curation.threshold:.3f}, rule {keep}); then `cryocloud curate apply`")
