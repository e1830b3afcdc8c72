"""The result of tilt-series alignment and how it is written into a TiltSeries and IMOD files."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cryocloud.errors import ModelError
from cryocloud.model import TiltSeries
from cryocloud.store.tiltfiles import xf_from_alignments


@dataclass(frozen=True)
class AlignmentResult:
    """Alignment of one tilt series, per tilt in the order of the tilt series it was computed from.

    tilt_axis_angle_deg: tilt axis in the raw images, counter-clockwise from image y (deg).
    shifts_a: (T, 2) shift_x, shift_y (A) in the convention of `cryocloud.geometry.aligned_to_raw`;
        the volume-translation gauge is removed (`cryocloud.alignment.axis.remove_gauge`).
    tilt_offset_deg: added to the nominal tilt angles (0 unless estimated).
    residuals: (T,) per-tilt residual (A) of the refinement: RMS patch-model residual
        ("patch-tracking"), length of the last projection-matching correction
        ("projection-matching"), NaN without refinement ("none").
    tilt_angles_deg: nominal tilt angles (T,) (deg); pixel_size_a: raw pixel size (A).
    axis_uncertainty_deg: standard error of the tilt-axis angle (deg) from its last estimate; NaN when
        the axis was not estimated or its score has no maximum there (a search stopped at its bound).
    model_residuals_a: (T,) RMS residual (A) of patches tracked at the final geometry against it
        (`axis.geometry_residuals`), whatever the method: how well each tilt fits the alignment.
    limits: one message per search that stopped at a cap or bound instead of converging (empty: all converged).
    """

    tilt_axis_angle_deg: float
    shifts_a: np.ndarray
    tilt_offset_deg: float
    residuals: np.ndarray
    tilt_angles_deg: np.ndarray
    pixel_size_a: float
    method: str
    binning: int
    axis_uncertainty_deg: float = float("nan")
    model_residuals_a: np.ndarray | None = None
    limits: tuple[str, ...] = ()

    @property
    def corrected_tilt_angles_deg(self) -> np.ndarray:
        """Tilt angles with the offset applied (deg): what IMOD's .tlt holds after alignment."""
        return np.asarray(self.tilt_angles_deg) + self.tilt_offset_deg

    def xf_rows(self) -> np.ndarray:
        """IMOD .xf rows (T, 6) in raw pixels mapping raw to aligned images."""
        return xf_from_alignments(self.tilt_axis_angle_deg, np.asarray(self.shifts_a) / self.pixel_size_a)

    def apply_to(self, ts: TiltSeries) -> TiltSeries:
        """`ts` with per-tilt shift_x / shift_y (A), the tilt-axis angle and the corrected tilt angles set."""
        if ts.n_tilts != len(self.shifts_a):
            raise ModelError("tilt", f"the alignment has {len(self.shifts_a)} tilts, the tilt series {ts.n_tilts}")
        if not np.allclose(ts.tilt_angles, self.tilt_angles_deg, atol=1e-6):
            raise ModelError("tilt_angle", "the tilt series' angles differ from those the alignment was computed for")
        updated = ts.with_per_tilt(
            shift_x=self.shifts_a[:, 0], shift_y=self.shifts_a[:, 1], tilt_angle=self.corrected_tilt_angles_deg
        )
        return replace(updated, tilt_axis_angle=float(self.tilt_axis_angle_deg))

    def summary(self) -> dict:
        """JSON-ready description (stored in the tilt series metadata)."""
        return {
            "method": self.method,
            "binning": self.binning,
            "tilt_axis_angle_deg": float(self.tilt_axis_angle_deg),
            "tilt_offset_deg": float(self.tilt_offset_deg),
            "residuals_a": _json_list(self.residuals),
            "axis_uncertainty_deg": None if not np.isfinite(self.axis_uncertainty_deg) else float(self.axis_uncertainty_deg),
            "model_residuals_a": None if self.model_residuals_a is None else _json_list(self.model_residuals_a),
            "converged": not self.limits,
            "limits": list(self.limits),
        }

    def quality_lines(self) -> list[str]:
        """The result's own quality figures, one line each, for people: axis and its uncertainty, residuals, limits."""
        sigma = f" +- {self.axis_uncertainty_deg:.2f}" if np.isfinite(self.axis_uncertainty_deg) else " (uncertainty unknown)"
        lines = [f"tilt axis {self.tilt_axis_angle_deg:.2f}{sigma} deg, tilt offset {self.tilt_offset_deg:.2f} deg ({self.method})"]
        if self.model_residuals_a is not None and np.any(np.isfinite(self.model_residuals_a)):
            r = np.asarray(self.model_residuals_a)
            worst = int(np.nanargmax(r))
            lines.append(f"patch residual per tilt against the alignment: median {np.nanmedian(r):.1f} A, "
                         f"max {r[worst]:.1f} A at {self.tilt_angles_deg[worst]:g} deg")
        lines += [f"stopped at a bound: {m}" for m in self.limits] or ["every search converged to its tolerance"]
        return lines


def _json_list(values: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(v) for v in values]
