"""`cryocloud denoise`: CTF deconvolution and learned even/odd (Noise2Noise) denoising of OME-Zarr tomograms."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from cryocloud.cli.app import app
from cryocloud.cli.options import guarded, read_write_options
from cryocloud.cluster import describe, session
from cryocloud.errors import ModelError, OutputExistsError
from cryocloud.model import Tomogram
from cryocloud.store import read_tomogram, require_contrast, resolve, write_tomogram
from cryocloud.store.portal import is_portal_url

console = Console(highlight=False, stderr=True)
denoise_app = typer.Typer(help="Denoise tomograms: CTF deconvolution, learned even/odd (Noise2Noise).", no_args_is_help=True)
app.add_typer(denoise_app, name="denoise")

ANON = typer.Option(False, "--anon", help="Anonymous read access (public buckets).")
ENDPOINT = typer.Option(None, "--endpoint-url", help="S3-compatible endpoint.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing output.")
SCHEDULER = typer.Option(None, "--scheduler", help="Dask scheduler address (default: cryocloud.cluster).")
NGFF = typer.Option("0.4", "--ngff-version", help="0.4 (zarr v2) or 0.5 (zarr v3).")
LEVELS = typer.Option(3, "--levels", help="Pyramid levels to write.")


def stored_defocus(url: str, storage_options: dict | None) -> float | None:
    """Defocus (A) recorded in the cryocloud metadata of a stored tomogram (key `defocus_a`), if any."""
    from cryocloud.denoise.deconv import DEFOCUS_ATTR
    from cryocloud.store.images import cryocloud_attrs
    from cryocloud.store.ngff import open_image

    block = cryocloud_attrs(open_image(resolve(url, storage_options)))
    value = None if block is None else block.metadata.get(DEFOCUS_ATTR)
    return None if value is None else float(value)


def _write(tomo: Tomogram, before: Tomogram, out_url: str, *, inputs: dict[str, Tomogram], stage: str, parameters: dict, label: str,
           tile: int, extra: dict, ngff_version: str, levels: int, overwrite: bool, storage_options: dict | None, scheduler: Optional[str]) -> None:
    """Write the denoised tomogram (data first, metadata last) and its before/after slice figures, once
    each of the `inputs` (URL -> tomogram read from it) is found to have contrast."""
    from cryocloud.denoise.figures import write_before_after

    with session(scheduler) as client:
        console.print(describe(client))
        for url, tomogram in inputs.items():
            require_contrast(tomogram.data.data, url, what="the tomogram")
        write_tomogram(tomo, out_url, ngff_version=ngff_version, chunks=(tile,) * 3, levels=levels, overwrite=overwrite,
                       storage_options=storage_options, metadata={"stage": stage, "parameters": parameters, **extra})
    stored = read_tomogram(out_url, storage_options=storage_options)
    base = out_url.rstrip("/")
    stem = base[: -len(".zarr")] if base.endswith(".zarr") else base
    pngs = write_before_after(before.data.data, stored.data.data, stem, label=label, storage_options=storage_options)
    console.print(f"wrote {out_url}, {' and '.join(pngs)}")


def _refuse_existing(out_url: str, overwrite: bool, storage_options: dict | None) -> None:
    if not overwrite and resolve(out_url, storage_options).exists():
        raise OutputExistsError(f"{out_url} exists; use --overwrite to replace it")


@denoise_app.command("deconv")
@guarded(inputs=("in_url",), outputs=("out_url",))
def deconv_command(
    in_url: str = typer.Argument(..., help="Tomogram, OME-Zarr (local path, file:// or s3://)."),
    out_url: str = typer.Argument(..., help="Output tomogram, OME-Zarr."),
    strength: float = typer.Option(1.0, "--strength", help="Deconvolution strength (10^(3 strength) = low-frequency SNR)."),
    snr_falloff: float = typer.Option(1.0, "--snr-falloff", help="How fast the SNR falls with frequency (1.0-1.2 usual)."),
    highpass_nyquist: float = typer.Option(0.02, "--highpass-nyquist", help="High-pass cut-on, fraction of Nyquist."),
    defocus: Optional[float] = typer.Option(None, "--defocus", help="Defocus in A, underfocus > 0 (default: the input's metadata)."),
    phase_flipped: bool = typer.Option(False, "--phase-flipped", help="The data were CTF-corrected by phase flipping."),
    phase_shift: float = typer.Option(0.0, "--phase-shift", help="Phase-plate phase shift (deg)."),
    tile: int = typer.Option(128, "--tile", help="Tile edge (voxels)."),
    depth: int = typer.Option(32, "--overlap", help="Tile overlap on each side (voxels)."),
    ngff_version: str = NGFF,
    levels: int = LEVELS,
    overwrite: bool = OVERWRITE,
    anon: bool = ANON,
    endpoint_url: Optional[str] = ENDPOINT,
    scheduler: Optional[str] = SCHEDULER,
) -> None:
    """CTF deconvolution (Warp's filter) of a tomogram; writes OME-Zarr and before/after slice PNGs next to it."""
    from cryocloud.denoise.deconv import DEFOCUS_ATTR, DeconvSettings, deconvolve

    read_options, write_options = read_write_options(endpoint_url, anon)
    _refuse_existing(out_url, overwrite, write_options)
    settings = DeconvSettings(strength, snr_falloff, highpass_nyquist, phase_flipped, phase_shift)
    tomo = read_tomogram(in_url, storage_options=read_options)
    if defocus is None:  # a portal tomogram carries its tilt series' mean defocus (cryocloud.store.portal)
        defocus = tomo.data.attrs.get(DEFOCUS_ATTR) if is_portal_url(in_url) else stored_defocus(in_url, read_options)
        if defocus is None:
            raise ModelError("defocus", f"is not recorded (metadata '{DEFOCUS_ATTR}'); give --defocus in Angstrom", source=in_url)
    result = deconvolve(tomo, settings, defocus_a=defocus, tile=tile, depth=depth)
    console.print(f"{in_url}: {tomo.shape} voxels of {tomo.pixel_size:.3f} A, defocus {defocus:.0f} A, strength {strength}, "
                  f"falloff {snr_falloff}, high-pass {highpass_nyquist} Nyquist")
    _write(result, tomo, out_url, inputs={in_url: tomo}, stage="denoise-deconv", parameters=result.data.attrs["denoise"], label="deconv", tile=tile,
           extra={DEFOCUS_ATTR: defocus}, ngff_version=ngff_version, levels=levels, overwrite=overwrite, storage_options=write_options, scheduler=scheduler)


@denoise_app.command("train")
@guarded(inputs=("even_url", "odd_url"), outputs=("model_url",))
def train_command(
    even_url: str = typer.Argument(..., help="Even-frame reconstruction, OME-Zarr."),
    odd_url: str = typer.Argument(..., help="Odd-frame reconstruction, OME-Zarr (same shape)."),
    model_url: str = typer.Argument(..., help="Output model folder (weights.pt + model.json)."),
    steps: int = typer.Option(500, "--steps", help="Optimiser steps."),
    patch: int = typer.Option(32, "--patch", help="Training sub-volume edge (voxels, multiple of 2**levels)."),
    n_patches: int = typer.Option(256, "--n-patches", help="Sub-volume pairs sampled."),
    batch: int = typer.Option(4, "--batch", help="Pairs per step."),
    channels: int = typer.Option(8, "--channels", help="Feature maps of the first U-Net stage."),
    levels: int = typer.Option(2, "--unet-levels", help="U-Net poolings."),
    learning_rate: float = typer.Option(1e-3, "--learning-rate", help="Adam learning rate."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device (default: cuda when available, else cpu)."),
    overwrite: bool = OVERWRITE,
    anon: bool = ANON,
    endpoint_url: Optional[str] = ENDPOINT,
) -> None:
    """Train a Noise2Noise denoiser on the even and odd reconstructions of one tilt series."""
    from cryocloud.denoise.noise2noise import CONFIG_FILE, N2NConfig, save_model, train

    read_options, write_options = read_write_options(endpoint_url, anon)
    if not overwrite and resolve(model_url, write_options).child(CONFIG_FILE).exists():
        raise OutputExistsError(f"{model_url} holds a model; use --overwrite to replace it")
    config = N2NConfig(channels=channels, levels=levels, patch=patch, n_patches=n_patches, batch=batch, steps=steps,
                       learning_rate=learning_rate, seed=seed, device=device)
    even = read_tomogram(even_url, storage_options=read_options)
    odd = read_tomogram(odd_url, storage_options=read_options)
    with Progress(TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.4f}"),
                  TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("train", total=steps, loss=float("nan"))
        model = train(even, odd, config, progress=lambda step, loss: bar.update(task, completed=step, loss=loss))
    save_model(model, model_url, overwrite=overwrite, storage_options=write_options)
    _, loss, val = model.history[-1]
    held_out = "no validation pairs" if val is None else f"validation loss {model.history[0][2]:.4f} -> {val:.4f}"
    console.print(f"wrote {model_url}: {steps} steps, training loss {loss:.4f}, {held_out}")


@denoise_app.command("predict")
@guarded(inputs=("in_url", "model_url", "odd_url"), outputs=("out_url",))
def predict_command(
    in_url: str = typer.Argument(..., help="Tomogram to denoise (the even half when --odd is given), OME-Zarr."),
    model_url: str = typer.Argument(..., help="Model folder written by 'cryocloud denoise train'."),
    out_url: str = typer.Argument(..., help="Output tomogram, OME-Zarr."),
    odd_url: Optional[str] = typer.Option(None, "--odd", help="Odd half: output the mean of both denoised halves."),
    difference: bool = typer.Option(
        False, "--difference", help="With --odd: output half the difference of the denoised halves instead, the null volume for "
        "`extract-peaks --null-match` (search it as the denoised tomogram).",
    ),
    tile: int = typer.Option(64, "--tile", help="Tile edge (voxels)."),
    depth: int = typer.Option(16, "--overlap", help="Tile overlap on each side (voxels)."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device (default: the model's, else cuda/cpu)."),
    ngff_version: str = NGFF,
    levels: int = LEVELS,
    overwrite: bool = OVERWRITE,
    anon: bool = ANON,
    endpoint_url: Optional[str] = ENDPOINT,
    scheduler: Optional[str] = SCHEDULER,
) -> None:
    """Denoise a tomogram (or an even/odd pair) with a trained Noise2Noise model, in overlapping tiles."""
    from cryocloud.denoise.noise2noise import denoise, denoise_halves, load_model

    read_options, write_options = read_write_options(endpoint_url, anon)
    _refuse_existing(out_url, overwrite, write_options)
    if difference and odd_url is None:
        raise ModelError("difference", "needs the odd half (--odd): the null volume is half the difference of the denoised halves")
    model = load_model(model_url, storage_options=read_options)
    tomo = read_tomogram(in_url, storage_options=read_options)
    inputs = {in_url: tomo}
    if odd_url is None:
        result = denoise(tomo, model, tile=tile, depth=depth, device=device)
        before = tomo
    else:
        odd = inputs[odd_url] = read_tomogram(odd_url, storage_options=read_options)
        result = denoise_halves(tomo, odd, model, difference=difference, tile=tile, depth=depth, device=device)
        before = tomo.with_data(tomo.data.data + (-1 if difference else 1) * odd.data.data)
    console.print(f"{in_url}: {tomo.shape} voxels, tiles of {tile} overlapping by {depth}")
    _write(result, before, out_url, inputs=inputs, stage="denoise-noise2noise", parameters=result.data.attrs["denoise"],
           label="noise2noise difference" if difference else "noise2noise",
           tile=tile, extra={}, ngff_version=ngff_version, levels=levels, overwrite=overwrite, storage_options=write_options,
           scheduler=scheduler)
