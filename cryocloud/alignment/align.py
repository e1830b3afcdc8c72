"""Tilt-series alignment: coarse stretched cross-correlation, tilt axis, refinement, tilt offset.

Pipeline on binned, band-passed images (`images.prepare_stack`), angle-sorted:

1. coarse (`coarse.coarse_align`): neighbours cross-correlated after cosine stretching,
   accumulated outward from the tilt nearest 0 deg, at the guessed axis angle;
2. patch tracking + projection model (`tracking`, `axis`), when the axis is estimated, a tilt
   offset is wanted or refine="patch-tracking": the axis angle and shifts from the exact
   least-squares fit of the single-axis model, repeated until the axis settles;
3. refinement: "projection-matching" (`refine`: reconstruct, reproject, correlate, iterate; the
   axis angle then refined by the projection-matching score), "patch-tracking" (the model's
   shifts) or "none" (the coarse shifts at the final axis);
4. shifts are gauge-fixed (`axis.remove_gauge`) and converted to raw pixels and Angstrom.

Accuracy on simulated data (tests/test_align.py): shifts ~0.1 px RMS, axis angle ~0.1 deg.
"""

from __future__ import annotations

import logging

import dask.array as da
import numpy as np

from cryocloud.alignment.axis import fit_projection_model, remove_gauge, tilt_offset_from_points
from cryocloud.alignment.coarse import coarse_align
from cryocloud.alignment.images import binned_centre_offset, disk_window, prepare_stack
from cryocloud.alignment.refine import refine_axis, refine_shifts
from cryocloud.alignment.result import AlignmentResult
from cryocloud.alignment.tracking import track_patches
from cryocloud.errors import ModelError
from cryocloud.geometry import rotation_2d
from cryocloud.model import TiltSeries

log = logging.getLogger(__name__)

REFINE_METHODS = ("projection-matching", "patch-tracking", "none")
TARGET_SIZE = 512  # binned image size the automatic binning aims at (px)


def default_binning(shape_yx: tuple[int, int]) -> int:
    """Smallest binning that brings the larger image side to at most TARGET_SIZE px."""
    return max(1, int(np.ceil(max(shape_yx) / TARGET_SIZE)))


