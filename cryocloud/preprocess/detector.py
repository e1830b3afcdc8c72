"""Detector corrections of raw movie frames before alignment: gain reference, bad pixels, fixed-pattern check.

- Gain: SerialEM's gain references are multiplicative normalisation images; corrected frames are
  frames x gain. A gain recorded in another orientation than the frames is turned by
  `orient_gain` as MotionCor2's -RotGain / -FlipGain do: first a rotation counter-clockwise by
  0, 90, 180 or 270 degrees in the image's (x, y) = (column, row) frame (the frame in which
  cryocloud's tilt-axis angle is counter-clockwise), then a flip: "y" flips upside down (about the
  horizontal axis, -FlipGain 1), "x" left-right (about the vertical axis, -FlipGain 2).
- Bad pixels (a defect map, nonzero = bad, and/or hot pixels found in the frames) are replaced
  in every frame by the mean of their good neighbours (3 x 3, grown until each bad pixel has some):
  the mean, not the median, so that a sparse counting frame keeps its expected counts.
- Hot pixels: a pixel whose sum over the frames exceeds the median of its 3 x 3 neighbourhood by
  more than `n_sigma` robust standard deviations (1.4826 x MAD of those excesses, for counting data
  about the Poisson sigma).
- Fixed pattern: a detector pattern left uncorrected sits at the same pixels in every frame while
  the specimen drifts. `fixed_pattern` correlates the pixel-scale column (and row) profiles of the
  even- and odd-frame sums in detector coordinates: their noise is independent, so only a pattern
  fixed to the detector (or a specimen feature exactly one column wide) correlates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import dask
import dask.array as da
import numpy as np
from scipy import ndimage

from cryocloud.errors import ModelError

GainFlip = Literal["none", "x", "y"]
GAIN_ROTATIONS = (0, 90, 180, 270)
#: even/odd column-profile correlation above which a movie shows an uncorrected fixed pattern
FIXED_PATTERN_CORRELATION = 0.5
#: every frame shift below this (pixels) means the alignment held the frames still
LOCKED_SHIFT_PX = 0.5


def orient_gain(gain: np.ndarray, rotate_deg: int = 0, flip: GainFlip = "none") -> np.ndarray:
    """The gain (y, x) rotated counter-clockwise by `rotate_deg` in the (x, y) frame, then flipped (see module)."""
    if rotate_deg not in GAIN_ROTATIONS:
        raise ModelError("gain_rotate", f"expected one of {GAIN_ROTATIONS} (degrees counter-clockwise), got {rotate_deg}")
    if flip not in ("none", "x", "y"):
        raise ModelError("gain_flip", f"expected none, x (left-right) or y (upside down), got {flip!r}")
    # counter-clockwise with y pointing along increasing rows = clockwise as displayed with row 0 on top
    turned = np.rot90(gain, k=-(rotate_deg // 90))
    if flip == "y":
        turned = turned[::-1, :]
    elif flip == "x":
        turned = turned[:, ::-1]
    return np.ascontiguousarray(turned)


@dataclass(frozen=True)
class DetectorCorrection:
    """What to correct in raw frames: `gain` (y, x) multiplicative, already oriented like the frames;
    `defects` (y, x) bool, True = bad; `hot_pixel_sigma`: find hot pixels above this many robust
    sigmas (None: do not look). `gain_source` / `defects_source` name the files, for error messages."""

    gain: np.ndarray | None = None
    defects: np.ndarray | None = None
    hot_pixel_sigma: float | None = None
    gain_source: str | None = None
    defects_source: str | None = None

    def check(self, frame_shape: tuple[int, int]) -> None:
        """ModelError naming the file when the gain or defect map does not fit frames of `frame_shape` (y, x),
        or the gain is zero, negative or not finite at a pixel whose data it would multiply (not a defect)."""
        hints = {"gain": "check --gain-rotate / --gain-flip or the camera binning", "defects": "check the camera binning"}
        for name, image, source in (("gain", self.gain, self.gain_source), ("defects", self.defects, self.defects_source)):
            if image is not None and image.shape != tuple(frame_shape):
                raise ModelError(name, f"has shape {image.shape} (y, x) but the frames are {tuple(frame_shape)}; {hints[name]}", source=source)
        if self.gain is not None:
            bad = ~(np.isfinite(self.gain) & (self.gain > 0))
            if self.defects is not None:
                bad &= ~self.defects
            if bad.any():
                y, x = np.argwhere(bad)[0]
                raise ModelError("gain", f"{int(bad.sum())} pixels are zero, negative or not finite (first at x={x}, y={y}, value "
                                 f"{self.gain[y, x]}); expected a positive multiplicative gain where data are kept "
                                 "(mark dead pixels in a defect map)", source=self.gain_source)
        if self.hot_pixel_sigma is not None and not self.hot_pixel_sigma > 0:
            raise ModelError("hot_pixel_sigma", f"expected > 0 sigma, got {self.hot_pixel_sigma}")

    @property
    def active(self) -> bool:
        return self.gain is not None or self.defects is not None or self.hot_pixel_sigma is not None


def hot_pixels(frames: np.ndarray, n_sigma: float) -> np.ndarray:
    """Bool mask (y, x) of pixels whose sum over frames (frame, y, x) exceeds the median of its 3 x 3
    neighbourhood by more than `n_sigma` robust sigmas (see module); the local median keeps bright
    regions (an empty hole beside the ice) from being taken for hot pixels."""
    total = np.asarray(frames, dtype=np.float64).sum(axis=0)
    excess = total - ndimage.median_filter(total, size=3, mode="reflect")
    sigma = 1.4826 * np.median(np.abs(excess - np.median(excess)))
    if sigma == 0:  # sparse counts: the MAD vanishes; fall back to the Poisson sigma of the median sum
        sigma = np.sqrt(max(float(np.median(total)), 1.0))
    return excess > n_sigma * sigma


def fill_bad_pixels(frames: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Frames (frame, y, x) with the `bad` pixels (y, x) replaced by the mean of their good 3 x 3
    neighbours in the same frame; a bad pixel with none takes the mean of the ring filled before it."""
    out = np.array(frames, dtype=np.float32, copy=True)
    good = ~np.asarray(bad, dtype=bool)
    if good.all():
        return out
    if not good.any():
        raise ModelError("defects", "every pixel is marked bad")
    size = (1, 3, 3)
    while not good.all():
        weight = ndimage.uniform_filter(good.astype(np.float32), size=3, mode="constant")
        ring = ~good & (weight > 0)
        summed = ndimage.uniform_filter(out * good, size=size, mode="constant")
        out[:, ring] = summed[:, ring] / weight[ring]
        good = good | ring
    return out


