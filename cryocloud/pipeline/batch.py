"""Many tilt series in one run: each series' stages run in their own driver thread, at most
`batch.max_concurrent` at a time, so the cluster holds the graphs of that many series only
(bounded memory); results go under output/<name>/ and a batch summary to output/batch_summary.json.

Inputs are `inputs: [...]`, or an `input` prefix (folder or bucket prefix) that holds several
OME-Zarr tilt series (`*.zarr`) or SerialEM `.mdoc` files (movies beside them). CryoET Data Portal
inputs share one copick overlay at the output root (`copick_overlay`; batch_summary.json names its config).
"""

from __future__ import annotations

import json
import posixpath
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

from cryocloud.errors import CryocloudError
from cryocloud.pipeline.config import PipelineConfig
from cryocloud.pipeline.copick_overlay import write_batch_config
from cryocloud.store import open_url, resolve
from cryocloud.store.portal import is_portal_url, parse_portal_url, portal_address

SERIES_SUFFIXES = (".zarr", ".mdoc")


def series_name(url: str) -> str:
    """Output folder name of an input: its base name without .zarr / .mdoc (and .mrc of name.mrc.mdoc);
    for a portal address its run name, with the image id when it names one (RUN_ID)."""
    if is_portal_url(url):
        ref = parse_portal_url(portal_address(url))
        return ref.run if ref.ident is None else f"{ref.run}_{ref.ident}"
    name = posixpath.basename(url.rstrip("/"))
    for suffix in (".mdoc", ".zarr", ".mrc", ".tif", ".tiff"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _is_image(loc) -> bool:
    return loc.child(".zattrs").exists() or loc.child("zarr.json").exists()


def batch_inputs(config: PipelineConfig) -> list[str] | None:
    """The input URLs of a batch run, or None for a single tilt series."""
    if config.inputs:
        return list(config.inputs)
    if not config.input or config.input.lower().endswith(".mdoc") or is_portal_url(config.input):
        return None  # a portal address names one run's tilt series
    loc = resolve(config.input, config.storage_options)
    if _is_image(loc):
        return None
    fs = loc.filesystem()
    if not fs.isdir(loc.path):
        raise CryocloudError(f"input {config.input}: neither a tilt series (OME-Zarr), a .mdoc nor a folder of them")
    found = sorted(p for p in fs.ls(loc.path, detail=False) if p.rstrip("/").lower().endswith(SERIES_SUFFIXES))
    if not found:
        raise CryocloudError(f"input {config.input}: no tilt series (*.zarr) or *.mdoc inside; expected a tilt series or a prefix of them")
    return [loc.child(posixpath.basename(p.rstrip("/"))).url for p in found]


def run_batch(config: PipelineConfig, inputs: list[str], *, rerun_from: str | None = None) -> dict:
    """Run every input through the stages (see module); returns the batch summary. A series that
    fails is recorded with its error and the others go on; CryocloudError at the end if any failed."""
    from cryocloud.pipeline.run import run_series

    names = [series_name(u) for u in inputs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CryocloudError(f"inputs: several inputs would write to output/{duplicates[0]}; rename them")
    root = resolve(config.output, config.storage_options)
    t0 = time.monotonic()

    def one(url: str, name: str) -> dict:
        series = config.model_copy(update={"input": url, "inputs": None, "output": root.child(name).url})
        record = {"input": url, "started_s": round(time.monotonic() - t0, 3)}
        try:
            summary = run_series(series, rerun_from=rerun_from, label=name, overlay_root=root.url if is_portal_url(url) else None)
            record.update(status="done", summary=f"{name}/summary.json", report=f"{name}/report.html", key_figures=_key_figures(summary))
            if "copick" in summary:
                record["copick"] = summary["copick"]
        except CryocloudError as exc:
            record.update(status="failed", error=str(exc))
        except Exception as exc:  # a bug in one series must not lose the others' results
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        record["finished_s"] = round(time.monotonic() - t0, 3)
        return record

    with ThreadPoolExecutor(max_workers=config.batch.max_concurrent, thread_name_prefix="series") as pool:
        results = dict(zip(names, pool.map(one, inputs, names)))
    batch = {"n_series": len(inputs), "max_concurrent": config.batch.max_concurrent, "series": results}
    overlays = [r["copick"] for r in results.values() if "copick" in r]
    if overlays:  # portal inputs share the copick overlay at the output root: one config for all their runs
        batch["copick_config"] = write_batch_config(root.url, config.storage_options, overlays)
    with open_url(root.child("batch_summary.json").url, "w", storage_options=config.storage_options) as fh:
        json.dump(batch, fh, indent=2)
    failed = [n for n, r in results.items() if r["status"] != "done"]
    if failed:
        raise CryocloudError(f"{len(failed)} of {len(inputs)} tilt series failed ({', '.join(failed)}): "
                             f"{results[failed[0]]['error']}; see {root.child('batch_summary.json').url}")
    return batch


#: the figures of each stage a batch record and the end of `cryocloud run` show (summary.json has them all);
#: the scores against the truth appear on simulated data only
KEY_FIGURES = {
    "simulate": ("n_tilts", "n_particles"),
    "input": ("n_tilts",),
    "motion": ("n_tilts", "drift_rms_error_a"),
    "ctf": ("mean_defocus_a", "defocus_rms_error_a_low_tilt"),
    "align": ("tilt_axis_angle_deg", "axis_error_deg", "shift_rms_px"),
    "reconstruct": ("shape_zyx", "correlation_with_truth"),
    "denoise": ("method", "correlation_with_truth"),
    "segment": ("n_membranes", "dice"),
    "match": ("n_orientations",),
    "peaks": ("n_picks", "precision", "recall", "f4"),
    "average": ("n_particles", "resolution_a"),
}


def _key_figures(summary: dict) -> dict:
    return {f"{stage}.{key}": summary[stage][key] for stage, keys in KEY_FIGURES.items() for key in keys
            if key in summary.get(stage, {})}
