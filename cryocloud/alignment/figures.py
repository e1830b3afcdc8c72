"""Figure of an alignment: per-tilt residuals and shifts against the tilt angle."""

from __future__ import annotations

from typing import IO

import numpy as np

from cryocloud.alignment.result import AlignmentResult
from cryocloud.plotting import subplots


def save_residuals_png(result: AlignmentResult, target: str | IO[bytes], title: str = "") -> None:
    """PNG with two panels against the tilt angle (deg): residuals per tilt (A) and shift_x / shift_y (A)."""
    angles = np.asarray(result.tilt_angles_deg)
    order = np.argsort(angles)
    fig, (top, bottom) = subplots(2, 1, figsize=(6.5, 6), sharex=True)
    top.plot(angles[order], result.residuals[order], "o-", ms=3, label=result.method)
    if result.model_residuals_a is not None:
        top.plot(angles[order], np.asarray(result.model_residuals_a)[order], "s-", ms=3, label="patches vs final geometry")
        top.legend()
    top.set_ylabel("residual (A)")
    top.set_title(
        f"{title}\n{result.method}: axis {result.tilt_axis_angle_deg:.2f} deg, tilt offset {result.tilt_offset_deg:.2f} deg".strip()
    )
    if not np.any(np.isfinite(result.residuals)):
        top.text(0.5, 0.5, "no refinement: no residuals", ha="center", va="center", transform=top.transAxes)
    bottom.plot(angles[order], result.shifts_a[order, 0], "o-", ms=3, label="shift_x")
    bottom.plot(angles[order], result.shifts_a[order, 1], "s-", ms=3, label="shift_y")
    bottom.set_xlabel("tilt angle (deg)")
    bottom.set_ylabel("shift (A)")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(target, format="png", dpi=100)
