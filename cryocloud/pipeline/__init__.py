"""The pipeline: a validated config -> a chain of stages, each persisted under the output URL and resumable.

Layout under `output` (one tilt series):
  simulation/            the digital twin's data and ground truth (when no input is given)
  motion/                motion-corrected tilt series, frame shifts, drift figure (input: a .mdoc, or the
                         simulation's movies: then also the even/odd frame sums even.zarr, odd.zarr)
  ctf/ align/ reconstruct/ denoise/ segment/ match/ peaks/ average/   each stage's results and figures
                         (reconstruct/even.zarr, odd.zarr: half tomograms; denoise/model/: noise2noise)
  summary.json           key figures of every stage, written after the stages
  report.html            the self-contained report (figures embedded)
A batch (several inputs) puts each series under output/<name>/ and writes output/batch_summary.json.

A stage is skipped when its result is complete (the store writes metadata last, so a complete
image reads back); `rerun_from` recomputes a stage and everything after it.

Modules: `config` (PipelineConfig, load_config), `context` (RunContext), stage modules `acquire`,
`tomo`, `picking`, `average`; `run` (one series), `batch` (many), `movies` (per-movie motion
correction shared with `cryocloud.watch`), `figures`.
"""

from __future__ import annotations

from cryocloud.pipeline.batch import batch_inputs, run_batch
from cryocloud.pipeline.config import STAGE_NAMES, PipelineConfig, load_config
from cryocloud.pipeline.context import RunContext
from cryocloud.pipeline.run import STAGES, run_series
from cryocloud.pipeline.tomo import alignment_errors, correlation_with_truth
from cryocloud.store.guard import protect, refuse_input_overlap
from cryocloud.store.location import Location, resolve, resolve_all


def configured_inputs(config: PipelineConfig) -> list[Location]:
    """The locations a run reads and never writes: `input` (a tilt series, tomogram, .mdoc or a prefix of
    them), every entry of `inputs`, and `match.template`; CryoET Data Portal inputs are read-only anyway."""
    return resolve_all([config.input, config.inputs, config.match.template], config.storage_options)


def run_pipeline(config: PipelineConfig, *, rerun_from: str | None = None) -> dict:
    """Run the configured stages on one tilt series (summary returned, also in summary.json) or,
    when the config names several inputs, on all of them (the batch summary).

    The output may not be, hold or lie inside an input (StoreError naming `output`, before any stage runs),
    and no stage writes over an input while the run lasts (`cryocloud.store.guard`)."""
    inputs = configured_inputs(config)
    refuse_input_overlap([resolve(config.output, config.storage_options)], inputs)
    with protect(inputs):
        series = batch_inputs(config)
        if series is None:
            return run_series(config, rerun_from=rerun_from)
        return run_batch(config, series, rerun_from=rerun_from)


__all__ = [
    "STAGES",
    "STAGE_NAMES",
    "PipelineConfig",
    "RunContext",
    "alignment_errors",
    "configured_inputs",
    "correlation_with_truth",
    "load_config",
    "run_batch",
    "run_pipeline",
    "run_series",
]
