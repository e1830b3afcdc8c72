"""Stages from images to a tomogram: `ctf` (CTFFIND4 table), `align` (IMOD .xf/.tlt) and
`reconstruct` (OME-Zarr pyramid), each scored against the simulation's truth when there is one."""

from __future__ import annotations

import json
import logging
from functools import partial
from typing import Any

import numpy as np

from cryocloud.pipeline.context import RunContext, complete
from cryocloud.progress import compute

log = logging.getLogger(__name__)


def _ctf_figures(ctx: RunContext, table: Any, overwrite: bool) -> None:
    from cryocloud.preprocess.ctf_estimate import FIT_COLUMNS, CtfFit
    from cryocloud.preprocess.figures import defocus_figure, save_png, spectrum_figure

    ts = ctx.results["tilt_series"]
    table = table.assign(tilt_angle=ts.tilt_angles)
    i = int(np.argmin(np.abs(ts.tilt_angles)))
    fit = CtfFit(*(float(table[c].iloc[i]) for c in FIT_COLUMNS))

    def spectrum(fh: Any) -> None:
        image = np.asarray(ts.data.data[i])
        save_png(spectrum_figure(image, fit, ts.pixel_size, microscope=ts.microscope, tilt_deg=float(ts.tilt_angles[i]),
                                 tilt_axis_angle_deg=ts.tilt_axis_angle), fh)

    ctx.figure("ctf", "CTF fit of the tilt nearest 0 deg", "ctf", "spectrum.png", draw=spectrum, overwrite=overwrite)
    ctx.figure("ctf", "defocus per tilt", "ctf", "defocus.png", draw=lambda fh: save_png(defocus_figure(table), fh), overwrite=overwrite)


def _handedness(ctx: RunContext, ts: Any, search: Any, overwrite: bool) -> dict:
    """The hand of the tilt angles (verdict, slope, its standard error, tilts used), checked once and kept
    in ctf/handedness.json."""
    from cryocloud.preprocess.handedness import estimate_handedness
    from cryocloud.store import open_url

    url = ctx.url("ctf", "handedness.json")
    so = ctx.storage_options
    if overwrite or not ctx.exists("ctf", "handedness.json"):
        result = estimate_handedness(ts, search=search, quiet=False)
        if result.verdict != "right":
            log.warning("%s", result.describe())
        with open_url(url, "w", storage_options=so) as fh:
            fh.write(result.to_json())
    with open_url(url, "r", storage_options=so) as fh:
        report = json.load(fh)
    return {key: report[key] for key in ("verdict", "slope", "slope_se", "n_tilts_used")}


def stage_ctf(ctx: RunContext, overwrite: bool) -> None:
    from cryocloud.preprocess.ctf_estimate import CtfSearch, estimate_ctf
    from cryocloud.preprocess.ctffind_io import apply_ctf_table, format_ctffind, parse_ctffind
    from cryocloud.store import open_url

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
    search = CtfSearch(defocus_range_a=(p.defocus_min_a, p.defocus_max_a), min_resolution_a=p.min_resolution_a,
                       series_window_a=p.series_window_a)
    if overwrite or not ctx.exists("ctf", "ctffind4.txt"):
        table = estimate_ctf(ts, search=search, quiet=False).table
        with open_url(url, "w", storage_options=so) as fh:
            fh.write(format_ctffind(table, pixel_size_a=ts.pixel_size, microscope=ts.microscope, box=search.box,
                                    resolution_range_a=search.resolution_range_a(ts.pixel_size), defocus_range_a=search.defocus_range_a))
    with open_url(url, "r", storage_options=so) as fh:
        table = parse_ctffind(fh.read(), source=url)
    ts = apply_ctf_table(ts, table, source=url)
    ctx.results["tilt_series"] = ts
    mean_defocus = 0.5 * (ts.per_tilt("defocus_u") + ts.per_tilt("defocus_v"))
    figures: dict[str, Any] = {"mean_defocus_a": round(float(mean_defocus.mean()), 1)}
    poor = table["micrograph"].isin(table.attrs.get("poor_fit", [])).to_numpy()  # named in the file's `# Poor fits` line
    if poor.any():
        figures["poor_fit_tilt_angles_deg"] = [round(float(a), 2) for a in ts.tilt_angles[poor]]
    truth = ctx.results.get("truth")
    if truth is not None:
        true_mean = 0.5 * (np.asarray(truth["defocus_u_a"]) + np.asarray(truth["defocus_v_a"]))
        low = np.abs(ts.tilt_angles) <= 30
        figures["defocus_rms_error_a_low_tilt"] = round(float(np.sqrt(np.mean((mean_defocus - true_mean)[low] ** 2))), 1)
    if p.handedness:
        figures["handedness"] = _handedness(ctx, ts, search, overwrite)
    ctx.summary["ctf"] = figures
    _ctf_figures(ctx, table.assign(poor_fit=poor), overwrite)


