"""The `denoise` stage: the reconstructed tomogram denoised into `denoise/tomogram.zarr`, with
before/after slices; scored against the simulation's truth (correlation, like the reconstruct
stage's) when there is one. Methods:
- `deconv`: CTF deconvolution (Warp's filter, `cryocloud.denoise.deconv`);
- `noise2noise`: a 3D U-Net trained on the even/odd half reconstructions (`cryocloud.denoise.noise2noise`),
  its model folder `denoise/model/` (reused on resume), the mean of both denoised halves as output.
When the match stage searches the denoised tomogram (`match.input: denoised`) and the even/odd half
tomograms exist, also `denoise/null.zarr`: their half difference, denoised alike (the null volume of
the empirical false-alarm cut-off, `cryocloud.pick.null`)."""

from __future__ import annotations

from functools import partial
from typing import IO, Any, Callable

import numpy as np

from cryocloud.errors import ModelError
from cryocloud.pipeline.context import RunContext, complete
from cryocloud.pipeline.tomo import correlation_with_truth


NO_DEFOCUS = "no defocus is known (the ctf stage did not run or was skipped); set it in the config (A)"


def series_defocus(ctx: RunContext) -> float | None:
    """Defocus (A) for the filter: the config's, else the mean of the tilt series' defocus values
    (estimated by the ctf stage or stored with the input); None when neither is known."""
    if ctx.config.denoise.defocus_a is not None:
        return ctx.config.denoise.defocus_a
    ts = ctx.results["tilt_series"]
    u, v = ts.per_tilt("defocus_u"), ts.per_tilt("defocus_v")
    if u is None or v is None or not np.all(np.isfinite(u)):
        return None
    return float(np.mean(0.5 * (u + v)))


def stage_denoise(ctx: RunContext, overwrite: bool) -> None:
    from cryocloud.denoise.figures import write_before_after
    from cryocloud.store import read_tomogram, write_tomogram

    p = ctx.config.denoise
    so = ctx.storage_options
    url = ctx.url("denoise", "tomogram.zarr")
    tomo = ctx.results["tomogram"]
    stored = None if overwrite else complete(lambda: read_tomogram(url, storage_options=so))
    figures: dict[str, Any] = {"method": p.method}
    ctx.summary["denoise"] = figures
    if p.method == "noise2noise":
        denoising = _noise2noise(ctx, overwrite or stored is None, figures)
    else:
        denoising = None if stored is not None and not _null_wanted(ctx) else _deconv(ctx)
        if stored is None and denoising is None:
            return
    if stored is None:
        denoised = denoising(difference=False)
        write_tomogram(denoised, url, chunks=(p.tile,) * 3, overwrite=True, storage_options=so,
                       metadata={"stage": "denoise", "parameters": p.model_dump(), "defocus_a": denoised.data.attrs.get("defocus_a")})
        stored = read_tomogram(url, storage_options=so)
        write_before_after(tomo.data.data, stored.data.data, ctx.url("denoise", "slices"), label=p.method, storage_options=so)
    ctx.results["denoised"] = stored
    figures["shape_zyx"] = list(stored.shape)
    if _null_wanted(ctx) and denoising is not None:
        _write_null(ctx, denoising, overwrite)
        figures["null"] = "denoise/null.zarr"
    truth = ctx.results.get("truth_volume")
    if truth is not None and truth.shape == stored.shape:
        offset = ctx.results.get("volume_offset_a", np.zeros(3))
        figures["correlation_with_truth"] = round(correlation_with_truth(stored, truth, offset), 4)
    ctx.figure("denoise", "before: central XY and XZ slices", "denoise", "slices_before.png")
    ctx.figure("denoise", f"after {p.method}: central XY and XZ slices", "denoise", "slices_after.png")


#: what `denoising(difference=...)` returns: the lazy denoised tomogram, or its null volume
Denoising = Callable[..., Any]


def _null_wanted(ctx: RunContext) -> bool:
    """The match stage searches the denoised tomogram and the even/odd halves exist: it needs the null volume."""
    return ctx.config.match.input == "denoised" and bool(ctx.results.get("tomogram_halves"))


