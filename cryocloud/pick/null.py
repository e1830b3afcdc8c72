"""Empirical false-alarm cut-off from a null search: the same template search on a volume that holds
the searched tomogram's noise and nothing else.

The Gaussian cut-off (`peaks.false_alarm_threshold`) assumes scores whose tail is that of a normal
distribution of the search's sigma. Denoised tomograms break it: a Noise2Noise network leaves its
residual noise as smooth texture whose correlation with the template has heavier tails, and its
false picks clear the Gaussian cut-off (benchmark denoise-pick). The half-set difference gives that
noise directly: with `T = (E + O) / 2` the mean of the even- and odd-frame reconstructions, each
processed alike (`f` the denoiser or filter), `N = (f(E) - f(O)) / 2` carries the noise of
`(f(E) + f(O)) / 2` without its signal (`halves_difference`; for Noise2Noise
`denoise_halves(..., difference=True)`). Searched with the same template, orientations and weights,
every pick in `N` is a false one.

The cut-off: picks of the null search (local maxima, non-maximum suppression at the same minimum
distance as the real picks) are counted from the top; their tail above the `tail`-th highest, u,
is modelled as exponential (peaks over a threshold): the expected number above s is
`tail * exp(-(s - u) / beta)`, beta the mean excess of the `tail - 1` higher ones over u (its
maximum-likelihood estimate). The cut-off is where that count is `n_false`:

    threshold = u + beta ln(tail / n_false)

so n_false keeps its meaning (expected false picks in the whole volume), estimated from the noise
actually present instead of from a Gaussian model of it. The fit smooths the single highest null
pick (which it equals on average for n_false = 1) and extends below one expected false pick.

What the null cannot see: false picks made by structure that is not the target (membranes, gold,
other complexes) are signal, present in both halves and absent from their difference. On raw and
deconvolved tomograms of the twin the Gaussian cut-off lies above the null's (1.1-1.4 x: it counts
correlated scores as independent trials), and replacing it by the null's let 3-12 more false picks
through (benchmark twins, 64 x 96 x 96, seeds 3/4/5). So the cut-off is the higher of the two
(`extract_peaks(null_threshold=)`): the null never lowers the Gaussian cut-off, it raises it where
the noise's tail is heavier than Gaussian, as after a learned denoiser (there 1.27-1.35 x).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from cryocloud.errors import ModelError
from cryocloud.model import Tomogram
from cryocloud.pick.peaks import candidates, non_maximum_suppression

#: null picks in the fitted tail (the highest ones)
DEFAULT_TAIL = 10


def halves_difference(even: Tomogram, odd: Tomogram) -> Tomogram:
    """(even - odd) / 2, lazy: the null volume of the two half reconstructions' mean. A linear filter
    applied to it (the CTF deconvolution) gives the filtered mean's null; a learned denoiser is not
    linear, so denoise each half instead (`noise2noise.denoise_halves(..., difference=True)`)."""
    if even.shape != odd.shape:
        raise ModelError("odd", f"has shape {odd.shape}, expected the even half's {even.shape}")
    return even.with_data(0.5 * (even.data.data - odd.data.data))


def null_picks(null_scores: xr.DataArray, min_distance_voxels: float) -> np.ndarray:
    """Scores of the null search's picks, highest first: local maxima above 0 thinned by non-maximum
    suppression at `min_distance_voxels`, as the real picks are."""
    positions, values = candidates(null_scores, 0.0)
    if not len(values):
        return np.zeros(0, np.float64)
    keep = non_maximum_suppression(positions, values, min_distance_voxels)
    return np.sort(values[keep].astype(np.float64))[::-1]


def empirical_threshold(null_scores: xr.DataArray, *, min_distance_voxels: float, n_false: float = 1.0,
                        tail: int = DEFAULT_TAIL, source: str = "null search") -> float:
    """Score above which `n_false` false picks are expected, from the null search's score map
    (module docstring); `min_distance_voxels` as for the real picks."""
    if n_false <= 0:
        raise ModelError("n_false", f"expected a positive false-alarm count, got {n_false}")
    if tail < 2:
        raise ModelError("tail", f"expected at least 2 null picks in the fitted tail, got {tail}")
    picks = null_picks(null_scores, min_distance_voxels)
    if len(picks) < tail:
        raise ModelError("null_scores", f"{source}: {len(picks)} picks above 0, expected at least {tail} to fit the tail "
                                        "(a volume of pure noise, searched as the tomogram, gives one per particle volume)")
    top = picks[:tail]
    u = top[-1]
    beta = float(np.sum(top[:-1] - u) / (tail - 1))
    return float(u + beta * np.log(tail / n_false))


def check_same_search(summary: dict, null_summary: dict, source: str) -> None:
    """ModelError naming `source` (the null search's folder) unless it ran the search of `summary`:
    same template, orientations, weights, settings and tomogram shape (the search fingerprint)."""
    for key in ("search_id", "shape_zyx"):
        if summary.get(key) != null_summary.get(key):
            raise ModelError(key, f"{null_summary.get(key)!r} differs from the searched tomogram's {summary.get(key)!r}; expected "
                                  "the same search (template, angles, weighting, settings) on a volume of the same shape", source=source)