def correct_frames(frames: np.ndarray, correction: DetectorCorrection | None) -> np.ndarray:
    """Raw frames (frame, y, x) -> gain-normalised frames with bad pixels filled, float32."""
    frames = np.asarray(frames, dtype=np.float32)
    if correction is None or not correction.active:
        return frames
    correction.check(frames.shape[1:])
    out = frames * correction.gain if correction.gain is not None else frames.copy()
    bad = np.zeros(frames.shape[1:], dtype=bool) if correction.defects is None else correction.defects.copy()
    if correction.gain is not None:  # a gain that is not positive is allowed at defects only (check): clear them
        bad |= ~(np.isfinite(correction.gain) & (correction.gain > 0))
        out[:, bad] = 0.0
    if correction.hot_pixel_sigma is not None:
        bad |= hot_pixels(out, correction.hot_pixel_sigma)
    return fill_bad_pixels(out, bad) if bad.any() else out


def _corrected_sum(block: np.ndarray, correction: DetectorCorrection | None) -> np.ndarray:
    return correct_frames(block[0], correction).sum(axis=0)[None]


def detector_corrected_sums(frames: da.Array, correction: DetectorCorrection | None) -> da.Array:
    """Lazy plain sums (tilt, y, x) of movie frames (tilt, frame, y, x) after detector correction, one task per tilt."""
    frames = da.asarray(frames).astype(np.float32)
    if correction is None:
        return frames.sum(axis=1)
    frames = frames.rechunk((1,) + frames.shape[1:])
    shared = dask.delayed(correction, pure=True)  # one graph key for the gain, not one copy per tilt
    return frames.map_blocks(_corrected_sum, shared, drop_axis=1, dtype=np.float32)


def _pixel_scale_profile(image: np.ndarray, axis: int) -> np.ndarray:
    """Mean of `image` (y, x) along `axis`, minus the mean of each value's two neighbours (pixel-scale detail)."""
    p = image.mean(axis=axis)
    return p[1:-1] - 0.5 * (p[:-2] + p[2:])


@dataclass(frozen=True)
class FixedPattern:
    """Evidence of an uncorrected detector pattern in one movie: `correlation`, the larger of the
    even/odd column- and row-profile correlations in detector coordinates; `max_shift_px`, the
    largest measured frame shift; `flagged` when the correlation is high (see module)."""

    correlation: float
    max_shift_px: float

    @property
    def flagged(self) -> bool:
        return self.correlation > FIXED_PATTERN_CORRELATION

    @property
    def locked(self) -> bool:
        """Every frame held within LOCKED_SHIFT_PX: the alignment likely followed the pattern."""
        return self.max_shift_px < LOCKED_SHIFT_PX

    def message(self, what: str) -> str:
        held = (f"; every frame shift < {LOCKED_SHIFT_PX} px, so the alignment likely locked onto it" if self.locked
                else f"; frames shifted up to {self.max_shift_px:.2f} px")
        return (f"{what}: an uncorrected fixed detector pattern (even/odd frame-sum column/row profiles correlate "
                f"r = {self.correlation:.2f} in detector coordinates{held}): is a gain reference (--gain) or defect map missing, "
                "or mis-oriented (--gain-rotate / --gain-flip)?")


def fixed_pattern(frames: np.ndarray, shifts_px: np.ndarray) -> FixedPattern:
    """Fixed-pattern evidence of frames (frame, y, x) as they go into the alignment, and their shifts (frame, 2) px."""
    shifts = np.asarray(shifts_px, dtype=np.float64)
    max_shift = float(np.sqrt((shifts**2).sum(axis=1)).max()) if shifts.size else 0.0
    if frames.shape[0] < 2:
        return FixedPattern(0.0, max_shift)
    even, odd = frames[0::2].sum(axis=0), frames[1::2].sum(axis=0)
    r = []
    for axis in (0, 1):  # columns, then rows
        a, b = _pixel_scale_profile(even, axis), _pixel_scale_profile(odd, axis)
        if a.std() > 0 and b.std() > 0:
            r.append(float(np.corrcoef(a, b)[0, 1]))
    return FixedPattern(max(r, default=0.0), max_shift)
