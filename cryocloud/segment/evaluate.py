"""Scoring a membrane segmentation against ground truth (simulations: labels.zarr, 2 = membrane).

Two Dice scores, both on masks at the bilayer thickness (the truth marks voxels within 25 A of
the simulated mid-surface; `segment_membranes` outputs its mid-surfaces thickened to 50 A):

- `dice`: over the whole volume;
- `dice_resolvable`: over the region where the tomogram holds the membrane at all. A plate's
  signal lies along its normal in Fourier space; with a single-axis tilt series (tilt axis y) the
  normal n = (nz, ny, nx) is measured only when a tilt t of the range has n . d_t = 0 (d_t the
  beam direction), i.e. t* = atan(nz / nx) lies in [min tilt, max tilt]. Membrane patches whose
  normal lies in the missing wedge (the caps of vesicles, sheets parallel to the ice) leave no
  trace in any reconstruction. The region excludes, from BOTH masks alike, the voxels within
  `margin_a` of truth voxels with such normals; everything else, including any false positive
  away from those caps, counts. `excluded_truth_fraction` says how much of the truth that removes
  (about a third of a sphere's area for +-60 degrees).
  `dice_wedge_limit` is the whole-volume Dice of a segmentation that found exactly the
  resolvable truth: data alone (no model of closed surfaces) cannot do much better.

Truth normals come from the truth mask itself (the plate tensor of `cryocloud.segment.hessian`
at `normal_scale_a`), so any truth volume works, not only spheres and planes. Masks are in-memory
evaluation-sized volumes (z, y, x); Dask or xarray inputs are computed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from cryocloud.errors import ModelError
from cryocloud.segment.hessian import derivatives, integrate, plate_tensor, plateness


def _mask(a: Any, name: str) -> np.ndarray:
    if hasattr(a, "compute"):  # Dask array or Dask-backed DataArray
        a = a.compute()
    m = np.asarray(getattr(a, "values", a))
    if m.ndim != 3:
        raise ModelError(name, f"expected a (z, y, x) mask, got shape {m.shape}")
    return m.astype(bool)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2 |A & B| / (|A| + |B|) of two boolean masks; 1.0 when both are empty."""
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & truth).sum()) / total


def wedge_normals(normal: np.ndarray, tilt_range_deg: tuple[float, float]) -> np.ndarray:
    """True where a plate normal (3, ...) in (z, y, x) order lies in the missing wedge of the tilt range."""
    nz, nx = normal[0], normal[2]
    t_star = (np.degrees(np.arctan2(nz, nx)) + 90.0) % 180.0 - 90.0  # the tilt whose section holds n, in [-90, 90)
    lo, hi = tilt_range_deg
    return (t_star < lo) | (t_star > hi)


def truth_normals(truth: np.ndarray, pixel_size_a: float, normal_scale_a: float = 20.0) -> np.ndarray:
    """Unit plate normals (3, z, y, x) of a truth mask, from its plate tensor at `normal_scale_a`."""
    s = max(1.0, normal_scale_a / pixel_size_a)
    tensor = integrate(plate_tensor(*derivatives(truth.astype(np.float32), s), "bright"), s)
    return plateness(tensor)[1]


def resolvable_region(
    truth: np.ndarray, pixel_size_a: float, tilt_range_deg: tuple[float, float], *, margin_a: float = 0.0, normal_scale_a: float = 20.0
) -> np.ndarray:
    """Boolean region (z, y, x): everywhere except within `margin_a` of truth voxels whose normal is in the missing wedge."""
    capped = truth & wedge_normals(truth_normals(truth, pixel_size_a, normal_scale_a), tilt_range_deg)
    r = int(np.ceil(margin_a / pixel_size_a))
    ball = np.sum(np.square(np.indices((2 * r + 1,) * 3) - r), axis=0) <= (margin_a / pixel_size_a) ** 2
    return ~ndimage.binary_dilation(capped, structure=ball)


def recall_by_normal_angle(
    prediction: Any, truth: Any, pixel_size_a: float, edges_deg: tuple[float, ...] = (0.0, 30.0, 45.0, 60.0, 90.0)
) -> dict[str, float | None]:
    """Recall of the truth voxels binned by the angle (degrees) between their membrane normal and z,
    "lo-hi" -> recall (None for an empty bin). Near 0: the missing wedge's caps; 30-60: oblique
    membranes the wedge elongates and weakens; near 90: membranes seen edge-on in every tilt."""
    pred, true = _mask(prediction, "prediction"), _mask(truth, "truth")
    angle = np.degrees(np.arccos(np.clip(np.abs(truth_normals(true, pixel_size_a)[0]), 0.0, 1.0)))
    out: dict[str, float | None] = {}
    for lo, hi in zip(edges_deg[:-1], edges_deg[1:]):
        sel = true & (angle >= lo) & (angle < hi)
        out[f"{lo:g}-{hi:g}"] = float(pred[sel].mean()) if sel.any() else None
    return out


def evaluate_membranes(
    prediction: Any, truth: Any, pixel_size_a: float, tilt_range_deg: tuple[float, float] = (-60.0, 60.0), *, margin_a: float = 0.0
) -> dict[str, float]:
    """Dice, precision and recall over the whole volume and in the resolvable region, the excluded truth
    fraction and the predicted fraction of the volume."""
    pred, true = _mask(prediction, "prediction"), _mask(truth, "truth")
    if pred.shape != true.shape:
        raise ModelError("prediction", f"shape {pred.shape} differs from the truth's {true.shape}")
    region = resolvable_region(true, pixel_size_a, tilt_range_deg, margin_a=margin_a)
    p, t = pred & region, true & region
    hits = int((p & t).sum())
    hits_all = int((pred & true).sum())
    return {
        "dice": dice(pred, true),
        "precision": hits_all / max(1, int(pred.sum())),
        "recall": hits_all / max(1, int(true.sum())),
        "dice_resolvable": dice(p, t),
        "precision_resolvable": hits / max(1, int(p.sum())),
        "recall_resolvable": hits / max(1, int(t.sum())),
        "excluded_truth_fraction": 1.0 - int(t.sum()) / max(1, int(true.sum())),
        # whole-volume Dice of a perfect segmentation of the resolvable truth alone, 2 (1 - e) / (2 - e):
        # what the data support without a model closing surfaces across the wedge
        "dice_wedge_limit": dice(t, true),
        "predicted_fraction": float(pred.mean()),
    }
