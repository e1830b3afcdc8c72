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


def run_pipeline(config: PipelineConfig, *, rerun_from: str | None = None) -> dict:
    """Run the configured stages on one tilt series (summary returned, also in summary.json) or,
    when the config names several inputs, on all of them (the batch summary)."""
    inputs = batch_inputs(config)
    if inputs is None:
        return run_series(config, rerun_from=rerun_from)
    return run_batch(config, inputs, rerun_from=rerun_from)


__all__ = [
    "STAGES",
    "STAGE_NAMES",
    "PipelineConfig",
    "RunContext",
    "alignment_errors",
    "correlation_with_truth",
    "load_config",
    "run_batch",
    "run_pipeline",
    "run_series",
]