def _binned_images(ts: TiltSeries, order: np.ndarray, binning: int) -> np.ndarray:
    """Angle-sorted images (T, y, x) mean-pooled by `binning`, in memory (float32)."""
    data = da.asarray(ts.data.data)[order].rechunk((1, -1, -1))
    _, h, w = data.shape
    data = data[:, : h // binning * binning, : w // binning * binning]
    if binning > 1:
        data = da.coarsen(np.mean, data, {1: binning, 2: binning})
    return np.asarray(data.astype(np.float32).compute())


def _check(ts: TiltSeries, refine: str, iterations: int, binning: int | None) -> None:
    if ts.has_frames:
        raise ModelError("data", "alignment needs images (tilt, y, x); sum the movie frames first")
    if refine not in REFINE_METHODS:
        raise ModelError("refine", f"expected one of {REFINE_METHODS}, got {refine!r}")
    if int(iterations) != iterations or iterations < 1:
        raise ModelError("iterations", f"expected an integer >= 1, got {iterations}")
    if binning is not None and (int(binning) != binning or binning < 1):
        raise ModelError("binning", f"expected an integer >= 1, got {binning}")
    if ts.n_tilts < 5:
        raise ModelError("tilt", f"alignment needs at least 5 tilts, got {ts.n_tilts}")


def align_tilt_series(
    ts: TiltSeries,
    *,
    estimate_axis: bool = True,
    axis_angle_guess_deg: float | None = None,
    refine: str = "projection-matching",
    iterations: int = 3,
    tilt_offset: bool = False,
    binning: int | None = None,
    thickness_a: float | None = None,
) -> AlignmentResult:
    """Align a raw tilt series (tilt, y, x); returns an `AlignmentResult` (apply with `.apply_to(ts)`).

    estimate_axis: fit the tilt-axis angle (else keep the guess); axis_angle_guess_deg: starting
    axis angle (deg, default ts.tilt_axis_angle; the result stays on the same 180 deg branch);
    refine: "projection-matching", "patch-tracking" or "none"; iterations: projection-matching
    rounds; tilt_offset: estimate a tilt-angle offset that makes the specimen level;
    binning: image binning (default: to at most 512 px); thickness_a: reconstructed thickness for
    projection matching (A, default a quarter of the binned image width).
    Existing shift_x / shift_y coordinates of `ts` are ignored: the images are taken as raw.
    """
    _check(ts, refine, iterations, binning)
    order = np.argsort(ts.tilt_angles, kind="stable")
    angles = ts.tilt_angles[order]
    b = default_binning(ts.data.shape[1:]) if binning is None else int(binning)
    axis = float(ts.tilt_axis_angle if axis_angle_guess_deg is None else axis_angle_guess_deg)
    log.info("align: binning %d, %d tilts, axis guess %.2f deg", b, ts.n_tilts, axis)
    images = prepare_stack(_binned_images(ts, order, b))
    n = min(images.shape[1:])
    if n < 64:
        raise ModelError("binning", f"{b} leaves images of {images.shape[1:]} px; alignment needs at least 64 px")
    radius = 0.42 * n
    window = disk_window(images.shape[1:], radius - 0.05 * n, 0.05 * n)
    d, _ = coarse_align(images, angles, axis, window)
    log.info("align: coarse done")

    fit = None
    offset = 0.0
    if estimate_axis or tilt_offset or refine == "patch-tracking":
        patch = int(np.clip(n // 6 // 8 * 8, 32, 64))
        for _ in range(5 if estimate_axis or tilt_offset else 1):
            obs = track_patches(images, angles + offset, axis, d, radius=radius, patch=patch)
            fit = fit_projection_model(obs, angles + offset, axis, estimate_axis=estimate_axis)
            change = abs(fit.axis_deg - axis)
            axis, d = fit.axis_deg, fit.shifts
            if tilt_offset:  # stretching with the corrected angles sharpens the next estimate
                step = tilt_offset_from_points(fit.points)
                offset += step
                change = max(change, abs(step))
            log.info("align: patch model axis %.3f deg, offset %.3f deg, RMS residual %.3f px", axis, offset, np.nanmean(fit.residual_per_tilt()))
            if change < 0.05:
                break
    angles_used = angles + offset

    if refine == "projection-matching":
        thickness = int(round(n / 4)) if thickness_a is None else max(8, int(round(thickness_a / (ts.pixel_size * b))))
        d, moved = refine_shifts(images, angles_used, axis, d, window, thickness, iterations=iterations)
        if estimate_axis:
            for step in (0.5, 0.2):
                new_axis = refine_axis(images, angles_used, axis, d, window, thickness, step_deg=step)
                d = (d @ rotation_2d(axis).T) @ rotation_2d(new_axis)
                axis = new_axis
            d, moved = refine_shifts(images, angles_used, axis, d, window, thickness, iterations=iterations)
        residual_px = moved
        log.info("align: projection matching axis %.3f deg, last corrections <= %.3f px", axis, moved.max())
    elif refine == "patch-tracking":
        residual_px = fit.residual_per_tilt()
    else:
        if fit is not None:  # the axis moved since the coarse pass: redo it at the final axis
            d, _ = coarse_align(images, angles, axis, window, shifts=d)
        residual_px = np.full(len(angles), np.nan)

    d = remove_gauge(d, angles_used)
    r = rotation_2d(axis)
    offset_xy = binned_centre_offset(ts.data.shape[1:], b)
    raw_px = b * (d @ r.T) + (np.eye(2) - r) @ offset_xy
    shifts_a = np.empty_like(raw_px)
    shifts_a[order] = raw_px * ts.pixel_size
    residuals = np.empty(len(angles))
    residuals[order] = residual_px * b * ts.pixel_size
    return AlignmentResult(
        tilt_axis_angle_deg=axis,
        shifts_a=shifts_a,
        tilt_offset_deg=offset,
        residuals=residuals,
        tilt_angles_deg=ts.tilt_angles.copy(),
        pixel_size_a=ts.pixel_size,
        method=refine,
        binning=b,
    )
