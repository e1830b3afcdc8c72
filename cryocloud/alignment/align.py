"""Tilt-series alignment: coarse stretched cross-correlation, tilt axis, refinement, tilt offset.

Pipeline on binned, band-passed images (`images.prepare_stack`), angle-sorted:

0. the axis angle, when estimated by "common-line": `commonline.common_line_axis`, a search
   within HALF_RANGE_DEG of the guess on the images binned to <= COMMON_LINE_SIZE px, held from then on;
1. coarse (`coarse.coarse_align`): neighbours cross-correlated after cosine stretching,
   accumulated outward from the tilt nearest 0 deg, at the current axis angle;
2. patch tracking + projection model (`tracking`, `axis`), when the model fits the axis
   (axis_method "patch-model" or "projection-matching"), a tilt offset is wanted or
   refine="patch-tracking": the axis angle (if fitted) and shifts from the exact
   least-squares fit of the single-axis model, repeated until the axis moves less than
   PATCH_MODEL_TOLERANCE_DEG (at most PATCH_MODEL_ROUNDS rounds);
3. refinement: "projection-matching" (`refine`: reconstruct, reproject, correlate, iterate; the
   axis angle then, with axis_method "projection-matching", by the score's maximum), "patch-tracking" (the model's
   shifts) or "none" (the coarse shifts at the final axis);
4. quality: patches tracked once more at the final geometry give each tilt's RMS residual against
   it (`axis.geometry_residuals`); the axis angle's standard error comes from its estimate
   (common-line or projection-matching score, patch model). A loop that ends at its cap or bound instead of its
   tolerance is logged as a warning and listed in `AlignmentResult.limits`;
5. shifts are gauge-fixed (`axis.remove_gauge`) and converted to raw pixels and Angstrom.

Accuracy on simulated data: tests/test_align.py and tests/test_align_axis.py; on an independent forward model
(skimage radon, tests/independent_tilt_series.py) and the real STEM series: tests/test_align_independent.py.
"""

from __future__ import annotations

import logging

import dask.array as da
import numpy as np

from cryocloud.alignment.axis import fit_projection_model, geometry_residuals, remove_gauge, tilt_offset_from_points
from cryocloud.alignment.coarse import coarse_align
from cryocloud.alignment.commonline import HALF_RANGE_DEG, common_line_axis
from cryocloud.alignment.images import binned_centre_offset, disk_window, prepare_stack
from cryocloud.alignment.refine import AXIS_SEARCH_BOUND_DEG, SHIFT_TOLERANCE_PX, refine_axis, refine_shifts
from cryocloud.alignment.result import AlignmentResult
from cryocloud.alignment.tracking import track_patches
from cryocloud.errors import ModelError
from cryocloud.geometry import rotation_2d
from cryocloud.model import TiltSeries

log = logging.getLogger(__name__)

REFINE_METHODS = ("projection-matching", "patch-tracking", "none")
AXIS_METHODS = ("common-line", "patch-model", "projection-matching")
TARGET_SIZE = 512  # binned image size the automatic binning aims at (px)
COMMON_LINE_SIZE = 128  # the common-line axis search bins the images to at most this (px)
PATCH_MODEL_TOLERANCE_DEG = 0.05  # the patch model is refitted until the axis (and offset) move less than this
PATCH_MODEL_ROUNDS = 5  # ... or this many rounds have run (reported as a limit)


def default_binning(shape_yx: tuple[int, int], target: int = TARGET_SIZE) -> int:
    """Smallest binning that brings the larger image side to at most `target` px."""
    return max(1, int(np.ceil(max(shape_yx) / target)))


