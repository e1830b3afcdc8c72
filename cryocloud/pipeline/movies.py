"""Movies -> motion-corrected tilt images, one movie at a time (used by the motion stage and `watch`).

A movie (MRC or TIFF frames at a URL) is corrected by one task: read, align the frames
(`cryocloud.preprocess.motion.correct_tilt`), sum. The sums of a complete tilt series, in mdoc
section order, become a TiltSeries with the mdoc's metadata, sorted by angle with dark or empty
tilts dropped (`cryocloud.preprocess.assemble`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

from cryocloud.errors import ModelError
from cryocloud.model import TiltSeries
from cryocloud.pipeline.config import MotionParams
from cryocloud.preprocess.detector import DetectorCorrection, FixedPattern, orient_gain
from cryocloud.store.mdoc import Mdoc


class CorrectedMovie(NamedTuple):
    """One motion-corrected movie: the aligned sum and its even- and odd-frame sums (y, x) float32,
    the frame shifts (frame, 2) as x, y in A, and the fixed-pattern evidence of its frames."""

    total: np.ndarray
    even: np.ndarray
    odd: np.ndarray
    shifts_a: np.ndarray
    fixed_pattern: FixedPattern | None = None


def detector_correction(params: MotionParams, storage_options: dict | None = None) -> DetectorCorrection | None:
    """The gain (oriented), defect map and hot-pixel search that `params` name; None when none."""
    from cryocloud.store.detector import read_detector_image

    gain = defects = None
    if params.gain:
        gain = orient_gain(read_detector_image(params.gain, field="gain", storage_options=storage_options), params.gain_rotate, params.gain_flip)
    if params.defects:
        defects = read_detector_image(params.defects, field="defects", storage_options=storage_options) != 0
    correction = DetectorCorrection(gain, defects, params.hot_pixel_sigma if params.detect_hot_pixels else None,
                                    gain_source=params.gain, defects_source=params.defects)
    return correction if correction.active else None


def with_mdoc_gain(params: MotionParams, mdoc: Mdoc, folder: str) -> MotionParams:
    """`params` with the mdoc's GainReference (a file beside the movies in `folder`) when they name no gain."""
    from cryocloud.preprocess.movies import movie_url

    name = mdoc.gain_reference
    return params if params.gain or not name else params.model_copy(update={"gain": movie_url(folder, name)})


def checked_params(params: MotionParams, mdoc: Mdoc, folder: str, storage_options: dict | None = None) -> MotionParams:
    """`params` with the mdoc's gain when they name none (`with_mdoc_gain`), after checking that the gain
    and defect map read and fit the first movie's frames (a clear error before any task runs)."""
    from cryocloud.preprocess.movies import movie_url, read_movie

    params = with_mdoc_gain(params, mdoc, folder)
    correction = detector_correction(params, storage_options)
    if correction is not None and mdoc.sub_frame_path:
        first = movie_url(folder, mdoc.sub_frame_path[0])
        correction.check(tuple(read_movie(first, pixel_size=1.0, storage_options=storage_options).shape[-2:]))
    return params


def tilt_exposures(mdoc: Mdoc, params: MotionParams) -> list[tuple[float, float]]:
    """(exposure, pre-exposure) in e/A^2 of each section (stack order), as `Mdoc.to_tilt_series` sets them."""
    ts = mdoc.to_tilt_series(np.zeros((mdoc.n_tilts, 1, 1), dtype=np.float32), pixel_size=1.0, exposure=params.exposure)
    return list(zip(ts.per_tilt("exposure").tolist(), ts.per_tilt("pre_exposure").tolist()))


