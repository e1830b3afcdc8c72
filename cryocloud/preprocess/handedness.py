"""Handedness of a tilt series: the sign of its tilt angles, from the defocus gradient across the tilt axis.

At tilt t the specimen mid-plane is imaged with defocus df(x') = df0 + x' tan t, x' the distance (A) across
the tilt axis in the aligned frame (geometry.py: at positive tilt the side of larger x' is more underfocused,
as in IMOD / Dynamo / novaCTF). A series whose tilt angles carry the wrong sign shows the opposite gradient
(its tomogram is mirrored). After the idea of Warp's defocus-handedness check, per tilt:

1. the tiles on each side of the axis (x' < 0, x' > 0; `tile_spectra(side=...)`) are fitted on their own with
   the CTF estimator (`fit_tiles`, full defocus range, no gradient assumed within a side, so the fit favours
   neither hand): mean defocus (U + V) / 2 of each side and the mean x' of its tiles;
2. measured difference = df(+) - df(-); predicted difference = (x'(+) - x'(-)) tan t.

Over the tilts whose two side fits are both good, the measured difference is regressed on the predicted one
through the origin: slope ~ +1, the hand is right; ~ -1, the tilt angles' sign is flipped. The verdict needs
the slope's sign to be significant (two-sided t-test, p < `alpha`); otherwise, or with fewer than
`MIN_TILTS` usable tilts, it is "undetermined". Fix a flipped series with `with_negated_tilt_angles`.

Units: Angstrom, degrees; defocus positive = underfocus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import dask
import dask.array as da
import numpy as np
import pandas as pd
from scipy import stats

from cryocloud import progress
from cryocloud.errors import ModelError
from cryocloud.geometry import image_defocus_gradient
from cryocloud.model import Microscope, TiltSeries
from cryocloud.preprocess.ctf_estimate import CtfSearch, fit_tiles, on_side, tile_grid, tile_spectra

SIDE_COLUMNS = ("defocus_minus_a", "defocus_plus_a", "distance_minus_a", "distance_plus_a", "poor_fit")

#: fewest tilts with good fits on both sides for a verdict
MIN_TILTS = 3

@dataclass(frozen=True)
class SideFits:
    """Defocus (A, mean of U and V) fitted on each side of the tilt axis of one image (x' < 0: minus, x' > 0:
    plus), the mean distance x' (A) of each side's tiles from the axis, and whether either fit is poor."""

    defocus_minus_a: float
    defocus_plus_a: float
    distance_minus_a: float
    distance_plus_a: float
    poor_fit: bool

    def as_array(self) -> np.ndarray:
        return np.array([getattr(self, c) for c in SIDE_COLUMNS], dtype=np.float64)


@dataclass(frozen=True)
class Handedness:
    """Verdict ("right", "flipped" or "undetermined"), the slope of measured on predicted side-to-side defocus
    differences and its standard error, the two-sided p-value of its sign, the tilts used, why the verdict is
    undetermined (empty otherwise), and the per-tilt table (stack order): tilt_angle, SIDE_COLUMNS,
    predicted_difference_a, measured_difference_a, used."""

    verdict: str
    slope: float
    slope_se: float
    p_value: float
    n_tilts_used: int
    reason: str
    table: pd.DataFrame

    def summary(self) -> dict:
        """The figures without the table, JSON-ready (NaN as None)."""
        def number(v: float) -> float | None:
            return round(float(v), 4) if np.isfinite(v) else None

        return {"verdict": self.verdict, "slope": number(self.slope), "slope_se": number(self.slope_se),
                "p_value": None if not np.isfinite(self.p_value) else float(f"{self.p_value:.3g}"),
                "n_tilts_used": self.n_tilts_used, "reason": self.reason}

    def to_json(self) -> str:
        """`summary` with the per-tilt table (records, NaN as null) under "tilts"."""
        return json.dumps({**self.summary(), "tilts": json.loads(self.table.to_json(orient="records", double_precision=6))}, indent=1)

    def describe(self) -> str:
        """One line: verdict, slope +- standard error, tilts used (and the reason when undetermined)."""
        line = f"handedness: {self.verdict} (slope {self.slope:+.2f} +- {self.slope_se:.2f}, {self.n_tilts_used} of {len(self.table)} tilts)"
        return f"{line}: {self.reason}" if self.reason else line


def side_box(shape: tuple[int, int], box: int) -> int:
    """Tile size (pixels, even) for the side fits: `box`, at most half the image's shorter side, so that
    tiles lie wholly on either side of a central axis."""
    return int(min(box, min(shape) // 2)) // 2 * 2


def side_defocus(
    image: np.ndarray,
    pixel_size_a: float,
    *,
    microscope: Microscope = Microscope(),
    tilt_axis_angle_deg: float = 0.0,
    shift_xy_a=(0.0, 0.0),
    search: CtfSearch = CtfSearch(),
) -> SideFits:
    """Fit the defocus of the tiles on each side of the tilt axis of one image (y, x) separately, over the
    full range of `search` (tile size: `side_box`), with no gradient assumed within a side."""
    search = replace(search, box=side_box(np.shape(image), search.box))
    defocus, distance, poor = [], [], False
    for side in (-1, 1):
        tiles = tile_spectra(image, pixel_size_a, box=search.box, tilt_axis_angle_deg=tilt_axis_angle_deg, shift_xy_a=shift_xy_a, side=side)
        _, across = tile_grid(np.shape(image), tiles.box, pixel_size_a, tilt_axis_angle_deg, shift_xy_a)
        fit = fit_tiles(tiles, microscope, search)
        defocus.append(0.5 * (fit.defocus_u + fit.defocus_v))
        distance.append(float(across[on_side(across, side, pixel_size_a)].mean()))
        poor = poor or fit.poor_fit
    return SideFits(defocus[0], defocus[1], distance[0], distance[1], poor)


def handedness_from_sides(tilt_angles: np.ndarray, sides: np.ndarray, *, alpha: float = 1e-3) -> Handedness:
    """Regress the measured side-to-side defocus differences on the predicted ones (tilts whose side fits
    are good, through the origin) and judge the hand. `sides`: (tilt, len(SIDE_COLUMNS)) rows of
    `SideFits.as_array`."""
    angles = np.asarray(tilt_angles, dtype=np.float64)
    table = pd.DataFrame(np.asarray(sides, dtype=np.float64).reshape(len(angles), len(SIDE_COLUMNS)), columns=list(SIDE_COLUMNS))
    table["poor_fit"] = table["poor_fit"].astype(bool)
    table.insert(0, "tilt_angle", angles)
    table["predicted_difference_a"] = (image_defocus_gradient(table["distance_plus_a"], angles, 0.0)
                                       - image_defocus_gradient(table["distance_minus_a"], angles, 0.0))
    table["measured_difference_a"] = table["defocus_plus_a"] - table["defocus_minus_a"]
    table["used"] = ~table["poor_fit"]
    used = table[table["used"]]
    predicted, measured = used["predicted_difference_a"].to_numpy(), used["measured_difference_a"].to_numpy()
    n = len(used)
    leverage = float(np.sum(predicted**2))
    if n < MIN_TILTS or leverage == 0.0:
        reason = (f"only {n} tilts have good defocus fits on both sides of the axis (need {MIN_TILTS})" if n < MIN_TILTS
                  else "no usable tilt predicts a defocus difference (all at 0 deg)")
        return Handedness("undetermined", np.nan, np.nan, np.nan, n, reason, table)
    slope = float(np.sum(predicted * measured) / leverage)
    residual_var = float(np.sum((measured - slope * predicted) ** 2)) / (n - 1)
    slope_se = float(np.sqrt(residual_var / leverage))
    p_value = float(2 * stats.t.sf(abs(slope) / slope_se, n - 1)) if slope_se > 0 else 0.0
    if p_value >= alpha:
        reason = f"the slope's sign is not significant (p = {p_value:.2g} >= {alpha:g})"
        return Handedness("undetermined", slope, slope_se, p_value, n, reason, table)
    return Handedness("right" if slope > 0 else "flipped", slope, slope_se, p_value, n, "", table)


def _side_task(block: np.ndarray, pixel_size_a: float, microscope: Microscope, axis: float, shift, search: CtfSearch) -> np.ndarray:
    fits = side_defocus(block[0], pixel_size_a, microscope=microscope, tilt_axis_angle_deg=axis, shift_xy_a=shift, search=search)
    return fits.as_array()[None]


def estimate_handedness(ts: TiltSeries, *, search: CtfSearch = CtfSearch(), alpha: float = 1e-3, quiet: bool = True) -> Handedness:
    """Judge the handedness of a tilt series (one Dask task per tilt: `side_defocus`), then
    `handedness_from_sides`. Uses the tilt axis angle and, when set, the per-tilt shifts (A)."""
    if ts.has_frames:
        raise ModelError("dims", "the handedness check needs summed images (tilt, y, x); motion-correct the frames first")
    search.band(ts.pixel_size)
    arr = da.asarray(ts.data.data).astype(np.float32)
    arr = arr.rechunk((1,) + arr.shape[1:])
    shift_x, shift_y = ts.per_tilt("shift_x"), ts.per_tilt("shift_y")
    rows = []
    for i, block in enumerate(arr.to_delayed().ravel()):
        shift = (0.0 if shift_x is None else float(shift_x[i]), 0.0 if shift_y is None else float(shift_y[i]))
        task = dask.delayed(_side_task, pure=True)(block, ts.pixel_size, ts.microscope, ts.tilt_axis_angle, shift, search)
        rows.append(da.from_delayed(task, shape=(1, len(SIDE_COLUMNS)), dtype=np.float64))
    (sides,) = progress.compute(da.concatenate(rows, axis=0), description="handedness check", quiet=quiet)
    return handedness_from_sides(ts.tilt_angles, sides, alpha=alpha)


def with_negated_tilt_angles(ts: TiltSeries) -> TiltSeries:
    """The correction of a flipped hand: the tilt angles negated, the stack re-sorted by angle."""
    return ts.with_per_tilt(tilt_angle=0.0 - ts.tilt_angles).sorted_by_angle()  # 0.0 - x: 0 stays 0, not -0