def _pooled(stack: np.ndarray, k: int) -> np.ndarray:
    """Images (T, y, x) mean-pooled by k (remainders cropped)."""
    t, h, w = stack.shape
    return stack[:, : h // k * k, : w // k * k].reshape(t, h // k, k, w // k, k).mean(axis=(2, 4))


def _normalised(stack: np.ndarray) -> np.ndarray:
    """Images (T, y, x) with zero mean and unit variance each."""
    std = stack.std(axis=(1, 2), keepdims=True)
    return (stack - stack.mean(axis=(1, 2), keepdims=True)) / np.where(std > 0, std, 1.0)


def _binned_images(ts: TiltSeries, order: np.ndarray, binning: int) -> np.ndarray:
    """Angle-sorted images (T, y, x) mean-pooled by `binning`, in memory (float32)."""
    data = da.asarray(ts.data.data)[order].rechunk((1, -1, -1))
    _, h, w = data.shape
    data = data[:, : h // binning * binning, : w // binning * binning]
    if binning > 1:
        data = da.coarsen(np.mean, data, {1: binning, 2: binning})
    return np.asarray(data.astype(np.float32).compute())


def _check(ts: TiltSeries, refine: str, iterations: int, binning: int | None, axis_method: str) -> None:
    if ts.has_frames:
        raise ModelError("data", "alignment needs images (tilt, y, x); sum the movie frames first")
    if refine not in REFINE_METHODS:
        raise ModelError("refine", f"expected one of {REFINE_METHODS}, got {refine!r}")
    if axis_method not in AXIS_METHODS:
        raise ModelError("axis_method", f"expected one of {AXIS_METHODS}, got {axis_method!r}")
    if axis_method == "projection-matching" and refine != "projection-matching":
        raise ModelError("axis_method", f"'projection-matching' needs refine='projection-matching', got {refine!r}")
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
    axis_method: str | None = None,
) -> AlignmentResult:
    """Align a raw tilt series (tilt, y, x); returns an `AlignmentResult` (apply with `.apply_to(ts)`).

    estimate_axis: fit the tilt-axis angle (else keep the guess); axis_angle_guess_deg: starting
    axis angle (deg, default ts.tilt_axis_angle; the result stays on the same 180 deg branch);
    refine: "projection-matching", "patch-tracking" or "none"; iterations: projection-matching
    rounds; tilt_offset: estimate a tilt-angle offset that makes the specimen level;
    binning: image binning (default: to at most 512 px); thickness_a: reconstructed thickness for
    projection matching (A, default a quarter of the binned image width); axis_method: how the axis
    is estimated: "patch-model" (the patch-tracked model's fit), "projection-matching" (the patch
    model's, then the projection-matching score's maximum within AXIS_SEARCH_BOUND_DEG of it) or
    "common-line" (a search within HALF_RANGE_DEG of the guess, then held while the shifts are
    refined); default "projection-matching" when refine is, else "patch-model". Axis errors measured
    (deg): real STEM series of tests/data/real (reference 92.3-92.8): common-line 91.9, patch model
    95.8 (still drifting at its cap), projection-matching score rising beyond 10 deg away; slab twice
    the field (tests/test_align.py, true 84): 0.07 / 1.2 / 0.9 (flat score, 0.9550 +- 0.0001 over 2
    deg); simulated cryo twin (true 85): common-line 0.93; independent slab twice the field and a quarter
    of it thick, 3 e/A^2 Poisson (tests/independent_tilt_series.py, seed 0, true 84 / 30 / 0 / -5, guesses
    +4 and -3.5): common-line -6.7 / -3.8 / -5.3 / -6.8, patch model +0.81 / +0.26 / +0.55 / +1.44,
    default -0.18 / -0.67 / -0.04 / +0.45, shifts 0.15-0.31 px RMS; no method is best everywhere.
    Existing shift_x / shift_y coordinates of `ts` are ignored: the images are taken as raw.
    """
    axis_method = axis_method or ("projection-matching" if refine == "projection-matching" else "patch-model")
    _check(ts, refine, iterations, binning, axis_method)
    order = np.argsort(ts.tilt_angles, kind="stable")
    angles = ts.tilt_angles[order]
    b = default_binning(ts.data.shape[1:]) if binning is None else int(binning)
    axis = float(ts.tilt_axis_angle if axis_angle_guess_deg is None else axis_angle_guess_deg)
    log.info("align: binning %d, %d tilts, axis guess %.2f deg", b, ts.n_tilts, axis)
    binned = _binned_images(ts, order, b)
    images = prepare_stack(binned)
    n = min(images.shape[1:])
    if n < 64:
        raise ModelError("binning", f"{b} leaves images of {images.shape[1:]} px; alignment needs at least 64 px")
    radius = 0.42 * n
    sigma = float("nan")
    limits: list[str] = []
    fit_axis = estimate_axis and axis_method != "common-line"  # the patch model fits the axis
    if estimate_axis and axis_method == "common-line":
        found = common_line_axis(_normalised(_pooled(binned, default_binning(binned.shape[1:], COMMON_LINE_SIZE))), angles, axis)
        axis, sigma = found.angle_deg, found.sigma_deg
        log.info("align: common-line axis %.3f deg (+- %.3f) after %d score evaluations", axis, sigma, found.evaluations)
        if found.at_bound:
            _limit(limits, f"common-line axis search: the best angle lies at the edge of its range, guess +- {HALF_RANGE_DEG:g} deg; "
                           f"stopped at {axis:.2f} deg")
    window = disk_window(images.shape[1:], radius - 0.05 * n, 0.05 * n)
    d, _ = coarse_align(images, angles, axis, window)
    log.info("align: coarse done")

    fit = None
    offset = 0.0
    patch = int(np.clip(n // 6 // 8 * 8, 32, 64))
    if fit_axis or tilt_offset or refine == "patch-tracking":
        rounds = PATCH_MODEL_ROUNDS if fit_axis or tilt_offset else 1
        for k in range(1, rounds + 1):
            obs = track_patches(images, angles + offset, axis, d, radius=radius, patch=patch)
            fit = fit_projection_model(obs, angles + offset, axis, estimate_axis=fit_axis)
            change = abs(fit.axis_deg - axis)
            axis, d = fit.axis_deg, fit.shifts
            sigma = fit.axis_sigma_deg if fit_axis else sigma
            if tilt_offset:  # stretching with the corrected angles sharpens the next estimate
                step = tilt_offset_from_points(fit.points)
                offset += step
                change = max(change, abs(step))
            log.info("align: patch model axis %.3f deg (+- %.3f), offset %.3f deg, RMS residual %.3f px", axis, sigma, offset,
                     np.nanmean(fit.residual_per_tilt()))
            if change < PATCH_MODEL_TOLERANCE_DEG:
                break
            if k == rounds and rounds > 1:
                _limit(limits, f"patch model: axis / offset still moved {change:.2f} deg in round {k} "
                               f"(tolerance {PATCH_MODEL_TOLERANCE_DEG} deg); stopped at the {rounds}-round cap")
    angles_used = angles + offset

    if refine == "projection-matching":
        thickness = int(round(n / 4)) if thickness_a is None else max(8, int(round(thickness_a / (ts.pixel_size * b))))
        d, moved, converged = refine_shifts(images, angles_used, axis, d, window, thickness, iterations=iterations)
        if estimate_axis and axis_method == "projection-matching":
            search = refine_axis(images, angles_used, axis, d, window, thickness)
            d = (d @ rotation_2d(axis).T) @ rotation_2d(search.angle_deg)
            axis, sigma = search.angle_deg, search.sigma_deg
            log.info("align: projection-matching axis %.3f deg (+- %.3f) after %d score evaluations", axis, sigma, search.evaluations)
            if search.at_bound:
                _limit(limits, f"projection-matching axis search: the score still rose at its bound, "
                               f"{AXIS_SEARCH_BOUND_DEG:g} deg from the start; stopped at {axis:.2f} deg")
            d, moved, converged = refine_shifts(images, angles_used, axis, d, window, thickness, iterations=iterations)
        if not converged:
            _limit(limits, f"projection matching: corrections up to {moved.max():.2f} px after {iterations} iterations "
                           f"(tolerance {SHIFT_TOLERANCE_PX} px); stopped at the iteration cap")
        residual_px = moved
        log.info("align: projection matching axis %.3f deg, last corrections <= %.3f px", axis, moved.max())
    elif refine == "patch-tracking":
        residual_px = fit.residual_per_tilt()
    else:
        if fit is not None:  # the axis moved since the coarse pass: redo it at the final axis
            d, _ = coarse_align(images, angles, axis, window, shifts=d)
        residual_px = np.full(len(angles), np.nan)
    obs = track_patches(images, angles_used, axis, d, radius=radius, patch=patch)
    model_px = geometry_residuals(obs, angles_used, axis, d)
    if np.any(np.isfinite(model_px)):
        log.info("align: patch residuals against the final geometry: median %.3f px, max %.3f px (tilt %.1f deg)",
                 np.nanmedian(model_px), np.nanmax(model_px), angles[int(np.nanargmax(model_px))])

    d = remove_gauge(d, angles_used)
    r = rotation_2d(axis)
    offset_xy = binned_centre_offset(ts.data.shape[1:], b)
    raw_px = b * (d @ r.T) + (np.eye(2) - r) @ offset_xy
    shifts_a = np.empty_like(raw_px)
    shifts_a[order] = raw_px * ts.pixel_size
    residuals = np.empty(len(angles))
    residuals[order] = residual_px * b * ts.pixel_size
    model_residuals = np.empty(len(angles))
    model_residuals[order] = model_px * b * ts.pixel_size
    return AlignmentResult(
        tilt_axis_angle_deg=axis,
        shifts_a=shifts_a,
        tilt_offset_deg=offset,
        residuals=residuals,
        tilt_angles_deg=ts.tilt_angles.copy(),
        pixel_size_a=ts.pixel_size,
        method=refine,
        binning=b,
        axis_uncertainty_deg=sigma if estimate_axis else float("nan"),
        model_residuals_a=model_residuals,
        limits=tuple(limits),
    )


def _limit(limits: list[str], message: str) -> None:
    """Record that a search stopped at a bound instead of converging: in the log and in the result."""
    log.warning("align: %s", message)
    limits.append(message)
