"""The `segment` stage: membranes of the denoised tomogram (the reconstruction when denoise did not
run) as an NGFF label image `segment/membranes.zarr` (one label per membrane) with an overlay
figure; scored (Dice) against the simulation's membrane mask when there is one."""

from __future__ import annotations

from functools import partial
from typing import Any

from cryocloud.pipeline.context import RunContext, complete

MEMBRANE_LABEL = 2  # in the digital twin's ground-truth labels (0 ice, 1 particle, 2 membrane, 3 gold)


def stage_segment(ctx: RunContext, overwrite: bool) -> None:
    from cryocloud.progress import compute
    from cryocloud.segment import evaluate_membranes, segment_membranes
    from cryocloud.segment.figures import save_overlay_png
    from cryocloud.store import read_labels, read_tomogram, write_labels

    so = ctx.storage_options
    url = ctx.url("segment", "membranes.zarr")
    tomo = ctx.results["denoised"] if ctx.results.get("denoised") is not None else ctx.results["tomogram"]
    stored = None if overwrite else complete(lambda: read_labels(url, storage_options=so))
    built = stored is None
    if built:
        result = segment_membranes(tomo, ctx.config.segment)
        write_labels(result.labels, url, overwrite=True, storage_options=so,
                     metadata={"stage": "segment", "parameters": result.labels.attrs["segmentation"]})
        stored = read_labels(url, storage_options=so)
    (count,) = compute(stored.data.max(), quiet=True)  # labels are 1..count
    figures: dict[str, Any] = {"source": "denoise" if tomo is ctx.results.get("denoised") else "reconstruct", "n_membranes": int(count)}
    if built:  # large candidates the thresholds left out (area A^2, centre, peak in noise units), also logged
        figures["left_out"] = list(result.left_out)
    truth = None
    if "truth" in ctx.results:
        labels = read_tomogram(ctx.url("simulation", "ground_truth", "labels.zarr"), storage_options=so)
        if labels.shape == stored.shape:
            truth = labels.data.data == MEMBRANE_LABEL
            angles = ctx.results["tilt_series"].tilt_angles
            scores = evaluate_membranes(stored.data, truth, tomo.pixel_size, (float(angles.min()), float(angles.max())))
            figures.update({k: round(v, 3) for k, v in scores.items()})
    ctx.summary["segment"] = figures
    caption = "membranes over the tomogram" + (" (yellow: true membranes)" if truth is not None else "")
    ctx.figure("segment", caption, "segment", "overlay.png",
               draw=partial(save_overlay_png, tomo.data.data, stored.data, truth=truth, title=f"{int(count)} membranes"), overwrite=built)