def stage_align(ctx: RunContext, overwrite: bool) -> None:
    from cryocloud.alignment import align_tilt_series, apply_alignment
    from cryocloud.alignment.outputs import write_alignment
    from cryocloud.store import read_tilt_series

    p = ctx.config.align
    url = ctx.url("align", "tilt_series.zarr")
    so = ctx.storage_options
    stored = None if overwrite else complete(lambda: read_tilt_series(url, storage_options=so))
    if stored is None:
        ts = ctx.results["tilt_series"]
        result = align_tilt_series(ts, refine=p.refine, iterations=p.iterations, estimate_axis=p.estimate_axis, binning=p.binning)
        write_alignment(ts, result, url, parameters=p.model_dump(), overwrite=True, storage_options=so, title="alignment")
        stored = read_tilt_series(url, storage_options=so)
    # Lazily resampled into the aligned frame here, as before `reconstruct` learnt to apply a stored alignment per
    # slab: the two give the same tomogram voxel for voxel (tests/test_align_chain.py), but the per-slab path
    # changes the reconstruction's slab layout, and on the movie twin the Noise2Noise picks then differ (one false
    # pick: tests/test_pipeline_movies.py precision 1.0 -> 0.667). Until that sensitivity is understood, the
    # pipeline keeps its tested data flow.
    ctx.results["tilt_series"] = apply_alignment(stored)
    if ctx.results.get("halves"):
        ctx.results["halves"] = {h: apply_alignment(aligned_like(stored, half)) for h, half in ctx.results["halves"].items()}
    figures: dict[str, Any] = {"tilt_axis_angle_deg": round(stored.tilt_axis_angle, 3)}
    truth = ctx.results.get("truth")
    if truth is not None:
        figures.update(alignment_errors(stored, truth))
        ctx.results["volume_offset_a"] = np.array(figures["volume_offset_xyz_a"])
    ctx.summary["align"] = figures
    ctx.figure("align", "alignment residuals and shifts per tilt", "align", "tilt_series_residuals.png")


def aligned_like(aligned: Any, half: Any) -> Any:
    """The even- or odd-frame sum `half` (tilt, y, x) with the alignment (axis, shifts) and CTF of the
    full sum `aligned`: the halves are reconstructed on exactly the full tomogram's grid."""
    from cryocloud.errors import ModelError

    if half.data.shape != aligned.data.shape or not np.allclose(half.tilt_angles, aligned.tilt_angles):
        raise ModelError("halves", f"the {half.data.name} sums {half.data.shape} do not match the aligned tilt series {aligned.data.shape}")
    return aligned.with_data(half.data.data)


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
    """Reconstruct `reconstruct/tomogram.zarr` and, when the motion stage kept even/odd frame sums,
    `reconstruct/even.zarr` and `reconstruct/odd.zarr` (for ctx.results["tomogram_halves"])."""
    from cryocloud.report import save_slices_png

    p = ctx.config.reconstruct
    truth = ctx.results.get("truth_volume")
    thickness = p.thickness_px or (truth.shape[0] // p.binning if truth is not None else None)
    halves = ctx.results.get("halves") or {}
    ctx.results["tomogram_halves"] = {h: _reconstructed(ctx, f"{h}.zarr", ts, thickness, overwrite, half=h)[0]
                                      for h, ts in halves.items()} or None
    tomo, built = _reconstructed(ctx, "tomogram.zarr", ctx.results["tilt_series"], thickness, overwrite)
    ctx.results["tomogram"] = tomo
    figures: dict[str, Any] = {"shape_zyx": list(tomo.shape), "voxel_size_a": tomo.pixel_size}
    if halves:
        figures["halves"] = sorted(halves)
    if truth is not None and truth.shape == tomo.shape:
        offset = ctx.results.get("volume_offset_a", np.zeros(3))
        figures["correlation_with_truth"] = round(correlation_with_truth(tomo, truth, offset), 4)
    ctx.summary["reconstruct"] = figures
    ctx.figure("reconstruct", "tomogram: central XY and XZ slices", "reconstruct", "slices.png",
               draw=partial(save_slices_png, tomo.data, title="tomogram"), overwrite=built)


def _reconstructed(ctx: RunContext, name: str, ts: Any, thickness: int | None, overwrite: bool,
                   half: str | None = None) -> tuple[Any, bool]:
    """(the stored tomogram `reconstruct/<name>`, whether it was computed now): read back when complete."""
    from cryocloud.reconstruct import reconstruct
    from cryocloud.store import read_tomogram, write_tomogram

    p = ctx.config.reconstruct
    url = ctx.url("reconstruct", name)
    so = ctx.storage_options
    tomo = None if overwrite else complete(lambda: read_tomogram(url, storage_options=so))
    if tomo is not None:
        return tomo, False
    volume = reconstruct(ts, thickness_px=thickness, binning=p.binning, filter=p.filter, sirt_iterations=p.sirt_iterations, halves=half)
    write_tomogram(volume, url, overwrite=overwrite, storage_options=so,
                   metadata={"stage": "reconstruct", "parameters": p.model_dump(), "half": half})
    return read_tomogram(url, storage_options=so), True


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


def _correlation(a: Any, b: Any) -> Any:
    """Lazy Pearson correlation of two Dask arrays of the same shape."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    da_, db_ = a - a.mean(), b - b.mean()
    return (da_ * db_).sum() / np.sqrt((da_ * da_).sum() * (db_ * db_).sum())
