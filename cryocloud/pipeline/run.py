"""Running the stages of one tilt series: the order, resume and `--from`, summary.json and report.html."""

from __future__ import annotations

import json
import sys
import time
from typing import Callable

from cryocloud import __version__
from cryocloud.errors import CryocloudError
from cryocloud.pipeline.acquire import input_is_tomogram, stage_input, stage_motion, stage_simulate
from cryocloud.pipeline.average import stage_average
from cryocloud.pipeline.config import STAGE_NAMES, PipelineConfig
from cryocloud.pipeline.context import RunContext
from cryocloud.pipeline.copick_overlay import portal_source, write_overlay
from cryocloud.pipeline.denoise import stage_denoise
from cryocloud.pipeline.picking import stage_match, stage_peaks
from cryocloud.pipeline.segment import stage_segment
from cryocloud.pipeline.tomo import stage_align, stage_ctf, stage_reconstruct

STAGES: dict[str, Callable[[RunContext, bool], None]] = {
    "simulate": stage_simulate,
    "input": stage_input,
    "motion": stage_motion,
    "ctf": stage_ctf,
    "align": stage_align,
    "reconstruct": stage_reconstruct,
    "denoise": stage_denoise,
    "segment": stage_segment,
    "match": stage_match,
    "peaks": stage_peaks,
    "average": stage_average,
}
assert tuple(STAGES) == STAGE_NAMES
SOURCES = ("simulate", "input", "motion")
#: what runs when the config names no stages (after the source)
DEFAULT_STAGES = ("ctf", "align", "reconstruct", "denoise", "segment", "match", "peaks", "average")
#: the stages from images to a tomogram (not run on a tomogram input)
TILT_SERIES_STAGES = ("ctf", "align", "reconstruct")


def source_stage(config: PipelineConfig) -> str:
    """The stage that supplies the tilt series: simulate (no input), motion (a .mdoc) or input."""
    if not config.input:
        return "simulate"
    return "motion" if config.input.lower().endswith(".mdoc") else "input"


def stage_order(config: PipelineConfig) -> list[str]:
    """The stages to run, in order: the source first (simulate then motion when the simulation writes
    movies: their motion-corrected sums replace its summed tilt series), then the configured (or
    default) stages; on a portal tomogram none of ctf, align, reconstruct."""
    rest = [n for n in (DEFAULT_STAGES if config.stages is None else config.stages) if n not in SOURCES]
    if input_is_tomogram(config):  # a portal tomogram: the stages from images to a tomogram have nothing to do
        named = [n for n in config.stages or () if n in TILT_SERIES_STAGES]
        if named:
            raise CryocloudError(f"stages: {named} need a tilt series; the input {config.input} is a tomogram (drop them, or give the run's tilt series)")
        rest = [n for n in rest if n not in TILT_SERIES_STAGES]
    sources = [source_stage(config)]
    if sources == ["simulate"]:
        if config.simulate.frames_per_tilt() >= 2:
            sources.append("motion")
        elif "motion" in (config.stages or ()):
            raise CryocloudError("stages: 'motion' of a simulation needs movies; set simulate.overrides.frames_per_tilt to 2 or more")
    return sources + sorted(rest, key=STAGE_NAMES.index)


def run_series(config: PipelineConfig, *, rerun_from: str | None = None, label: str = "", overlay_root: str | None = None) -> dict:
    """Run the stages of one tilt series; returns the summary (also `output/summary.json`, then
    `output/report.html` unless `config.report` is False). A CryoET Data Portal input also gets the
    copick overlay of the results in the output, or in `overlay_root` (a batch's, whose config the batch
    writes) (`copick_overlay`; summary["copick"] says where)."""
    from cryocloud.report_html import write_report
    from cryocloud.store import open_url, resolve

    names = stage_order(config)
    if rerun_from is not None and rerun_from not in names:
        raise CryocloudError(f"--from {rerun_from!r}: expected one of the configured stages {names}")
    portal = portal_source(config)
    ctx = RunContext(config, resolve(config.output, config.storage_options))
    ctx.summary["software"] = {"cryocloud": __version__}
    overwrite = False
    prefix = f"[{label}] " if label else ""
    for number, name in enumerate(names, start=1):
        overwrite = overwrite or name == rerun_from
        start = time.perf_counter()
        print(f"{prefix}[stage {number}/{len(names)}] {name}", file=sys.stderr)  # with the stage's progress lines
        STAGES[name](ctx, overwrite)
        ctx.summary.setdefault(name, {})["seconds"] = round(time.perf_counter() - start, 2)
    ctx.summary["stages"] = names
    if portal is not None:
        ctx.summary["copick"] = write_overlay(ctx, portal, set(names[names.index(rerun_from):]) if rerun_from else set(), root=overlay_root)
        print(f"{prefix}copick overlay of portal://{portal.dataset}/{portal.run}: {ctx.summary['copick']['overlay_root']}")
    with open_url(ctx.url("summary.json"), "w", storage_options=config.storage_options) as fh:
        json.dump(ctx.summary, fh, indent=2)
    if config.report:
        write_report(ctx.root, ctx.summary, title=label or ctx.root.name)
    return ctx.summary
