"""Stages that supply the tilt series: `simulate` (the digital twin), `input` (an OME-Zarr tilt
series, or a CryoET Data Portal tilt series or tomogram) and `motion`: movies named by a SerialEM .mdoc, motion-corrected one task per movie, or the
digital twin's movies (simulate with frames_per_tilt > 0), motion-corrected one task per tilt with
their even- and odd-frame sums kept for half reconstructions and scored against the simulated drift."""

from __future__ import annotations

import json
import posixpath
from functools import partial

from cryocloud.pipeline.context import RunContext, complete
from cryocloud.pipeline.figures import tilt_montage_png


def _montage(ctx: RunContext, stage: str, overwrite: bool) -> None:
    ctx.figure(stage, "tilt series", stage, "montage.png", draw=partial(tilt_montage_png, ctx.results["tilt_series"]),
               overwrite=overwrite)


def stage_simulate(ctx: RunContext, overwrite: bool) -> None:
    from cryocloud.simulate import preset, simulate, write_simulation
    from cryocloud.store import open_url, read_particles_csv, read_tilt_series, read_tomogram

    cfg = ctx.config
    so = ctx.storage_options
    if overwrite or not ctx.exists("simulation", "ground_truth", "truth.json"):
        sim_cfg = preset(cfg.simulate.preset, **cfg.simulate.overrides)
        result = simulate(sim_cfg)
        print(f"simulating {sim_cfg.shape_zyx} voxels at {sim_cfg.pixel_size_a} A, {result.tilt_series.n_tilts} tilts")
        write_simulation(result, ctx.url("simulation"), overwrite=True, storage_options=so)
    ctx.results["tilt_series"] = read_tilt_series(ctx.url("simulation", "tilt_series.zarr"), storage_options=so)
    ctx.results["truth_volume"] = read_tomogram(ctx.url("simulation", "ground_truth", "volume.zarr"), storage_options=so)
    with open_url(ctx.url("simulation", "ground_truth", "truth.json"), "r", storage_options=so) as fh:
        ctx.results["truth"] = json.load(fh)
    ctx.results["truth_particles"] = read_particles_csv(ctx.url("simulation", "ground_truth", "particles.csv"), storage_options=so)
    ts = ctx.results["tilt_series"]
    ctx.summary["simulate"] = {"n_tilts": ts.n_tilts, "pixel_size_a": ts.pixel_size, "n_particles": len(ctx.results["truth_particles"])}
    _montage(ctx, "simulate", overwrite)


def input_is_tomogram(config) -> bool:
    """True when the input is a CryoET Data Portal tomogram (then ctf, align and reconstruct do not run)."""
    from cryocloud.store.portal import is_portal_url, names_tomogram

    text = config.input or ""
    return bool(text) and not text.lower().endswith(".mdoc") and is_portal_url(text) and names_tomogram(text)


def stage_input(ctx: RunContext, overwrite: bool) -> None:
    """Read the input tilt series or, for a portal tomogram, the tomogram (`results["input_tomogram"]`: the
    later stages read it in place) with its run's tilt series (angles and defocus for the wedge and the
    CTF). A CryoET Data Portal input is read anonymously and never with the output's storage options (an
    output on another S3 endpoint must not redirect the portal); its endpoint comes from the Dask config
    `cryocloud.portal.endpoint_url` or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (`cryocloud.store.portal.portal_options`)."""
    from cryocloud.store import read_tilt_series
    from cryocloud.store.portal import is_portal_url

    if input_is_tomogram(ctx.config):
        _input_tomogram(ctx, overwrite)
        return
    options = None if is_portal_url(ctx.config.input) else ctx.storage_options
    ts = read_tilt_series(ctx.config.input, storage_options=options)
    ctx.results["tilt_series"] = ts
    ctx.summary["input"] = {"url": ctx.config.input, "n_tilts": ts.n_tilts, "pixel_size_a": ts.pixel_size}
    _montage(ctx, "input", overwrite)


def _input_tomogram(ctx: RunContext, overwrite: bool) -> None:
    from cryocloud.errors import StoreError
    from cryocloud.report import save_slices_png
    from cryocloud.store.portal import parse_portal_url, portal_address, read_portal_tilt_series

    url = ctx.config.input
    ctx.results["input_tomogram"] = url
    tomo = ctx.read_tomogram()
    ref = parse_portal_url(portal_address(url))
    try:
        ts = read_portal_tilt_series(f"portal://{ref.dataset}/{ref.run}/tiltseries")
    except StoreError as exc:
        raise StoreError(url, f"the stages need the run's tilt series (tilt angles, defocus): {exc}", field="input") from exc
    ctx.results["tomogram"] = tomo
    ctx.results["tilt_series"] = ts
    ctx.summary["input"] = {"url": url, "kind": "tomogram", "shape_zyx": list(tomo.shape), "voxel_size_a": tomo.pixel_size,
                            "n_tilts": ts.n_tilts, "tilt_series": ts.data.attrs.get("source")}
    ctx.figure("input", "tomogram: central XY and XZ slices", "input", "slices.png",
               draw=partial(save_slices_png, tomo.data, title="portal tomogram"), overwrite=overwrite)


