"""Closed-surface completion of vesicles across the missing wedge (an explicit, opt-in model).

With a single-axis tilt series (tilt axis y, tilts in [lo, hi]) a membrane patch whose normal n
has t* = atan(nz / nx) outside [lo, hi] leaves no trace in the tomogram: a spherical vesicle
shows as a barrel open at its top and bottom caps. When a segmented membrane is, on the evidence
outside the wedge, a sphere, its caps can be drawn along the fitted sphere:

1. per membrane label, the mid-surface voxels (at most `MAX_POINTS_PER_BLOCK` per label and Dask
   block, evenly strided) are gathered (one pass over the surfaces, computed);
2. a sphere is fitted (algebraic least squares |p|^2 = 2 c . p + k, then r = sqrt(k + |c|^2));
3. it is accepted only when (a) its centre lies inside the volume, (b) the RMS distance of the
   points from the sphere is at most `max_rms_vox` (the ridge jitters by under a voxel on a true
   vesicle), and (c) the points cover at least `min_coverage` of the sphere's measured
   directions: of `DIRECTION_BINS` near-uniform directions u, those outside the wedge (widened by
   `edge_margin_deg`) whose sphere point c + r u lies inside the volume, the fraction holding a
   point within 2 voxels of the sphere. An open sheet or a shallow cup fits some large sphere
   whose centre lies far off the membrane, outside the field of view, or that it covers only in
   part, so it is never completed; neither is a membrane that is not round. A label that misfits
   one sphere is tried as two (two touching vesicles merged into one label: points split across
   the principal axis, then each to the sphere it lies closer to), each sphere judged alone;
4. the accepted spheres are drawn lazily (per block, `map_blocks`): voxels within half the output
   thickness of the sphere, inside the volume, whose sphere normal lies in the wedge or within
   `edge_margin_deg` of its edge (where the data are too weak), and not already labelled, take
   the membrane's label. Nothing else changes.

The ice surfaces are not known here: a vesicle cut by the ice would be closed beyond it. The
completion is therefore an option (`MembraneSettings.complete_vesicles`), reported separately.
Coordinates are voxels (z, y, x) unless named _a (Angstrom).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import dask
import dask.array as da
import numpy as np

from cryocloud.progress import compute
from cryocloud.segment.evaluate import wedge_normals

MAX_POINTS_PER_BLOCK = 4000
DIRECTION_BINS = 400
NEAR_SURFACE_VOX = 2.0
MAX_RMS_VOX = 1.5
MIN_COVERAGE = 0.7
EDGE_MARGIN_DEG = 10.0


@dataclass(frozen=True)
class SphereFit:
    """A membrane label's fitted sphere (voxels, z, y, x), its RMS misfit, coverage and verdict."""

    label: int
    centre: tuple[float, float, float]
    radius: float
    rms: float
    coverage: float
    points: int
    completed: bool

    def as_dict(self, pixel_size_a: float) -> dict:
        """JSON-ready, lengths in Angstrom."""
        d = asdict(self)
        d["centre_zyx_a"] = [c * pixel_size_a for c in d.pop("centre")]
        d["radius_a"] = d.pop("radius") * pixel_size_a
        d["rms_a"] = d.pop("rms") * pixel_size_a
        return d


def fibonacci_directions(n: int = DIRECTION_BINS) -> np.ndarray:
    """(n, 3) near-uniform unit vectors (z, y, x) on the sphere."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = np.pi * (1.0 + 5**0.5) * i
    rho = np.sqrt(1.0 - z * z)
    return np.stack([z, rho * np.sin(phi), rho * np.cos(phi)], axis=1)


def fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(centre (3,), radius, RMS distance from the sphere) of points (N, 3), algebraic least squares."""
    a = np.column_stack([2.0 * points, np.ones(len(points))])
    sol, *_ = np.linalg.lstsq(a, np.sum(points**2, axis=1), rcond=None)
    centre = sol[:3]
    radius = float(np.sqrt(max(sol[3] + centre @ centre, 0.0)))
    rms = float(np.sqrt(np.mean((np.linalg.norm(points - centre, axis=1) - radius) ** 2)))
    return centre, radius, rms


def _in_edge_wedge(normal: np.ndarray, tilt_range_deg: tuple[float, float], margin_deg: float) -> np.ndarray:
    """True where a normal (3, ...) lies in the missing wedge widened by `margin_deg` on each side."""
    lo, hi = tilt_range_deg
    return wedge_normals(normal, (lo + margin_deg, hi - margin_deg))


def coverage(points: np.ndarray, centre: np.ndarray, radius: float, shape: tuple[int, ...],
             tilt_range_deg: tuple[float, float], margin_deg: float) -> float:
    """Fraction of the sphere's measured, in-volume direction bins that hold a point near the sphere (step 3b)."""
    dirs = fibonacci_directions()
    surface = centre + radius * dirs
    inside = np.all((surface >= 0) & (surface <= np.asarray(shape) - 1), axis=1)
    measured = inside & ~_in_edge_wedge(dirs.T, tilt_range_deg, margin_deg)
    if not measured.any():
        return 0.0
    offset = points - centre
    dist = np.linalg.norm(offset, axis=1)
    near = np.abs(dist - radius) <= NEAR_SURFACE_VOX
    hit = np.zeros(len(dirs), bool)
    if near.any():
        hit[np.unique(np.argmax((offset[near] / dist[near, None]) @ dirs.T, axis=1))] = True
    return float((hit & measured).sum() / measured.sum())