def correct_movie(url: str, pixel_size_a: float, params: MotionParams, storage_options: dict | None = None,
                  exposure: tuple[float, float] | None = None, voltage_kv: float = 300.0) -> CorrectedMovie:
    """Motion-correct one movie (its frames aligned once; the even/odd sums use the same shifts), with the
    detector corrections of `params`; dose-weighted per frame when `params.dose_weight_frames`, from the
    tilt's `exposure` = (exposure, pre-exposure) in e/A^2 and `voltage_kv`.

    Runs inside one task: the movie is read in full (a few frames of one tilt)."""
    from cryocloud.preprocess.motion import FrameDose, correct_tilt
    from cryocloud.preprocess.movies import read_movie

    frames = np.asarray(read_movie(url, pixel_size=pixel_size_a, storage_options=storage_options).compute(scheduler="sync"))
    dose = None
    if params.dose_weight_frames:
        if exposure is None:
            raise ModelError("motion.dose_weight_frames", "needs the tilt's exposure and pre-exposure", source=url)
        dose = FrameDose(params.dose_per_frame or exposure[0] / frames.shape[0], exposure[1], voltage_kv)
    out = correct_tilt(frames, pixel_size_a, bfactor_a2=params.bfactor_a2, iterations=params.iterations, max_shift_a=params.max_shift_a,
                       detector=detector_correction(params, storage_options), dose=dose)
    return CorrectedMovie(out.total, out.even, out.odd, out.shifts_px * pixel_size_a, out.fixed_pattern)


def warn_fixed_pattern(movies: list[CorrectedMovie], names: list[str]) -> list[str]:
    """Log (warning) and return a message for each movie whose frames show an uncorrected fixed detector pattern."""
    import logging

    messages = [m.fixed_pattern.message(name) for m, name in zip(movies, names) if m.fixed_pattern is not None and m.fixed_pattern.flagged]
    for text in messages:
        logging.getLogger(__name__).warning("%s", text)
    return messages


def mdoc_pixel_size(mdoc: Mdoc, params: MotionParams) -> float:
    """The pixel size (A): the config's, else the mdoc's PixelSpacing."""
    from cryocloud.errors import StoreError

    px = params.pixel_size_a or mdoc.pixel_size
    if px is None:
        raise StoreError(mdoc.source, "has no PixelSpacing; set motion.pixel_size_a (A) in the config", field="PixelSpacing")
    return float(px)


def series_from_sums(mdoc: Mdoc, movies: list[CorrectedMovie], params: MotionParams) -> tuple[TiltSeries, dict[str, TiltSeries]]:
    """The tilt series of the motion-corrected sums (mdoc section order in), sorted by angle, dark or
    empty tilts dropped with a logged reason; with the even/odd-frame series of the same tilts, each
    tilt's exposure scaled by its share of the frames (none when a movie has a single frame)."""
    from cryocloud.preprocess.assemble import assemble

    totals = np.stack([m.total for m in movies]).astype(np.float32)
    assembly = assemble(mdoc.to_tilt_series(totals, pixel_size=mdoc_pixel_size(mdoc, params), exposure=params.exposure))
    ts, kept = assembly.tilt_series, list(assembly.kept)
    n_frames = np.array([movies[i].shifts_a.shape[0] for i in kept])
    if n_frames.min() < 2:
        return ts, {}
    exposure = np.asarray(ts.data.coords["exposure"].values)
    share = {"even": np.ceil(n_frames / 2) / n_frames, "odd": np.floor(n_frames / 2) / n_frames}
    halves = {h: ts.with_data(np.stack([getattr(movies[i], h) for i in kept]).astype(np.float32)).with_per_tilt(exposure=exposure * share[h])
              for h in ("even", "odd")}
    return ts, halves


def shifts_array(shifts_a: list[np.ndarray], tilt_angles: np.ndarray) -> xr.DataArray:
    """Per-frame shifts (tilt, frame, axis=(x, y)) in A with the tilt angles, as the drift figure takes them."""
    return xr.DataArray(np.stack(shifts_a), dims=("tilt", "frame", "axis"),
                        coords={"axis": ["x", "y"], "tilt_angle": ("tilt", np.asarray(tilt_angles, dtype=float))},
                        name="shift", attrs={"units": "angstrom"})


