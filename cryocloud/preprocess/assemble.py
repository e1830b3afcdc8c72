"""Tilt-series assembly: per-tilt movies (or images) plus acquisition metadata -> one TiltSeries.

`stack_movies` builds a (tilt, frame, y, x) series from lazy per-tilt movies and their metadata
(angles, exposure, acquisition order, pre-exposure), e.g. as listed in a SerialEM .mdoc;
`assemble` sorts any tilt series (movies, sums or simulated frames) by tilt angle, keeping the
acquisition order, exposure and pre-exposure of each tilt, and drops dark or empty tilts with
a logged reason: empty = constant image (zero variance) or non-finite values; dark = mean
intensity below `dark_fraction` times the median mean of the other tilts (e.g. a closed valve,
the beam blocked by the grid bar). Only the per-tilt mean and standard deviation are computed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import dask.array as da
import numpy as np

from cryocloud import progress
from cryocloud.errors import ModelError
from cryocloud.model import Microscope, TiltSeries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DroppedTilt:
    """A tilt left out of the assembled series: its index in the input, angle (deg) and why."""

    index: int
    tilt_angle: float
    reason: str


@dataclass(frozen=True)
class Assembly:
    """The assembled series (sorted by angle), the tilts that were dropped, and the input positions
    of the kept tilts in their new order (apply them to companion series, e.g. even/odd sums)."""

    tilt_series: TiltSeries
    dropped: list[DroppedTilt]
    kept: tuple[int, ...]


def stack_movies(
    movies: Sequence[da.Array],
    *,
    tilt_angles: Sequence[float],
    pixel_size: float,
    exposure: Sequence[float] | float,
    acquisition_order: Sequence[int] | None = None,
    pre_exposure: Sequence[float] | None = None,
    microscope: Microscope | None = None,
    tilt_axis_angle: float = 0.0,
    names: Sequence[str] | None = None,
) -> TiltSeries:
    """A lazy (tilt, frame, y, x) series from per-tilt movies (frame, y, x) in the given tilt order."""
    if not movies:
        raise ModelError("movies", "no movies given")
    arrays = [da.asarray(m) for m in movies]
    label = (lambda i: names[i]) if names is not None else (lambda i: f"movie {i}")
    for i, a in enumerate(arrays):
        if a.ndim == 2:
            arrays[i] = a[None]
        elif a.ndim != 3:
            raise ModelError("movie shape", f"{label(i)}: expected (frame, y, x), got shape {a.shape}")
    first = arrays[0].shape
    for i, a in enumerate(arrays):
        if a.shape != first:
            raise ModelError("movie shape", f"{label(i)} has shape {a.shape}, expected {first} like {label(0)} (frames, y, x)")
    data = da.stack([a.astype(np.float32).rechunk(first) for a in arrays])
    return TiltSeries.from_array(
        data, tilt_angles=tilt_angles, pixel_size=pixel_size, exposure=exposure, acquisition_order=acquisition_order,
        pre_exposure=pre_exposure, microscope=microscope, tilt_axis_angle=tilt_axis_angle, name="frames",
    )


def tilt_statistics(ts: TiltSeries) -> tuple[np.ndarray, np.ndarray]:
    """Per-tilt mean and standard deviation of the pixel values (frames summed first)."""
    arr = da.asarray(ts.data.data)
    images = arr.sum(axis=1) if ts.has_frames else arr
    mean, std = progress.compute(images.mean(axis=(1, 2)), images.std(axis=(1, 2)), quiet=True)
    return np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)


def unusable_tilts(mean: np.ndarray, std: np.ndarray, *, dark_fraction: float = 0.3) -> dict[int, str]:
    """Indices of empty or dark tilts with the reason (see the module docstring)."""
    reasons: dict[int, str] = {}
    for i in range(mean.size):
        if not (np.isfinite(mean[i]) and np.isfinite(std[i])):
            reasons[i] = "empty: non-finite pixel values"
        elif std[i] == 0:
            reasons[i] = f"empty: constant image (value {mean[i]:g})"
    good = [i for i in range(mean.size) if i not in reasons]
    for i in good:
        others = [mean[j] for j in good if j != i]
        if others:
            reference = float(np.median(others))
            if mean[i] < dark_fraction * reference:
                reasons[i] = f"dark: mean {mean[i]:.4g} < {dark_fraction:g} x median of the other tilts ({reference:.4g})"
    return reasons


def assemble(ts: TiltSeries, *, dark_fraction: float = 0.3) -> Assembly:
    """Sort a tilt series by angle and drop dark or empty tilts (logged with their reason).

    Acquisition order is renumbered over the kept tilts; exposure and pre-exposure are kept.
    """
    if not 0 <= dark_fraction < 1:
        raise ModelError("dark_fraction", f"expected a fraction in [0, 1), got {dark_fraction}")
    mean, std = tilt_statistics(ts)
    reasons = unusable_tilts(mean, std, dark_fraction=dark_fraction)
    angles = ts.tilt_angles
    dropped = [DroppedTilt(i, float(angles[i]), r) for i, r in sorted(reasons.items())]
    for d in dropped:
        log.warning("dropping tilt %d (%.2f deg): %s", d.index, d.tilt_angle, d.reason)
    keep = [i for i in np.argsort(angles, kind="stable") if i not in reasons]
    if not keep:
        raise ModelError("tilts", "every tilt is dark or empty; nothing to assemble")
    return Assembly(ts.select_tilts(np.asarray(keep)), dropped, tuple(int(i) for i in keep))
