"""The `denoise` stage: CTF deconvolution (Warp's filter, `cryocloud.denoise.deconv`) of the
reconstructed tomogram into `denoise/tomogram.zarr`, with before/after slices; scored against the
simulation's truth (correlation, like the reconstruct stage's) when there is one."""

from __future__ import annotations

from typing import Any

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
    from cryocloud.denoise import DeconvSettings, deconvolve
    from cryocloud.denoise.figures import write_before_after
    from cryocloud.store import read_tomogram, write_tomogram

    p = ctx.config.denoise
    so = ctx.storage_options
    url = ctx.url("denoise", "tomogram.zarr")
    tomo = ctx.results["tomogram"]
    stored = None if overwrite else complete(lambda: read_tomogram(url, storage_options=so))
    defocus = series_defocus(ctx)
    if stored is None and defocus is None:
        if ctx.config.stages and "denoise" in ctx.config.stages:
            raise ModelError("denoise.defocus_a", NO_DEFOCUS)
        ctx.summary["denoise"] = {"skipped": f"denoise.defocus_a: {NO_DEFOCUS}"}  # a default stage gives way
        return
    if stored is None:
        settings = DeconvSettings(strength=p.strength, snr_falloff=p.snr_falloff, highpass_nyquist=p.highpass_nyquist)
        denoised = deconvolve(tomo, settings, defocus_a=defocus, tile=p.tile, depth=p.overlap)
        write_tomogram(denoised, url, chunks=(p.tile,) * 3, overwrite=True, storage_options=so,
                       metadata={"stage": "denoise", "parameters": p.model_dump(), "defocus_a": denoised.data.attrs.get("defocus_a")})
        stored = read_tomogram(url, storage_options=so)
        write_before_after(tomo.data.data, stored.data.data, ctx.url("denoise", "slices"), label=p.method, storage_options=so)
    ctx.results["denoised"] = stored
    figures: dict[str, Any] = {"method": p.method, "shape_zyx": list(stored.shape)}
    truth = ctx.results.get("truth_volume")
    if truth is not None and truth.shape == stored.shape:
        offset = ctx.results.get("volume_offset_a", np.zeros(3))
        figures["correlation_with_truth"] = round(correlation_with_truth(stored, truth, offset), 4)
    ctx.summary["denoise"] = figures
    ctx.figure("denoise", "before: central XY and XZ slices", "denoise", "slices_before.png")
    ctx.figure("denoise", f"after {p.method}: central XY and XZ slices", "denoise", "slices_after.png")