def shifts_table(shifts: xr.DataArray) -> str:
    """CSV text of the shifts: tilt, tilt_angle, frame, shift_x_a, shift_y_a."""
    values = np.asarray(shifts.values)
    angles = shifts.coords["tilt_angle"].values
    rows = [(t, float(angles[t]), f, *values[t, f]) for t in range(values.shape[0]) for f in range(values.shape[1])]
    return pd.DataFrame(rows, columns=["tilt", "tilt_angle", "frame", "shift_x_a", "shift_y_a"]).to_csv(index=False)


def write_motion(root, mdoc: Mdoc, corrected: list[CorrectedMovie], params: MotionParams) -> TiltSeries:
    """Persist motion-corrected movies (mdoc section order) under `root` (a Location), with their
    even/odd-frame sums when the movies have two frames or more, see `persist_motion`."""
    shifts = shifts_array([m.shifts_a for m in corrected], mdoc.tilt_angle)
    ts, halves = series_from_sums(mdoc, corrected, params)
    return persist_motion(root, ts, shifts, params, halves)


def persist_motion(root, ts: TiltSeries, shifts: xr.DataArray, params: MotionParams,
                   halves: dict[str, TiltSeries] | None = None) -> TiltSeries:
    """Write `motion/shifts.csv`, `motion/drift.png`, the even/odd frame sums (`motion/even.zarr`,
    `motion/odd.zarr`) when given, then `motion/tilt_series.zarr` last (the stage is complete when it
    reads back). Returns the stored (lazy) tilt series."""
    from cryocloud.preprocess.figures import drift_figure, save_png
    from cryocloud.store import open_url, read_tilt_series, write_tilt_series
    from cryocloud.store.textfiles import write_text

    so = root.storage_options
    write_text(root.child("motion", "shifts.csv").url, shifts_table(shifts), overwrite=True, storage_options=so)
    with open_url(root.child("motion", "drift.png").url, "wb", storage_options=so) as fh:
        save_png(drift_figure(shifts), fh)
    meta = {"stage": "motion", "parameters": params.model_dump()}
    for half, series in (halves or {}).items():
        write_tilt_series(series, root.child("motion", f"{half}.zarr").url, overwrite=True, storage_options=so, metadata={**meta, "half": half})
    url = root.child("motion", "tilt_series.zarr").url
    write_tilt_series(ts, url, overwrite=True, storage_options=so, metadata=meta)
    return read_tilt_series(url, storage_options=so)

def drift_error(measured_a: np.ndarray, true_drift_a: np.ndarray) -> dict:
    """Measured frame shifts (tilt, frame, xy) in A against the simulated drift (same layout, frame 0
    at the origin): both are compared with their per-tilt mean removed (the shifts' zero-mean
    convention). Returns the RMS error and the RMS true drift (A) over all frames."""
    measured = np.asarray(measured_a, dtype=np.float64)
    truth = np.asarray(true_drift_a, dtype=np.float64)
    truth = truth - truth.mean(axis=1, keepdims=True)
    measured = measured - measured.mean(axis=1, keepdims=True)
    return {"drift_rms_error_a": round(_rms(measured - truth), 3), "true_drift_rms_a": round(_rms(truth), 3)}


def _rms(vectors: np.ndarray) -> float:
    """Root mean square length of vectors (..., 2)."""
    return float(np.sqrt(np.mean(np.sum(vectors**2, axis=-1))))


def shifts_at_mean_frame(truth: dict) -> dict:
    """The simulation's truth for motion-corrected sums: each sum sits at its tilt's mean frame
    position (the shifts' zero-mean convention) while the simulated image shifts refer to the
    drift-free image, so the true image shift (x, y in A) of tilt t becomes shifts_xy_a[t] + mean drift[t]."""
    drift = np.asarray(truth["drift_xy_a"], dtype=np.float64)
    return {**truth, "shifts_xy_a": (np.asarray(truth["shifts_xy_a"], dtype=np.float64) + drift.mean(axis=1)).tolist()}
