"""The pipeline: a validated config -> a chain of stages, each persisted under the output URL and resumable.

Layout under `output`:
  simulation/            the digital twin's data and ground truth (when no input is given)
  reconstruct/tomogram.zarr
  summary.json           key figures of every stage, written last

A stage is skipped when its result is complete (the store writes metadata last, so a complete
image reads back); `rerun_from` recomputes a stage and everything after it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pydantic
import yaml

from cryocloud import __version__
from cryocloud.errors import CryocloudError, StoreError
from cryocloud.progress import compute

log = logging.getLogger(__name__)


class _Section(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class SimulateParams(_Section):
    """Used when `input` is empty: a preset of `cryocloud.simulate` plus field overrides."""

    preset: Literal["toy", "small", "realistic"] = "small"
    overrides: dict[str, Any] = pydantic.Field(
        default_factory=lambda: {"tilt_axis_angle_deg": 85.0, "shift_sigma_a": 40.0},
        description="SimulationConfig fields; the default misaligns the images as a microscope does",
    )


class CtfParams(_Section):
    defocus_min_a: float = pydantic.Field(5000.0, gt=0)
    defocus_max_a: float = pydantic.Field(70000.0, gt=0)
    min_resolution_a: float = pydantic.Field(30.0, gt=0, description="low-resolution end of the fitted band (A)")


class MatchParams(_Section):
    template: str | None = pydantic.Field(None, description="map (MRC/.em) or atomic model; default: the simulated structure")
    template_voxel_size_a: float | None = pydantic.Field(None, gt=0, description="voxel size of a map template (A)")
    angular_increment_deg: float = pydantic.Field(30.0, gt=0, le=90)
    symmetry: str = "C1"
    pyramid_level: int = pydantic.Field(1, ge=0, description="tomogram level to search (1 = binned by 2)")
    resolution_a: float | None = pydantic.Field(None, gt=0)
    subvolume: int = pydantic.Field(96, ge=16)


class PeaksParams(_Section):
    n_false: float | None = pydantic.Field(1.0, gt=0, description="expected false positives (statistical cut-off)")
    number: int | None = pydantic.Field(None, gt=0, description="or keep the best N")
    radius_fraction: float = pydantic.Field(0.8, gt=0, description="NMS radius as a fraction of the template radius")


class AlignParams(_Section):
    refine: Literal["projection-matching", "patch-tracking", "none"] = "projection-matching"
    iterations: int = pydantic.Field(3, ge=1)
    estimate_axis: bool = True
    binning: int | None = pydantic.Field(None, ge=1)


class ReconstructParams(_Section):
    thickness_px: int | None = pydantic.Field(None, gt=0)
    binning: int = pydantic.Field(1, ge=1)
    filter: Literal["radial", "sirt", "none"] = "radial"
    sirt_iterations: int = pydantic.Field(10, ge=1)


class PipelineConfig(_Section):
    """What `cryocloud run` does. Unknown keys and bad values are errors that name the key."""

    input: str | None = pydantic.Field(None, description="tilt series OME-Zarr URL; empty = simulate one")
    output: str = pydantic.Field("cryocloud-output", description="output URL (folder or s3:// prefix)")
    stages: list[str] | None = pydantic.Field(None, description="stages to run, in order; default all")
    simulate: SimulateParams = pydantic.Field(default_factory=SimulateParams)
    ctf: CtfParams = pydantic.Field(default_factory=CtfParams)
    align: AlignParams = pydantic.Field(default_factory=AlignParams)
    reconstruct: ReconstructParams = pydantic.Field(default_factory=ReconstructParams)
    match: MatchParams = pydantic.Field(default_factory=MatchParams)
    peaks: PeaksParams = pydantic.Field(default_factory=PeaksParams)
    cluster: dict[str, Any] = pydantic.Field(default_factory=dict, description="cryocloud.cluster overrides")
    storage_options: dict[str, Any] | None = None

    @pydantic.field_validator("stages")
    @classmethod
    def _known_stages(cls, value: list[str] | None) -> list[str] | None:
        unknown = [s for s in value or [] if s not in STAGE_NAMES]
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}; expected some of {STAGE_NAMES}")
        return value


def load_config(path: str | Path | None) -> PipelineConfig:
    """Read and validate a YAML pipeline config (safe loader); None gives the defaults."""
    if path is None:
        return PipelineConfig()
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise CryocloudError(f"{p}: config file not found") from None
    except yaml.YAMLError as exc:
        raise CryocloudError(f"{p}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CryocloudError(f"{p}: expected a mapping of config keys at the top level, got {type(raw).__name__}")
    try:
        return PipelineConfig(**raw)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise CryocloudError(f"{p}: {problems}") from None


@dataclass
class RunContext:
    """What stages share: the config, the output root and the results so far."""

    config: PipelineConfig
    root: Any  # cryocloud.store.Location
    overwrite_from: int | None = None
    results: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def url(self, *parts: str) -> str:
        return self.root.child(*parts).url

    @property
    def storage_options(self) -> dict | None:
        return self.config.storage_options


def _complete(read: Callable[[], Any]) -> Any | None:
    """The result of `read()` when the stored output is complete, else None."""
    try:
        return read()
    except (StoreError, FileNotFoundError):
        return None


def stage_simulate(ctx: RunContext, overwrite: bool) -> None:
    from cryocloud.simulate import preset, simulate, write_simulation
    from cryocloud.store import open_url, read_particles_csv, read_tilt_series, read_tomogram

    cfg = ctx.config
    so = ctx.storage_options
    sim_url = ctx.url("simulation")
    if overwrite or not ctx.root.child("simulation", "ground_truth", "truth.json").exists():
        sim_cfg = preset(cfg.simulate.preset, **cfg.simulate.overrides)
        result = simulate(sim_cfg)
        print(f"simulating {sim_cfg.shape_zyx} voxels at {sim_cfg.pixel_size_a} A, {result.tilt_series.n_tilts} tilts")
        write_simulation(result, sim_url, overwrite=True, storage_options=so)
    ctx.results["tilt_series"] = read_tilt_series(ctx.url("simulation", "tilt_series.zarr"), storage_options=so)
    ctx.results["truth_volume"] = read_tomogram(ctx.url("simulation", "ground_truth", "volume.zarr"), storage_options=so)
    with open_url(ctx.url("simulation", "ground_truth", "truth.json"), "r", storage_options=so) as fh:
        ctx.results["truth"] = json.load(fh)
    ctx.results["truth_particles"] = read_particles_csv(ctx.url("simulation", "ground_truth", "particles.csv"), storage_options=so)
    ts = ctx.results["tilt_series"]
    ctx.summary["simulate"] = {
        "n_tilts": ts.n_tilts,
        "pixel_size_a": ts.pixel_size,
        "n_particles": len(ctx.results["truth_particles"]),
    }


def stage_input(ctx: RunContext, overwrite: bool) -> None:
    from cryocloud.store import read_tilt_series

    ts = read_tilt_series(ctx.config.input, storage_options=ctx.storage_options)
    ctx.results["tilt_series"] = ts
    ctx.summary["input"] = {"url": ctx.config.input, "n_tilts": ts.n_tilts, "pixel_size_a": ts.pixel_size}


def stage_ctf(ctx: RunContext, overwrite: bool) -> None:
    from cryocloud.preprocess.ctf_estimate import estimate_ctf
    from cryocloud.preprocess.ctffind_io import apply_ctf_table, format_ctffind, parse_ctffind
    from cryocloud.store import open_url, resolve

    p = ctx.config.ctf
    ts = ctx.results["tilt_series"]
    finest_a = 2.0 * ts.pixel_size / 0.95  # the fit stops just below Nyquist
    if finest_a > 0.8 * p.min_resolution_a:
        reason = f"pixel size {ts.pixel_size:g} A leaves no Thon rings between {p.min_resolution_a:g} and {finest_a:.1f} A"
        log.warning("CTF estimation skipped: %s", reason)
        ctx.summary["ctf"] = {"skipped": reason}
        return
    url = ctx.url("ctf", "ctffind4.txt")
    so = ctx.storage_options
    if overwrite or not resolve(url, so).exists():
        table = estimate_ctf(ts, defocus_range_a=(p.defocus_min_a, p.defocus_max_a), min_resolution_a=p.min_resolution_a,
                             quiet=False).table
        with open_url(url, "w", storage_options=so) as fh:
            fh.write(format_ctffind(table, pixel_size_a=ts.pixel_size, microscope=ts.microscope))
    with open_url(url, "r", storage_options=so) as fh:
        table = parse_ctffind(fh.read(), source=url)
    ts = apply_ctf_table(ts, table, source=url)
    ctx.results["tilt_series"] = ts
    mean_defocus = 0.5 * (ts.per_tilt("defocus_u") + ts.per_tilt("defocus_v"))
    figures: dict[str, Any] = {"mean_defocus_a": round(float(mean_defocus.mean()), 1)}
    truth = ctx.results.get("truth")
    if truth is not None:
        true_mean = 0.5 * (np.asarray(truth["defocus_u_a"]) + np.asarray(truth["defocus_v_a"]))
        low = np.abs(ts.tilt_angles) <= 30
        figures["defocus_rms_error_a_low_tilt"] = round(float(np.sqrt(np.mean((mean_defocus - true_mean)[low] ** 2))), 1)
    ctx.summary["ctf"] = figures


def stage_align(ctx: RunContext, overwrite: bool) -> None:
    from cryocloud.alignment import align_tilt_series, apply_alignment
    from cryocloud.alignment.outputs import write_alignment
    from cryocloud.store import read_tilt_series

    p = ctx.config.align
    url = ctx.url("align", "tilt_series.zarr")
    so = ctx.storage_options
    stored = None if overwrite else _complete(lambda: read_tilt_series(url, storage_options=so))
    if stored is None:
        ts = ctx.results["tilt_series"]
        result = align_tilt_series(ts, refine=p.refine, iterations=p.iterations, estimate_axis=p.estimate_axis, binning=p.binning)
        write_alignment(ts, result, url, parameters=p.model_dump(), overwrite=overwrite, storage_options=so, title="alignment")
        stored = read_tilt_series(url, storage_options=so)
    ctx.results["tilt_series"] = apply_alignment(stored)
    figures: dict[str, Any] = {"tilt_axis_angle_deg": round(stored.tilt_axis_angle, 3)}
    truth = ctx.results.get("truth")
    if truth is not None:
        figures.update(alignment_errors(stored, truth))
        ctx.results["volume_offset_a"] = np.array(figures["volume_offset_xyz_a"])
    ctx.summary["align"] = figures


def alignment_errors(aligned: Any, truth: dict) -> dict:
    """Alignment against the simulation's truth: axis error (deg), shift RMS (px) with the
    volume-translation gauge removed, and that translation (A, x y z) of the tomogram vs the truth."""
    from cryocloud.alignment.axis import gauge_translation, remove_raw_gauge
    from cryocloud.geometry import rotation_2d

    px = aligned.pixel_size
    angles = np.asarray(truth["tilt_angles"])
    true_axis = float(truth["tilt_axis_angle_deg"])
    error_a = np.stack([aligned.per_tilt("shift_x"), aligned.per_tilt("shift_y")], axis=1) - np.asarray(truth["shifts_xy_a"])
    rms_px = np.sqrt(np.mean(np.sum((remove_raw_gauge(error_a, angles, true_axis) / px) ** 2, axis=1)))
    # images shifted by more than the truth show the volume moved the other way
    offset = -gauge_translation(error_a @ rotation_2d(true_axis), angles)
    return {
        "axis_error_deg": round(abs(aligned.tilt_axis_angle - true_axis), 3),
        "shift_rms_px": round(float(rms_px), 3),
        "volume_offset_xyz_a": [round(float(v), 2) for v in offset],
    }


def stage_reconstruct(ctx: RunContext, overwrite: bool) -> None:
    from cryocloud.reconstruct import reconstruct
    from cryocloud.report import save_slices_png
    from cryocloud.store import open_url, read_tomogram, write_tomogram

    p = ctx.config.reconstruct
    url = ctx.url("reconstruct", "tomogram.zarr")
    so = ctx.storage_options
    tomo = None if overwrite else _complete(lambda: read_tomogram(url, storage_options=so))
    if tomo is None:
        ts = ctx.results["tilt_series"]
        truth = ctx.results.get("truth_volume")
        thickness = p.thickness_px or (truth.shape[0] // p.binning if truth is not None else None)
        built = reconstruct(ts, thickness_px=thickness, binning=p.binning, filter=p.filter, sirt_iterations=p.sirt_iterations)
        write_tomogram(built, url, overwrite=overwrite, storage_options=so, metadata={"stage": "reconstruct", "parameters": p.model_dump()})
        tomo = read_tomogram(url, storage_options=so)
    ctx.results["tomogram"] = tomo
    with open_url(ctx.url("reconstruct", "slices.png"), "wb", storage_options=so) as fh:
        save_slices_png(tomo.data, fh, title="tomogram")
    figures = {"shape_zyx": list(tomo.shape), "voxel_size_a": tomo.pixel_size}
    truth = ctx.results.get("truth_volume")
    if truth is not None and truth.shape == tomo.shape:
        offset = ctx.results.get("volume_offset_a", np.zeros(3))
        figures["correlation_with_truth"] = round(correlation_with_truth(tomo, truth, offset), 4)
    ctx.summary["reconstruct"] = figures


def correlation_with_truth(tomo: Any, truth: Any, offset_xyz_a: np.ndarray, crop: int = 128) -> float:
    """Pearson correlation of a central crop (<= `crop` voxels a side) of the tomogram with the
    ground-truth volume moved by `offset_xyz_a` (A, the alignment's volume translation).

    Proteins are dark in cryo-ET images, so a good reconstruction correlates negatively.
    """
    shift = np.round(np.asarray(offset_xyz_a)[::-1] / tomo.pixel_size).astype(int)  # (z, y, x) voxels
    tomo_sl, truth_sl = [], []
    for n, s in zip(tomo.shape, shift):
        size = min(crop, n - abs(s))
        if size < 2:
            return float("nan")
        lo = max((n - size) // 2, max(0, s))
        lo = min(lo, n - size, n - size + s) if s > 0 else min(lo, n - size + s)
        tomo_sl.append(slice(lo, lo + size))
        truth_sl.append(slice(lo - s, lo - s + size))
    (r,) = compute(_correlation(tomo.data.data[tuple(tomo_sl)], truth.data.data[tuple(truth_sl)]), quiet=True)
    return float(r)


def stage_match(ctx: RunContext, overwrite: bool) -> None:
    from cryocloud.pick import MatchSettings, TiltWeighting, map_from_model, prepare_template, read_map, uniform_rotations
    from cryocloud.pick.results import run_match
    from cryocloud.simulate.atomic import BUNDLED_STRUCTURE
    from cryocloud.store import read_tomogram, resolve

    p = ctx.config.match
    so = ctx.storage_options
    url = ctx.url("match")
    tomo = read_tomogram(ctx.url("reconstruct", "tomogram.zarr"), level=p.pyramid_level, storage_options=so)
    px = tomo.pixel_size
    path = p.template or str(ctx.results.get("structure") or BUNDLED_STRUCTURE)
    if path.endswith((".mrc", ".map", ".em", ".rec")):
        volume, template_px = read_map(path, voxel_size=p.template_voxel_size_a)
    else:
        volume, template_px = map_from_model(path, px), px
    template = prepare_template(volume, template_px, px)
    rotations = uniform_rotations(p.angular_increment_deg, p.symmetry)
    tilts = TiltWeighting.from_tilt_series(ctx.results["tilt_series"])
    settings = MatchSettings(resolution_a=p.resolution_a or 2.5 * px, subvolume=p.subvolume)
    if overwrite or not resolve(url, so).child("match.json").exists():
        run_match(tomo, template, rotations, url, tilts=tilts, settings=settings, overwrite=True, storage_options=so,
                  description={"template": path, "symmetry": p.symmetry, "pyramid_level": p.pyramid_level})
    ctx.results["template_radius_a"] = template.radius * px
    ctx.results["match_origin_a"] = np.array([float(tomo.data.coords[d].values[0]) for d in "xyz"])
    ctx.summary["match"] = {"n_orientations": int(len(rotations)), "voxel_size_a": px, "template": Path(path).name}


def stage_peaks(ctx: RunContext, overwrite: bool) -> None:
    from cryocloud.pick.evaluate import f_beta
    from cryocloud.pick.figures import write_score_figures
    from cryocloud.pick.formats import write_picks
    from cryocloud.pick.peaks import extract_peaks
    from cryocloud.pick.results import read_match
    from cryocloud.store import write_particles_csv

    p = ctx.config.peaks
    so = ctx.storage_options
    scores, orientation, rotations, summary = read_match(ctx.url("match"), storage_options=so)
    radius = p.radius_fraction * ctx.results["template_radius_a"]
    particles, threshold = extract_peaks(
        scores, orientation, rotations, radius_a=radius, n_false=p.n_false, number=p.number,
        score_std=summary["score_std"], n_search=summary["n_search"], tomogram="tomogram", class_name="ribosome",
    )
    particles = replace(particles, positions=particles.positions + ctx.results["match_origin_a"])  # binned-level voxel centres
    write_particles_csv(particles, ctx.url("peaks", "particles.csv"), overwrite=True, storage_options=so)
    write_picks(particles, ctx.url("peaks", "particles.star"), "star", storage_options=so,
                pixel_size=float(summary["voxel_size"]), shape_zyx=tuple(summary["shape_zyx"]))
    write_score_figures(scores, particles, threshold, ctx.url("peaks", "scores"), radius_a=radius, title="template matching",
                        storage_options=so)
    figures: dict[str, Any] = {"n_picks": len(particles), "threshold": None if threshold is None else round(threshold, 4)}
    truth = ctx.results.get("truth_particles")
    if truth is not None:
        expected = truth.positions + ctx.results.get("volume_offset_a", np.zeros(3))
        score = f_beta(particles.positions, expected, tolerance=ctx.results["template_radius_a"] / 2)
        figures.update({k: round(v, 3) for k, v in score.items()})
    ctx.summary["peaks"] = figures


def _correlation(a: Any, b: Any) -> Any:
    """Lazy Pearson correlation of two Dask arrays of the same shape."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    da_, db_ = a - a.mean(), b - b.mean()
    return (da_ * db_).sum() / np.sqrt((da_ * da_).sum() * (db_ * db_).sum())


STAGES: dict[str, Callable[[RunContext, bool], None]] = {
    "simulate": stage_simulate,
    "ctf": stage_ctf,
    "align": stage_align,
    "reconstruct": stage_reconstruct,
    "match": stage_match,
    "peaks": stage_peaks,
}
STAGE_NAMES = tuple(STAGES) + ("input",)


def run_pipeline(config: PipelineConfig, *, rerun_from: str | None = None) -> dict:
    """Run the configured stages; returns the summary (also written to `output/summary.json`)."""
    from cryocloud.store import resolve

    names = list(config.stages or STAGES)
    if config.input:
        names = ["input" if n == "simulate" else n for n in names]
        if "input" not in names:
            names.insert(0, "input")
    if rerun_from is not None and rerun_from not in names:
        raise CryocloudError(f"--from {rerun_from!r}: expected one of the configured stages {names}")
    ctx = RunContext(config, resolve(config.output, config.storage_options))
    ctx.summary["software"] = {"cryocloud": __version__}
    overwrite = False
    for name in names:
        overwrite = overwrite or name == rerun_from
        start = time.perf_counter()
        print(f"[stage] {name}")
        (stage_input if name == "input" else STAGES[name])(ctx, overwrite)
        ctx.summary.setdefault(name, {})["seconds"] = round(time.perf_counter() - start, 2)
    from cryocloud.store import open_url

    with open_url(ctx.url("summary.json"), "w", storage_options=config.storage_options) as fh:
        json.dump(ctx.summary, fh, indent=2)
    return ctx.summary
