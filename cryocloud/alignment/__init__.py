"""Tilt-series alignment (shifts, tilt-axis angle, tilt offset) and its application to the images.

`align_tilt_series(ts) -> AlignmentResult`; `result.apply_to(ts)` records the alignment in the
tilt series (per-tilt shift_x / shift_y, tilt_axis_angle); `apply_alignment(ts)` resamples the
images into the aligned frame lazily (`cryocloud.resample`, core: reconstruction applies it too). Conventions: `cryocloud.geometry`.
"""

from cryocloud.alignment.align import REFINE_METHODS, align_tilt_series, default_binning
from cryocloud.alignment.axis import remove_raw_gauge
from cryocloud.alignment.result import AlignmentResult
from cryocloud.resample import apply_alignment

__all__ = ["REFINE_METHODS", "AlignmentResult", "align_tilt_series", "apply_alignment", "default_binning", "remove_raw_gauge"]
