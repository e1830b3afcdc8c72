"""One-dimensional searches of the alignment: bracketing, Brent's method, and the standard error of the optimum.

Every search maximises a mean of per-item scores (per tilt, per pair of tilts) over an angle, says
whether it converged inside its bound, and estimates the optimum's standard error by the delta method:
the standard error of the mean slope at the optimum (from the per-item slopes: independent items, or a
jackknife where items share data) over the curvature of the mean score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.optimize import minimize_scalar

GOLDEN_GROWTH = 1.618


@dataclass(frozen=True)
class AngleSearch:
    """Outcome of `maximise`: the angle (deg), its standard error (deg; NaN when the score has no maximum
    there), the number of score evaluations and whether the search stopped at its bound."""

    angle_deg: float
    sigma_deg: float
    evaluations: int
    at_bound: bool


def bracket(cost: Callable[[float], float], x0: float, step: float, bound: float) -> tuple[float, float, bool]:
    """(lo, hi, at_bound): an interval holding a minimum of `cost`, found by walking downhill from x0 in
    steps that grow 1.618 x, never further than `bound` from x0 (at_bound: the cost still fell there)."""
    f0, fp = cost(x0), cost(x0 + step)
    if fp >= f0:
        fm = cost(x0 - step)
        if fm >= f0:
            return x0 - step, x0 + step, False
        step, prev, x, fx = -step, x0, x0 - step, fm
    else:
        prev, x, fx = x0, x0 + step, fp
    while True:
        nxt = x + GOLDEN_GROWTH * (x - prev)
        if abs(nxt - x0) >= bound:
            nxt = x0 + np.copysign(bound, step)
        fn = cost(nxt)
        if fn >= fx:
            return min(prev, nxt), max(prev, nxt), False
        if abs(nxt - x0) >= bound:
            return min(x, nxt), max(x, nxt), True
        prev, x, fx = x, nxt, fn


def independent_error(slopes: np.ndarray) -> float:
    """Standard error of the mean of independent items."""
    return float(np.std(slopes, ddof=1) / np.sqrt(len(slopes)))


def delta_sigma(scores: Callable[[float], np.ndarray], best: float, h: float,
                standard_error: Callable[[np.ndarray], float] = independent_error) -> float:
    """Standard error (deg) of the maximiser of mean(scores(a)) at `best`, from finite differences of step h:
    the standard error of the mean slope (`standard_error` of the per-item slopes) over the curvature."""
    sm, s0, sp = scores(best - h), scores(best), scores(best + h)
    curvature = (np.mean(sp) - 2 * np.mean(s0) + np.mean(sm)) / h**2
    slopes = (sp - sm) / (2 * h)
    if not curvature < 0 or len(slopes) < 2:
        return float("nan")
    return float(standard_error(slopes) / -curvature)


def maximise(
    scores: Callable[[float], np.ndarray],
    start: float,
    *,
    step: float,
    bound: float,
    tolerance: float,
    h: float,
    standard_error: Callable[[np.ndarray], float] = independent_error,
) -> AngleSearch:
    """Angle maximising mean(scores(a)) within `bound` of `start`: bracketed from `step`, then Brent's
    bounded method to `tolerance`; standard error by `delta_sigma` with step h (all in deg)."""
    cache: dict[float, np.ndarray] = {}

    def cached(a: float) -> np.ndarray:
        a = float(a)
        if a not in cache:
            cache[a] = np.asarray(scores(a), dtype=np.float64)
        return cache[a]

    def cost(a: float) -> float:
        return -float(np.mean(cached(a)))

    lo, hi, at_bound = bracket(cost, float(start), step, bound)
    best = float(minimize_scalar(cost, bounds=(lo, hi), method="bounded", options={"xatol": tolerance}).x)
    at_bound = at_bound and abs(abs(best - start) - bound) < 2 * tolerance
    return AngleSearch(best, delta_sigma(cached, best, h, standard_error), len(cache), at_bound)
