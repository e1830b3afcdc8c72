"""Automatic curation: accept or reject picks by their agreement with a first average, standing in
for a person's accept/reject on the gallery.

Each pick's agreement is its correlation with the average of the `top_n` best-scoring picks
(`rank.agreement_with_average`). A pick is accepted when its agreement reaches a threshold set by
the `keep` rule:

- ``"split"`` (default): the two-class split of the agreement values (Otsu's threshold: the cut
  that maximises the between-class variance of the values below and above it). Template matching
  at its statistical cut-off returns true particles, which agree with the average, mixed with
  false peaks (noise, membranes, contamination), which do not: the two populations the split
  separates;
- ``"top:F"``: the best fraction F (0 < F <= 1) by agreement;
- ``"min:C"``: agreement >= C (a correlation, -1..1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryocloud.curate.rank import agreement_with_average
from cryocloud.errors import ModelError
from cryocloud.model import Particles, Tomogram


@dataclass(frozen=True)
class AutoCuration:
    """agreement (N,) correlations with the first average; accepted (N,) bool; the threshold and
    the rule that set it; the first average (b, b, b) float32."""

    agreement: np.ndarray
    accepted: np.ndarray
    threshold: float
    rule: str
    average: np.ndarray


def split_threshold(values: np.ndarray) -> float:
    """Otsu's two-class threshold of 1D values: the midpoint between the two sorted neighbours
    where the between-class variance n_lo n_hi (mean_hi - mean_lo)^2 is largest."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if v.size < 2:
        raise ModelError("agreement", f"a two-class split needs at least 2 values, got {v.size}")
    k = np.arange(1, v.size)  # class below: the first k values
    cumulative = np.cumsum(v)[:-1]
    mean_lo = cumulative / k
    mean_hi = (v.sum() - cumulative) / (v.size - k)
    between = k * (v.size - k) * (mean_hi - mean_lo) ** 2
    best = int(np.argmax(between))
    return float((v[best] + v[best + 1]) / 2)


def parse_keep(keep: str) -> tuple[str, float | None]:
    """(rule, its number) of a `keep` rule: ("split", None), ("top", F) or ("min", C)."""
    rule, _, argument = str(keep).partition(":")
    try:
        number = float(argument) if argument else None
    except ValueError:
        number = None
    if (rule == "split" and not argument) or (rule == "top" and number is not None and 0 < number <= 1) or (
        rule == "min" and number is not None and -1 <= number <= 1
    ):
        return rule, number
    raise ModelError("keep", f"expected 'split', 'top:F' (0 < F <= 1) or 'min:C' (-1 <= C <= 1), got {keep!r}")


def acceptance_threshold(agreement: np.ndarray, keep: str = "split") -> float:
    """The agreement threshold of a `keep` rule (see module docstring); accept agreement >= it."""
    rule, number = parse_keep(keep)
    values = np.asarray(agreement, dtype=np.float64)
    if rule == "split":
        return split_threshold(values)
    if rule == "top":
        return float(np.sort(values)[::-1][int(np.ceil(number * values.size)) - 1])
    return float(number)


def curate_automatically(
    tomogram: Tomogram, particles: Particles, *, box: int, top_n: int = 10, mask_radius_a: float | None = None, keep: str = "split"
) -> AutoCuration:
    """Agreement of every pick with the average of the top_n by score, and the accepted picks."""
    parse_keep(keep)
    agreement, average = agreement_with_average(tomogram, particles, box=box, top_n=min(top_n, len(particles)), mask_radius_a=mask_radius_a)
    threshold = acceptance_threshold(agreement, keep)
    return AutoCuration(agreement, agreement >= threshold, threshold, keep, average)