def stage_motion(ctx: RunContext, overwrite: bool) -> None:
    """Motion-correct the movies of `input` (a .mdoc; movies in its folder), one task per movie, or
    the simulation's movies, into `motion/tilt_series.zarr` with the frame shifts (`motion/shifts.csv`)
    and drift traces (`motion/drift.png`)."""
    if not ctx.config.input:
        _motion_of_simulation(ctx, overwrite)
        return
    import dask

    from cryocloud.pipeline.movies import checked_params, correct_movie, mdoc_pixel_size, tilt_exposures, warn_fixed_pattern, write_motion
    from cryocloud.preprocess.movies import movie_url
    from cryocloud.progress import compute
    from cryocloud.store import read_mdoc, read_tilt_series

    p = ctx.config.motion
    so = ctx.storage_options
    mdoc = read_mdoc(ctx.config.input, storage_options=so)
    stored = None if overwrite else complete(lambda: read_tilt_series(ctx.url("motion", "tilt_series.zarr"), storage_options=so))
    if stored is None:
        folder = posixpath.dirname(mdoc.source.rstrip("/"))
        px = mdoc_pixel_size(mdoc, p)
        p = checked_params(p, mdoc, folder, so)
        voltage = mdoc.voltage_kv or 300.0
        tasks = [dask.delayed(correct_movie, pure=True)(movie_url(folder, name), px, p, so, exposure, voltage)
                 for name, exposure in zip(mdoc.sub_frame_path, tilt_exposures(mdoc, p) if p.dose_weight_frames else [None] * mdoc.n_tilts)]
        corrected = list(compute(*tasks, description=f"motion correction of {len(tasks)} movies"))
        warn_fixed_pattern(corrected, mdoc.sub_frame_path)
        stored = write_motion(ctx.root, mdoc, corrected, p)
    ctx.results["tilt_series"] = stored
    ctx.results["halves"] = _stored_halves(ctx)
    ctx.summary["motion"] = {"mdoc": mdoc.source, "n_movies": mdoc.n_tilts, "n_tilts": stored.n_tilts, "pixel_size_a": stored.pixel_size,
                             "halves": sorted(ctx.results["halves"])}
    ctx.figure("motion", "frame drift per tilt", "motion", "drift.png")
    _montage(ctx, "motion", overwrite)


def _stored_halves(ctx: RunContext) -> dict:
    """The even/odd-frame tilt series the motion stage wrote (`motion/even.zarr`, `motion/odd.zarr`),
    or {} when it wrote none (single-frame movies)."""
    from cryocloud.store import read_tilt_series

    if not (ctx.exists("motion", "even.zarr") and ctx.exists("motion", "odd.zarr")):
        return {}
    return {h: read_tilt_series(ctx.url("motion", f"{h}.zarr"), storage_options=ctx.storage_options) for h in ("even", "odd")}


def _motion_of_simulation(ctx: RunContext, overwrite: bool) -> None:
    """Motion correction of `simulation/frames.zarr` (after the simulate stage): sum, even- and
    odd-frame sums (`motion/even.zarr`, `motion/odd.zarr`, for `ctx.results["halves"]`), drift error."""
    import numpy as np
    import pandas as pd

    from cryocloud.errors import ModelError
    from cryocloud.pipeline.movies import drift_error, persist_motion, shifts_at_mean_frame
    from cryocloud.preprocess.detector import DetectorCorrection
    from cryocloud.preprocess.motion import motion_correct
    from cryocloud.simulate.output import read_simulated_frames
    from cryocloud.progress import persist
    from cryocloud.store import open_url, read_tilt_series

    p = ctx.config.motion
    so = ctx.storage_options
    if not ctx.exists("simulation", "frames.zarr"):
        raise ModelError("simulate.overrides.frames_per_tilt", "the motion stage needs simulated movies: set it to 2 or more")
    for key in ("pixel_size_a", "exposure", "gain", "defects"):
        if getattr(p, key) is not None:
            raise ModelError(f"motion.{key}", "applies to .mdoc input only; the simulation records its pixel size and exposure "
                             "and has no detector gain or defects")
    stored = None if overwrite else complete(lambda: read_tilt_series(ctx.url("motion", "tilt_series.zarr"), storage_options=so))
    if stored is None:
        frames = read_simulated_frames(ctx.url("simulation", "frames.zarr"), ctx.results["tilt_series"], so)
        detector = DetectorCorrection(hot_pixel_sigma=p.hot_pixel_sigma) if p.detect_hot_pixels else None
        result = motion_correct(frames, bfactor_a2=p.bfactor_a2, iterations=p.iterations, max_shift_a=p.max_shift_a, detector=detector,
                                dose_weight_frames=p.dose_weight_frames, dose_per_frame=p.dose_per_frame)
        # persisted, not computed: the writes below refer to the sums on the workers (computed here, each write's
        # graph would carry its whole tilt series to the scheduler)
        total, even, odd, shifts = persist(result.sum.data.data, result.even.data.data, result.odd.data.data, result.shifts.data,
                                           description=f"motion correction of {frames.n_tilts} movies")
        halves = {"even": result.even.with_data(even), "odd": result.odd.with_data(odd)}
        stored = persist_motion(ctx.root, result.sum.with_data(total), result.shifts.copy(data=shifts), p, halves)
    ctx.results["tilt_series"] = stored
    ctx.results["halves"] = _stored_halves(ctx)
    with open_url(ctx.url("motion", "shifts.csv"), "r", storage_options=so) as fh:
        table = pd.read_csv(fh)
    n_frames = int(table["frame"].max()) + 1
    measured = table[["shift_x_a", "shift_y_a"]].to_numpy().reshape(stored.n_tilts, n_frames, 2)
    figures = {"source": "simulation/frames.zarr", "n_tilts": stored.n_tilts, "frames_per_tilt": n_frames, "halves": ["even", "odd"]}
    figures.update(drift_error(measured, np.asarray(ctx.results["truth"]["drift_xy_a"])))
    ctx.results["truth"] = shifts_at_mean_frame(ctx.results["truth"])  # the align stage scores against this
    ctx.summary["motion"] = figures
    ctx.figure("motion", "frame drift per tilt", "motion", "drift.png")
    _montage(ctx, "motion", overwrite)
