"""Single-axis projection model fitted to tracked points: tilt-axis angle, shifts, 3-D points, tilt offset.

Model (see `cryocloud.geometry`): a point (x, y, z) px relative to the volume centre appears in
raw image t at R(axis) (x cos t + z sin t, y) + s_t. Rotating the observations back by the axis
angle gives q = R(-axis) raw = (x cos t + z sin t, y) + d_t, with d_t = R(-axis) s_t: for a fixed
axis angle the model is linear in the unknowns (points and shifts). Its residual sum of squares
is a quadratic form in (cos axis, sin axis), so the best axis angle is the eigenvector of the
smallest eigenvalue of a 2 x 2 matrix: exact, no search (as in IMOD tiltalign, the angle is only
defined modulo 180 deg; the branch nearest the guess is kept).

Gauge: moving the volume by (a, b, c) px changes nothing in the images but the shifts
d_t -> d_t + (a cos t + b sin t, c). `remove_gauge` fixes it by making the x shifts orthogonal to
cos t and sin t and the y shifts zero-mean: the alignment that moves the images least.

Tilt offset: a specimen plane tilted by o about the tilt axis is, to the data, the same as tilt
angles off by o. With the true angles t + o a flat specimen lies at z = const; with the nominal
angles its fitted points lie on the plane z = -tan(o) x + ..., which gives o.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryocloud.errors import ModelError
from cryocloud.geometry import rotation_2d


@dataclass(frozen=True)
class ProjectionModelFit:
    """Fit of the projection model. Units: px of the images fitted, degrees."""

    axis_deg: float
    shifts: np.ndarray  # (T, 2) aligned-frame shifts d (x, y), gauge removed
    points: np.ndarray  # (P, 3) x, y, z of the tracked points (gauge: any common offset); NaN if unused
    residuals: np.ndarray  # (T, P) length of the residual vector; NaN where a point was not seen
    axis_sigma_deg: float = float("nan")  # least-squares standard error of the axis angle; NaN when not fitted

    def residual_per_tilt(self) -> np.ndarray:
        """RMS residual (T,) px over the points seen in each tilt; NaN for a tilt with none."""
        r2 = np.where(np.isfinite(self.residuals), self.residuals**2, 0.0)
        n = np.isfinite(self.residuals).sum(axis=1)
        return np.where(n > 0, np.sqrt(r2.sum(axis=1) / np.maximum(n, 1)), np.nan)


def gauge_translation(shifts: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """The volume translation (a, c, b) = (x, y, z) whose shift pattern (a cos t + b sin t, c) best
    explains aligned-frame shifts (T, 2); same units as the shifts."""
    s = np.asarray(shifts, dtype=np.float64)
    t = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    basis = np.stack([np.cos(t), np.sin(t)], axis=1)
    a, b = np.linalg.lstsq(basis, s[:, 0], rcond=None)[0]
    return np.array([a, s[:, 1].mean(), b])


def remove_gauge(shifts: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """Aligned-frame shifts (T, 2) with the volume-translation gauge removed (see module docstring)."""
    out = np.array(shifts, dtype=np.float64)
    t = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    a, c, b = gauge_translation(out, angles_deg)
    out[:, 0] -= a * np.cos(t) + b * np.sin(t)
    out[:, 1] -= c
    return out


def remove_raw_gauge(shifts_xy: np.ndarray, angles_deg: np.ndarray, axis_deg: float) -> np.ndarray:
    """`remove_gauge` for raw-frame shifts s (T, 2): works in the aligned frame, returns raw-frame shifts."""
    r = rotation_2d(axis_deg)
    return remove_gauge(np.asarray(shifts_xy) @ r, angles_deg) @ r.T


def _designs(t_idx: np.ndarray, p_idx: np.ndarray, angles_rad: np.ndarray, n_t: int, n_p: int):
    """Design matrices of the x equations [x_p, z_p, dx_t] and y equations [y_p, dy_t]."""
    rows = np.arange(t_idx.size)
    ax = np.zeros((t_idx.size, 2 * n_p + n_t))
    ax[rows, p_idx] = np.cos(angles_rad[t_idx])
    ax[rows, n_p + p_idx] = np.sin(angles_rad[t_idx])
    ax[rows, 2 * n_p + t_idx] = 1.0
    ay = np.zeros((t_idx.size, n_p + n_t))
    ay[rows, p_idx] = 1.0
    ay[rows, n_p + t_idx] = 1.0
    return ax, ay


def _solve(obs: np.ndarray, mask: np.ndarray, angles_deg: np.ndarray, axis_guess: float, estimate_axis: bool):
    n_t, n_p, _ = obs.shape
    t_idx, p_idx = np.nonzero(mask)
    u, v = obs[t_idx, p_idx, 0], obs[t_idx, p_idx, 1]
    ax, ay = _designs(t_idx, p_idx, np.deg2rad(angles_deg), n_t, n_p)
    rhs = np.stack([u, v], axis=1)
    sol_x = np.linalg.lstsq(ax, rhs, rcond=None)[0]
    sol_y = np.linalg.lstsq(ay, rhs, rcond=None)[0]
    if estimate_axis:
        px = rhs - ax @ sol_x  # residual projector of the x equations applied to u, v
        py = rhs - ay @ sol_y
        # RSS(c, s) = |Px (c u + s v)|^2 + |Py (-s u + c v)|^2 = [c s] M [c s]^T
        m = np.array(
            [
                [px[:, 0] @ px[:, 0] + py[:, 1] @ py[:, 1], px[:, 0] @ px[:, 1] - py[:, 0] @ py[:, 1]],
                [0.0, px[:, 1] @ px[:, 1] + py[:, 0] @ py[:, 0]],
            ]
        )
        m[1, 0] = m[0, 1]
        (lam_min, lam_max), vectors = np.linalg.eigh(m)
        c, s = vectors[:, 0]
        axis = float(np.rad2deg(np.arctan2(s, c)))
        axis += 180.0 * np.round((axis_guess - axis) / 180.0)
        # RSS(axis) = lam_min + (lam_max - lam_min) sin^2(axis - best): curvature 2 (lam_max - lam_min)
        dof = max(2 * t_idx.size - ax.shape[1] - ay.shape[1] - 1, 1)
        sigma = np.sqrt(lam_min / dof / (lam_max - lam_min)) if lam_max > lam_min else np.inf
        sigma_deg = float(np.rad2deg(sigma))
    else:
        axis = float(axis_guess)
        sigma_deg = float("nan")
    a = np.deg2rad(axis)
    q_x = np.cos(a) * u + np.sin(a) * v
    q_y = -np.sin(a) * u + np.cos(a) * v
    x_unknowns = sol_x @ np.array([np.cos(a), np.sin(a)])
    y_unknowns = sol_y @ np.array([-np.sin(a), np.cos(a)])
    res = np.full((n_t, n_p), np.nan)
    res[t_idx, p_idx] = np.hypot(q_x - ax @ x_unknowns, q_y - ay @ y_unknowns)
    shifts = np.stack([x_unknowns[2 * n_p :], y_unknowns[n_p:]], axis=1)
    points = np.stack([x_unknowns[:n_p], y_unknowns[:n_p], x_unknowns[n_p : 2 * n_p]], axis=1)
    points[~mask.any(axis=0)] = np.nan
    return axis, shifts, points, res, sigma_deg


def fit_projection_model(
    obs: np.ndarray, angles_deg: np.ndarray, axis_guess_deg: float, *, estimate_axis: bool = True, min_views: int = 4
) -> ProjectionModelFit:
    """Fit the projection model to raw-image positions `obs` (T, P, 2) px (NaN = not seen).

    Points seen in fewer than `min_views` tilts are left out. One round of outlier rejection drops
    observations whose residual exceeds max(3 x RMS, 1 px) and refits.
    """
    angles = np.asarray(angles_deg, dtype=np.float64)
    mask = np.all(np.isfinite(obs), axis=2)
    mask &= mask.sum(axis=0, keepdims=True) >= min_views
    if mask.sum() < 3 * mask.shape[1] + 2 * mask.shape[0]:
        raise ModelError("tilt_series", f"too few tracked patch positions ({int(mask.sum())}) to fit the tilt geometry")
    axis, shifts, points, res, sigma = _solve(obs, mask, angles, axis_guess_deg, estimate_axis)
    rms = np.sqrt(np.nanmean(res**2))
    keep = mask & ~(res > max(3.0 * rms, 1.0))
    keep &= keep.sum(axis=0, keepdims=True) >= min_views
    if keep.sum() < mask.sum():
        axis, shifts, points, res, sigma = _solve(obs, keep, angles, axis_guess_deg, estimate_axis)
    return ProjectionModelFit(axis, remove_gauge(shifts, angles), points, res, sigma)


def geometry_residuals(obs: np.ndarray, angles_deg: np.ndarray, axis_deg: float, shifts: np.ndarray, *, min_views: int = 4) -> np.ndarray:
    """RMS residual per tilt (T,) px of tracked raw positions `obs` (T, P, 2) against a given geometry.

    The axis angle and the aligned-frame shifts d (T, 2) are held; only each point's (x, y, z) is fitted
    (points seen in fewer than `min_views` tilts are left out). NaN for a tilt with no point.
    """
    t = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    q = np.asarray(obs, dtype=np.float64) @ rotation_2d(axis_deg) - np.asarray(shifts)[:, None, :]  # R(-axis) raw - d
    seen = np.all(np.isfinite(q), axis=2)
    res = np.full(seen.shape, np.nan)
    for p in np.flatnonzero(seen.sum(axis=0) >= min_views):
        m = seen[:, p]
        design = np.stack([np.cos(t[m]), np.sin(t[m])], axis=1)
        xz = np.linalg.lstsq(design, q[m, p, 0], rcond=None)[0]
        res[m, p] = np.hypot(q[m, p, 0] - design @ xz, q[m, p, 1] - q[m, p, 1].mean())
    n = np.isfinite(res).sum(axis=1)
    return np.where(n > 0, np.sqrt(np.nansum(res**2, axis=1) / np.maximum(n, 1)), np.nan)


def tilt_offset_from_points(points: np.ndarray) -> float:
    """Tilt-angle offset o (deg, true = nominal + o) from the slope of the plane fitted to points (P, 3)."""
    pts = np.asarray(points, dtype=np.float64)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    design = np.stack([pts[:, 0], pts[:, 1], np.ones(len(pts))], axis=1)
    slope = np.linalg.lstsq(design, pts[:, 2], rcond=None)[0][0]
    return float(-np.rad2deg(np.arctan(slope)))
