"""`cryocloud train-picker` (a 3D U-Net from tomograms and their picks) and `cryocloud pick`
(particles from a trained picker, in the formats of extract-peaks)."""

from __future__ import annotations

from typing import List, Optional

import typer
from rich.console import Console

from cryocloud.cli.app import app
from cryocloud.cli.options import guarded, read_write_options
from cryocloud.errors import ModelError
from cryocloud.store import open_url, read_volume

console = Console(highlight=False, stderr=True)


def training_inputs(arguments: dict) -> list[str]:
    """train-picker's TOMO... PICKS...: every positional argument but the last."""
    return list(arguments["inputs"][:-1])


def model_folder(arguments: dict) -> list[str]:
    """train-picker's MODEL_DIR: the last positional argument."""
    return list(arguments["inputs"][-1:])


@app.command("train-picker")
@guarded(inputs=(training_inputs, "membranes"), outputs=(model_folder,))
def train_picker(
    inputs: List[str] = typer.Argument(..., help="TOMO... PICKS... MODEL_DIR: tomograms (OME-Zarr / MRC), one pick list each (same order), the output folder."),
    radius: float = typer.Option(..., "--radius", help="Particle radius (A): targets are balls of this radius."),
    membranes: Optional[List[str]] = typer.Option(None, "--membranes", help="Label volume per tomogram (same order) whose value --membrane-label marks membranes."),
    membrane_label: int = typer.Option(2, "--membrane-label", help="Label value of membranes (the digital twin's labels.zarr: 2); 0: every non-zero label (`cryocloud segment membranes` output)."),
    steps: int = typer.Option(300, "--steps", help="Training steps."),
    patch: int = typer.Option(32, "--patch", help="Training box edge (voxels, a multiple of 4)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Boxes per step."),
    patches_per_tomogram: int = typer.Option(64, "--patches-per-tomogram", help="Boxes sampled per tomogram."),
    device: str = typer.Option("auto", "--device", help="auto (GPU when present) | cpu | cuda."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model folder."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="S3-compatible endpoint."),
    anon: bool = typer.Option(False, "--anon", help="Anonymous read access (public buckets)."),
) -> None:
    """Train a picker; writes model.pt, picker.json, losses.csv and training_curve.png to MODEL_DIR."""
    from cryocloud.pick.formats import read_picks
    from cryocloud.learn.figures import training_curve_png
    from cryocloud.learn.model_io import save_picker
    from cryocloud.learn.train import TrainSettings, train

    if len(inputs) < 3 or len(inputs) % 2 == 0:
        raise ModelError("inputs", f"expected TOMO... PICKS... MODEL_DIR with as many pick lists as tomograms, got {len(inputs)} arguments")
    n = (len(inputs) - 1) // 2
    tomo_urls, pick_urls, model_dir = inputs[:n], inputs[n : 2 * n], inputs[-1]
    read_options, write_options = read_write_options(endpoint_url, anon)
    tomograms = [read_volume(u, storage_options=read_options) for u in tomo_urls]
    picks = [read_picks(u, pixel_size=t.pixel_size, shape_zyx=t.shape, storage_options=read_options) for u, t in zip(pick_urls, tomograms)]
    labels = None
    if membranes:
        if len(membranes) != n:
            raise ModelError("membranes", f"expected one label volume per tomogram ({n}), got {len(membranes)}")
        labels = [read_volume(u, storage_options=read_options) for u in membranes]
    settings = TrainSettings(steps=steps, patch=patch, batch_size=batch_size, patches_per_tomogram=patches_per_tomogram, device=device, seed=seed)
    picker = train(tomograms, picks, radius_a=radius, settings=settings, membranes=labels, membrane_label=membrane_label or None, names=tomo_urls)
    save_picker(picker, model_dir, overwrite=overwrite, storage_options=write_options)
    with open_url(model_dir.rstrip("/") + "/training_curve.png", "wb", storage_options=write_options) as f:
        f.write(training_curve_png(picker.losses, title=f"{sum(len(p) for p in picks)} picks in {n} tomograms"))
    console.print(f"{model_dir}: {steps} steps, final loss {picker.losses[-10:].mean():.4f}")


@app.command("pick")
@guarded(inputs=("tomogram_url", "model_dir"), outputs=("out_url", "probabilities"))
def pick(
    tomogram_url: str = typer.Argument(..., help="Tomogram: OME-Zarr or MRC."),
    model_dir: str = typer.Argument(..., help="Folder of `cryocloud train-picker`."),
    out_url: str = typer.Argument(..., help="Particle list: .ndjson (portal), .star (RELION 5), .json (copick) or .csv."),
    format: Optional[str] = typer.Option(None, "--format", help="ndjson | star | copick | csv (default from the name)."),
    threshold: float = typer.Option(0.5, "--threshold", help="Probability above which voxels form particles."),
    min_fraction: float = typer.Option(0.1, "--min-fraction", help="Smallest component kept, in particle-ball volumes."),
    max_fraction: float = typer.Option(8.0, "--max-fraction", help="Largest component kept, in particle-ball volumes."),
    tile: int = typer.Option(128, "--tile", help="Tile edge (voxels, a multiple of 4, >= the overlap)."),
    probabilities: Optional[str] = typer.Option(None, "--probabilities", help="Also write the particle probability map (OME-Zarr)."),
    object_name: str = typer.Option("particle", "--object-name", help="Class / copick object name."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Write <out>_overlay.png."),
    device: str = typer.Option("auto", "--device", help="auto (GPU when present) | cpu | cuda."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing probability map."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="S3-compatible endpoint."),
    anon: bool = typer.Option(False, "--anon", help="Anonymous read access (public buckets)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Dask scheduler address (default: cryocloud.cluster)."),
) -> None:
    """Pick particles with a trained picker: tiled prediction, connected components."""
    import numpy as np

    from cryocloud.cluster import describe, session
    from cryocloud.learn.figures import overlay_png
    from cryocloud.learn.model_io import load_picker
    from cryocloud.learn.picks import picks_from_probability
    from cryocloud.learn.predict import class_map, predict
    from cryocloud.pick.figures import slice_planes
    from cryocloud.pick.formats import format_from_name, write_picks
    from cryocloud.store import write_tomogram

    read_options, write_options = read_write_options(endpoint_url, anon)
    fmt = format or format_from_name(out_url)
    tomo = read_volume(tomogram_url, storage_options=read_options)
    picker = load_picker(model_dir, storage_options=read_options)
    radius = picker.config.radius_a
    with session(scheduler) as client:
        console.print(describe(client))
        probability = class_map(predict(tomo, picker, tile=tile, device=device))
        if probabilities:
            write_tomogram(probability, probabilities, overwrite=overwrite, storage_options=write_options, metadata={"picker": model_dir})
            probability = read_volume(probabilities, storage_options=write_options)
        else:
            from cryocloud.progress import persist

            (persisted,) = persist(probability.data.data, description="picker probabilities")
            probability = probability.with_data(persisted)
        particles = picks_from_probability(
            probability.data, radius_a=radius, threshold=threshold, min_fraction=min_fraction, max_fraction=max_fraction,
            tomogram=tomogram_url, class_name=object_name,
        )
        write_picks(particles, out_url, fmt, storage_options=write_options, pixel_size=tomo.pixel_size, shape_zyx=tomo.shape, object_name=object_name)
        console.print(f"{out_url}: {len(particles)} particles (threshold {threshold}, radius {radius:.1f} A)")
        if figures:
            z = slice_planes(tomo.shape[0], particles, tomo.pixel_size)[-1]
            image, prob = (np.asarray(v.data.data[z]) for v in (tomo, probability))
            with open_url(out_url.rsplit(".", 1)[0] + "_overlay.png", "wb", storage_options=write_options) as f:
                f.write(overlay_png(image, prob, particles, z, tomo.pixel_size, radius, title=f"{tomogram_url} with {model_dir}"))
