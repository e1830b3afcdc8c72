"""Tilt schemes: which angles are recorded, in which order, and the dose each one has seen.

Angles lie on a grid `start_angle + k * tilt_step` within [tilt_min, tilt_max] (degrees).
Schemes (acquisition order):

- ``unidirectional``: from the lowest angle to the highest.
- ``bidirectional``: from `start_angle` down to the lowest angle, then from `start_angle + step`
  up to the highest (the classic "start at 0 or +-20, go to one end, come back").
- ``dose-symmetric`` (Hagen, Wan & Briggs 2017, J. Struct. Biol. 197:191): start at
  `start_angle`, then alternate sides in groups of `group_size` tilts. The start angle counts as
  the first member of the first, positive group, which holds at least one further tilt. With a
  3 degree step: group 1 -> 0, +3, -3, +6, -6, ...; group 2 -> 0, +3, -3, -6, +6, +9, -9, -12, ...;
  group 3 -> 0, +3, +6, -3, -6, -9, +9, +12, +15, .... When one side runs out of angles the
  other side continues alone.

Dose: every tilt receives `dose_per_tilt` (e/A^2); the pre-exposure of a tilt is the sum of the
doses of the tilts acquired before it (`cryocloud.model.accumulated_pre_exposure`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from cryocloud.errors import ModelError
from cryocloud.model import accumulated_pre_exposure

SchemeName = Literal["dose-symmetric", "bidirectional", "unidirectional"]
SCHEMES: tuple[str, ...] = ("dose-symmetric", "bidirectional", "unidirectional")


@dataclass(frozen=True)
class TiltScheme:
    """A tilt scheme's angles in ascending order with per-angle acquisition bookkeeping.

    angles: (T,) degrees, ascending; acquisition_order: (T,) 0 = first exposed;
    exposure: (T,) e/A^2 of each tilt; pre_exposure: (T,) e/A^2 accumulated before each tilt.
    """

    name: str
    angles: np.ndarray
    acquisition_order: np.ndarray
    exposure: np.ndarray
    pre_exposure: np.ndarray

    @property
    def angles_in_acquisition_order(self) -> np.ndarray:
        """Angles (degrees) in the order they were recorded."""
        return self.angles[np.argsort(self.acquisition_order)]

    @property
    def n_tilts(self) -> int:
        return int(self.angles.size)


def _grid(tilt_min: float, tilt_max: float, tilt_step: float, start_angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Angles below and above `start_angle` on its grid: (below descending, above ascending)."""
    eps = 1e-6 * tilt_step
    n_below = int(np.floor((start_angle - tilt_min) / tilt_step + 1e-6))
    n_above = int(np.floor((tilt_max - start_angle) / tilt_step + 1e-6))
    below = start_angle - tilt_step * np.arange(1, n_below + 1)
    above = start_angle + tilt_step * np.arange(1, n_above + 1)
    return below[below >= tilt_min - eps], above[above <= tilt_max + eps]


def _dose_symmetric_order(start: float, below: np.ndarray, above: np.ndarray, group_size: int) -> list[float]:
    order = [start]
    first = max(group_size - 1, 1)
    ia = min(first, above.size)
    order.extend(above[:ia])
    ib = 0
    negative = True
    while ia < above.size or ib < below.size:
        if negative:
            take = below[ib : ib + group_size]
            ib += take.size
        else:
            take = above[ia : ia + group_size]
            ia += take.size
        order.extend(take)
        negative = not negative
    return [float(a) for a in order]


def _check(tilt_min: float, tilt_max: float, tilt_step: float, start_angle: float, group_size: int, dose: float) -> None:
    if not (-90 <= tilt_min <= tilt_max <= 90):
        raise ModelError("tilt_min/tilt_max", f"expected -90 <= tilt_min <= tilt_max <= 90 degrees, got {tilt_min}, {tilt_max}")
    if not tilt_step > 0:
        raise ModelError("tilt_step", f"expected a positive step in degrees, got {tilt_step}")
    if not (tilt_min - 1e-9 <= start_angle <= tilt_max + 1e-9):
        raise ModelError("start_angle", f"expected an angle within [{tilt_min}, {tilt_max}] degrees, got {start_angle}")
    if group_size < 1:
        raise ModelError("group_size", f"expected at least 1 tilt per group, got {group_size}")
    if dose < 0:
        raise ModelError("dose_per_tilt", f"expected a dose >= 0 e/A^2, got {dose}")


def tilt_scheme(
    scheme: SchemeName = "dose-symmetric",
    tilt_min: float = -60.0,
    tilt_max: float = 60.0,
    tilt_step: float = 3.0,
    *,
    start_angle: float = 0.0,
    group_size: int = 2,
    dose_per_tilt: float = 3.0,
) -> TiltScheme:
    """Angles, acquisition order, exposure and pre-exposure of a tilt scheme (see module docstring).

    Angles in degrees, doses in e/A^2. `start_angle` is used by the bidirectional and
    dose-symmetric schemes and anchors the angle grid of all three.
    """
    _check(tilt_min, tilt_max, tilt_step, start_angle, group_size, dose_per_tilt)
    below, above = _grid(tilt_min, tilt_max, tilt_step, start_angle)
    if scheme == "unidirectional":
        in_order = [float(a) for a in np.concatenate([below[::-1], [start_angle], above])]
    elif scheme == "bidirectional":
        in_order = [float(a) for a in np.concatenate([[start_angle], below, above])]
    elif scheme == "dose-symmetric":
        in_order = _dose_symmetric_order(start_angle, below, above, group_size)
    else:
        raise ModelError("scheme", f"expected one of {SCHEMES}, got {scheme!r}")
    acquired = np.round(np.asarray(in_order, dtype=np.float64), 9)
    sort = np.argsort(acquired, kind="stable")
    angles = acquired[sort]
    order = sort.astype(np.int64)  # the i-th smallest angle was acquired as number sort[i]
    exposure = np.full(angles.size, float(dose_per_tilt))
    return TiltScheme(
        name=scheme,
        angles=angles,
        acquisition_order=order,
        exposure=exposure,
        pre_exposure=accumulated_pre_exposure(order, exposure),
    )
