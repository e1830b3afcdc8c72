"""Weighting filters of weighted back-projection, applied to tilt-image rows (tilt, y, x) along x.

Frequencies are in cycles per (binned) pixel, 0.5 = Nyquist, as in IMOD's RADIAL option.

- Every tilt i is weighted by its angular interval dtheta_i (radians: half the gap to each
  neighbour, the end tilts mirror their single gap), so uneven tilt schemes are weighted by the
  angular density they actually sample: f = sum_i dtheta_i BP(p_i * h).
- "radial": the exact discrete ramp h (Ram-Lak: h(0) = 1/4, h(n odd) = -1/(pi n)^2, its DFT is |f|
  with the right non-zero DC term) times a Gaussian falloff exp(-(f - cutoff)^2 / (2 sigma^2))
  beyond `cutoff` (IMOD RADIAL cutoff, sigma with FalloffIsTrueSigma 1).
- "sirt": the radial filter times the window of N iterations of SIRT (Zeng 2012, Med. Phys. 39:603,
  "a filtered backprojection algorithm with characteristics of the iterative Landweber
  algorithm"). N Landweber/SIRT steps from zero give x_N = [1 - (1 - M)^N] M^-1 (normalised
  back-projection), with M the normalised normal operator C A^T R A. For parallel beams A^T A is
  1 / (f dtheta) at radial frequency f; SIRT's row normalisation R ~ 1 / thickness and column
  normalisation C ~ 1 / n_tilts make M(f) = 1 / (f * thickness * sum_i dtheta_i), capped at 1
  (SIRT's operator has norm <= 1). The window W_N(f) = 1 - (1 - M(f))^N is 1 at low frequencies
  (converged) and ~ N M(f) at high ones, like SIRT after N iterations.
- "none": plain back-projection with the angular weights only.

Rows are padded to a fast FFT length >= 2 x (padding repeats the edge values, so a
specimen running off the image edge gives no bright rim).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

from cryocloud.errors import ModelError

FILTERS = ("radial", "sirt", "none")


@dataclass(frozen=True)
class FilterSpec:
    """Weighting of weighted back-projection (frequencies in cycles per pixel, 0.5 = Nyquist)."""

    kind: str = "radial"
    radial_cutoff: float = 0.35
    radial_falloff: float = 0.035
    sirt_iterations: int = 10

    def __post_init__(self) -> None:
        if self.kind not in FILTERS:
            raise ModelError("filter", f"expected one of {FILTERS}, got {self.kind!r}")
        if not 0 < self.radial_cutoff <= 0.5:
            raise ModelError("radial_cutoff", f"expected cycles/pixel in (0, 0.5], got {self.radial_cutoff}")
        if self.radial_falloff <= 0:
            raise ModelError("radial_falloff", f"expected a positive sigma in cycles/pixel, got {self.radial_falloff}")
        if self.kind == "sirt" and self.sirt_iterations < 1:
            raise ModelError("sirt_iterations", f"expected >= 1 iteration, got {self.sirt_iterations}")


def angular_weights(tilt_angles_deg) -> np.ndarray:
    """Angular interval (radians) each tilt stands for, in the order given (tilts may be unsorted)."""
    angles = np.deg2rad(np.asarray(tilt_angles_deg, dtype=np.float64).reshape(-1))
    if angles.size == 1:
        return np.ones(1)
    order = np.argsort(angles, kind="stable")
    s = angles[order]
    gaps = np.diff(s)
    if np.any(gaps <= 0):
        raise ModelError("tilt_angle", "contains repeated angles; each tilt must have its own angle")
    left = np.concatenate([[gaps[0]], gaps])
    right = np.concatenate([gaps, [gaps[-1]]])
    weights = np.empty_like(angles)
    weights[order] = 0.5 * (left + right)
    return weights


def padded_length(n: int) -> int:
    """FFT length used to filter rows of `n` pixels (>= 2 n, fast for pocketfft)."""
    return scipy.fft.next_fast_len(2 * n, real=True)


def _exact_ramp(n_pad: int) -> np.ndarray:
    """rfft of the discrete Ram-Lak kernel on a circle of `n_pad` samples (~|f|, f cycles/pixel)."""
    k = np.arange(n_pad)
    n = np.minimum(k, n_pad - k)
    h = np.zeros(n_pad)
    h[0] = 0.25
    odd = n % 2 == 1
    h[odd] = -1.0 / (np.pi * n[odd]) ** 2
    return scipy.fft.rfft(h).real


def filter_response(n_x: int, tilt_angles_deg, spec: FilterSpec, *, thickness_px: int) -> np.ndarray:
    """Per-tilt frequency response (tilt, padded_length(n_x) // 2 + 1), float64, of `spec`."""
    n_pad = padded_length(n_x)
    f = scipy.fft.rfftfreq(n_pad)
    weights = angular_weights(tilt_angles_deg)
    if spec.kind == "none":
        return np.broadcast_to(weights[:, None], (weights.size, f.size)).copy()
    h = _exact_ramp(n_pad)
    beyond = np.clip(f - spec.radial_cutoff, 0.0, None)
    h = h * np.exp(-(beyond**2) / (2.0 * spec.radial_falloff**2))
    if spec.kind == "sirt":
        with np.errstate(divide="ignore"):
            m = np.minimum(1.0, 1.0 / (f * thickness_px * weights.sum()))
        h = h * (1.0 - (1.0 - m) ** spec.sirt_iterations)
    return weights[:, None] * h[None, :]


def apply_filter(rows: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Filter rows (tilt, y, x) along x with a response from `filter_response`; float32 out."""
    n_t, n_y, n_x = rows.shape
    n_pad = padded_length(n_x)
    if response.shape[1] != n_pad // 2 + 1:
        raise ValueError(f"response has {response.shape[1]} frequencies, rows of {n_x} need {n_pad // 2 + 1}")
    padded = np.empty((n_t, n_y, n_pad), dtype=np.float32)
    padded[..., :n_x] = rows
    extra = n_pad - n_x
    padded[..., n_x : n_x + extra // 2] = rows[..., -1:]  # right edge continues to the right...
    padded[..., n_x + extra // 2 :] = rows[..., :1]  # ...and the left edge wraps round from the left
    spectrum = scipy.fft.rfft(padded, axis=-1)
    spectrum *= response[:, None, :].astype(np.float32)
    return scipy.fft.irfft(spectrum, n=n_pad, axis=-1)[..., :n_x].astype(np.float32, copy=False)