def _block_points(block: np.ndarray, block_info=None) -> dict[int, np.ndarray]:
    """Mid-surface voxel coordinates (global, z, y, x) per label of one block, strided to at most MAX_POINTS_PER_BLOCK."""
    origin = np.array([r[0] for r in block_info[0]["array-location"]]) if block_info else np.zeros(3)
    out = {}
    idx = np.nonzero(block)
    if not idx[0].size:
        return out
    labels = block[idx]
    coords = np.stack(idx, axis=1) + origin
    for k in np.unique(labels):
        pts = coords[labels == k]
        out[int(k)] = pts[:: max(1, len(pts) // MAX_POINTS_PER_BLOCK)]
    return out


def gather_points(surfaces: da.Array, *, quiet: bool = False) -> dict[int, np.ndarray]:
    """Step 1: per label, (N, 3) mid-surface voxel coordinates (computed)."""
    blocks = surfaces.to_delayed().ravel()
    starts = [np.cumsum((0,) + c[:-1]) for c in surfaces.chunks]
    grid = np.array(list(np.ndindex(*surfaces.numblocks)))
    parts = []
    for b, idx in zip(blocks, grid):
        info = [{"array-location": [(int(starts[a][i]), None) for a, i in enumerate(idx)]}]
        parts.append(dask.delayed(_block_points)(b, block_info=info))
    merged: dict[int, list] = {}
    for part in compute(*parts, description="vesicle fits", quiet=quiet):
        for k, pts in part.items():
            merged.setdefault(k, []).append(pts)
    return {k: np.concatenate(v).astype(np.float64) for k, v in merged.items()}


def two_sphere_partition(points: np.ndarray, iterations: int = 20) -> list[np.ndarray]:
    """Points (N, 3) split between two spheres (two touching vesicles merged into one membrane label):
    halves across the principal axis, then each point goes to the sphere it lies closer to, refitted,
    until no point moves. [] when one side empties."""
    centred = points - points.mean(axis=0)
    side = centred @ np.linalg.svd(centred, full_matrices=False)[2][0] > 0
    for _ in range(iterations):
        if side.sum() < 10 or (~side).sum() < 10:
            return []
        fits = [fit_sphere(points[side == s]) for s in (False, True)]
        misfit = np.stack([np.abs(np.linalg.norm(points - c, axis=1) - r) for c, r, _ in fits])
        moved = misfit[1] < misfit[0]
        if np.array_equal(moved, side):
            break
        side = moved
    return [points[~side], points[side]]


def fit_vesicles(points: dict[int, np.ndarray], shape: tuple[int, ...], tilt_range_deg: tuple[float, float], *,
                 max_rms_vox: float = MAX_RMS_VOX, min_coverage: float = MIN_COVERAGE,
                 edge_margin_deg: float = EDGE_MARGIN_DEG) -> list[SphereFit]:
    """Steps 2-3 for every label; a label whose one sphere misfits is tried as two (touching vesicles),
    each judged by the same tests on its own points."""
    def judge(k: int, pts: np.ndarray) -> SphereFit:
        centre, radius, rms = fit_sphere(pts)
        cov = coverage(pts, centre, radius, shape, tilt_range_deg, edge_margin_deg)
        inside = bool(np.all((centre >= 0) & (centre <= np.asarray(shape) - 1)))
        ok = bool(inside and rms <= max_rms_vox and cov >= min_coverage)
        return SphereFit(k, tuple(float(c) for c in centre), radius, rms, cov, len(pts), ok)

    fits = []
    for k in sorted(points):
        if len(points[k]) < 10:
            continue
        one = judge(k, points[k])
        two = [judge(k, part) for part in two_sphere_partition(points[k])] if one.rms > max_rms_vox else []
        fits.extend(two if any(f.completed for f in two) else [one])
    return fits


def _draw_caps(block: np.ndarray, spheres: np.ndarray, half_vox: float, tilt_range_deg: tuple[float, float],
               margin_deg: float, block_info=None) -> np.ndarray:
    """Step 4 on one block of thickened labels; spheres (S, 5): label, centre z, y, x, radius."""
    origin = np.array([r[0] for r in block_info[0]["array-location"]])
    out = block.copy()
    for label, cz, cy, cx, r in spheres:
        lo = np.maximum(np.floor(np.array([cz, cy, cx]) - r - half_vox).astype(int) - origin, 0)
        hi = np.minimum(np.ceil(np.array([cz, cy, cx]) + r + half_vox).astype(int) + 1 - origin, block.shape)
        if np.any(hi <= lo):
            continue
        z, y, x = np.meshgrid(*[np.arange(a, b) + o for a, b, o in zip(lo, hi, origin)], indexing="ij", sparse=True)
        dz, dy, dx = z - cz, y - cy, x - cx
        dist = np.sqrt(dz * dz + dy * dy + dx * dx)
        shell = np.abs(dist - r) <= half_vox
        normal = np.stack(np.broadcast_arrays(dz, dy, dx)) / np.maximum(dist, 1e-9)
        cap = shell & _in_edge_wedge(normal, tilt_range_deg, margin_deg)
        view = out[tuple(slice(a, b) for a, b in zip(lo, hi))]
        view[cap & (view == 0)] = np.uint32(label)
    return out


def draw_caps(labels: da.Array, fits: list[SphereFit], half_vox: float, tilt_range_deg: tuple[float, float],
              margin_deg: float = EDGE_MARGIN_DEG) -> da.Array:
    """Step 4: lazy labels with the accepted spheres' caps drawn in."""
    spheres = np.array([[f.label, *f.centre, f.radius] for f in fits if f.completed]).reshape(-1, 5)
    if not len(spheres):
        return labels
    return labels.map_blocks(_draw_caps, spheres=spheres, half_vox=half_vox, tilt_range_deg=tilt_range_deg,
                             margin_deg=margin_deg, dtype=labels.dtype)