def _write_null(ctx: RunContext, denoising: Denoising, overwrite: bool) -> None:
    """`denoise/null.zarr`: half the difference of the even/odd half tomograms, denoised as the tomogram
    was — its noise without its signal, for the match stage's empirical cut-off (cryocloud.pick.null)."""
    from cryocloud.store import read_tomogram, write_tomogram

    p, so = ctx.config.denoise, ctx.storage_options
    url = ctx.url("denoise", "null.zarr")
    if overwrite or complete(lambda: read_tomogram(url, storage_options=so)) is None:
        write_tomogram(denoising(difference=True), url, chunks=(p.tile,) * 3, overwrite=True, storage_options=so,
                       metadata={"stage": "denoise", "null": "(even - odd) / 2, denoised", "parameters": p.model_dump()})


def _deconv(ctx: RunContext) -> Denoising | None:
    """The CTF deconvolution of the tomogram (difference=False) or of its halves' difference
    (difference=True), lazy; None (with the reason in the summary) when no defocus is known and
    denoise was not asked for by name."""
    from cryocloud.denoise import DeconvSettings, deconvolve
    from cryocloud.pick.null import halves_difference

    p = ctx.config.denoise
    defocus = series_defocus(ctx)
    if defocus is None:
        if ctx.config.stages and "denoise" in ctx.config.stages:
            raise ModelError("denoise.defocus_a", NO_DEFOCUS)
        ctx.summary["denoise"] = {"skipped": f"denoise.defocus_a: {NO_DEFOCUS}"}  # a default stage gives way
        return None
    settings = DeconvSettings(strength=p.strength, snr_falloff=p.snr_falloff, highpass_nyquist=p.highpass_nyquist)

    def denoising(difference: bool) -> Any:
        halves = ctx.results.get("tomogram_halves")
        volume = halves_difference(halves["even"], halves["odd"]) if difference else ctx.results["tomogram"]
        return deconvolve(volume, settings, defocus_a=defocus, tile=p.tile, depth=p.overlap)

    return denoising


def _noise2noise(ctx: RunContext, retrain: bool, figures: dict[str, Any]) -> Denoising:
    """Train (or, when `denoise/model/` holds a complete model and nothing is recomputed, load) the
    even/odd denoiser; returns what denoises with it: the mean of both denoised halves, or half their
    difference. Training figures (steps, held-out loss before and after) go into `figures`."""
    from cryocloud.denoise.noise2noise import CONFIG_FILE, denoise_halves, load_model, save_model, train
    from cryocloud.progress import StageProgress

    p = ctx.config.denoise
    so = ctx.storage_options
    halves = ctx.results.get("tomogram_halves")
    if not halves:
        raise ModelError("denoise.method", "noise2noise needs even/odd half reconstructions: movies and the motion stage "
                                           "(simulate.overrides.frames_per_tilt >= 2) before reconstruct")
    folder = ctx.url("denoise", "model")
    trained = retrain or not ctx.exists("denoise", "model", CONFIG_FILE)
    if trained:
        steps, report = p.noise2noise.steps, StageProgress("noise2noise training", unit="steps")
        model = train(halves["even"], halves["odd"], p.noise2noise, progress=lambda step, _: report.update(step, steps))
        report.finish(steps, steps)
        save_model(model, folder, overwrite=True, storage_options=so)
    else:
        model = load_model(folder, storage_options=so)
    ctx.figure("denoise", "noise2noise training: loss per step", "denoise", "model", "loss.png",
               draw=partial(_loss_png, model.history), overwrite=trained)
    validation = [v for _, _, v in model.history if v is not None]
    figures.update({"training_steps": model.config.steps, "validation_loss_start": round(validation[0], 4),
                    "validation_loss_end": round(validation[-1], 4), "model": "denoise/model"})
    return partial(denoise_halves, halves["even"], halves["odd"], model, tile=p.tile, depth=p.overlap)


def _loss_png(history: list, target: IO[bytes]) -> None:
    """PNG of the training and held-out loss against the step (history as N2NModel.history)."""
    from cryocloud.plotting import subplots
    from cryocloud.preprocess.figures import save_png

    fig, ax = subplots(figsize=(4.5, 3.0))
    for column, label in ((1, "training"), (2, "held-out")):
        points = [(h[0], h[column]) for h in history if h[column] is not None]
        if points:
            ax.plot(*zip(*points), marker="o", ms=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("MSE (normalised)")
    ax.legend(fontsize=8)
    save_png(fig, target)
