"""A tilt series from physics, written without cryocloud's projector or simulator (scikit-image, scipy.ndimage).

Specimen: a volume (z, y, x) of random Gaussian blobs and straight filaments in a slab wider than the
field of view (`SLAB_WIDTH_FACTOR` x the field along x), so that features enter and leave the field as
the stage tilts, as in a lamella or a thin ice layer.

Projection: `skimage.transform.radon` of every XZ slice (one per y row). Its angle convention is pinned
to cryocloud's (DESIGN.md: a point at (x, z) relative to the volume centre lands at x' = x cos t + z sin t)
by `TILT_SIGN`, checked with a single off-centre point by `point_projection` (tests/test_align_independent.py).

Raw images: the aligned projection (tilt axis along y) is rotated by the tilt-axis angle (counter-clockwise
from image y in cryocloud's (x, y) frame; `scipy.ndimage.rotate` by -axis, see `to_raw`) about the centre
index n // 2 of an odd-sized image, shifted by the per-tilt raw-frame shift s with `scipy.ndimage.shift`, cropped to the field, turned
into an exposure exp(-CONTRAST * projection) and counted with Poisson noise at a dose in e/A^2 per tilt.
So raw(q) = P(R(-axis) (q - s)): the geometry of `cryocloud.geometry.aligned_to_raw`.

The projections do not depend on the axis angle or the shifts; `projections` caches them per specimen.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage
from skimage.transform import radon

ANGLES_DEG = np.arange(-60.0, 61.0, 3.0)  # 41 tilts
FIELD_PX = 145  # odd: scipy.ndimage.rotate turns about (n - 1) / 2, cryocloud about n // 2; the same when n is odd
THICKNESS_PX = 36  # a quarter of the field: a 150-250 nm lamella in a 600-1000 nm field
SLAB_WIDTH_FACTOR = 2.0  # the slab is this many fields wide along x
PIXEL_A = 8.0
DOSE_E_PER_A2 = 3.0  # per tilt: 192 electrons per pixel of 8 A, Poisson noise 7 % against a 4.5 % contrast
CONTRAST = 0.25  # attenuation per unit of projected density: 13 % on average, 4.5 % standard deviation at 0 deg
TILT_SIGN = -1.0  # skimage's radon(theta) turns the slice the other way round: cryocloud's tilt t is theta = -t


@dataclass(frozen=True)
class IndependentSeries:
    """Raw images (T, y, x) in counts, tilt angles (T,) deg, true tilt-axis angle (deg), true raw-frame
    shifts (T, 2) as (x, y) px, pixel size (A)."""

    images: np.ndarray
    angles_deg: np.ndarray
    axis_deg: float
    shifts_xy_px: np.ndarray
    pixel_a: float


def _add_segment(vol: np.ndarray, start: np.ndarray, end: np.ndarray, value: float) -> None:
    """Add `value` along the segment start -> end (z, y, x voxels), one sample per voxel step."""
    n = int(np.ceil(np.abs(end - start).max())) + 1
    pts = np.round(start[None, :] + np.linspace(0.0, 1.0, n)[:, None] * (end - start)[None, :]).astype(int)
    inside = np.all((pts >= 0) & (pts < np.array(vol.shape)), axis=1)
    np.add.at(vol, tuple(pts[inside].T), value)


@lru_cache(maxsize=4)
def specimen(seed: int, field: int = FIELD_PX, thickness: int = THICKNESS_PX, width_factor: float = SLAB_WIDTH_FACTOR) -> np.ndarray:
    """Volume (z, y, x) float32: blobs and filaments filling a slab `thickness` px thick, `width_factor` fields
    wide along x and wide enough along y to fill the field at any axis angle and shift; odd sides, centre n // 2."""
    rng = np.random.default_rng(seed)
    nx = 2 * int(width_factor * field / 2) + 1
    ny = 2 * int(0.8 * field) + 1  # its inscribed circle holds the field's corners (0.71 field) shifted by up to 0.09 field
    nz = thickness + 8
    vol = np.zeros((nz, ny, nx), np.float32)
    n_blobs = int(0.012 * thickness * ny * nx)
    idx = (rng.integers(4, 4 + thickness, n_blobs), rng.integers(0, ny, n_blobs), rng.integers(0, nx, n_blobs))
    np.add.at(vol, idx, rng.uniform(0.5, 1.5, n_blobs).astype(np.float32))
    for _ in range(int(0.002 * ny * nx)):
        start = np.array([rng.uniform(4, 4 + thickness), rng.uniform(0, ny), rng.uniform(0, nx)])
        direction = rng.normal(size=3) * np.array([0.2, 1.0, 1.0])
        end = start + rng.uniform(20, 60) * direction / np.linalg.norm(direction)
        end[0] = np.clip(end[0], 4, 3 + thickness)
        _add_segment(vol, start, end, 0.6)
    return ndimage.gaussian_filter(vol, 1.2)


def point_projection(x: float, z: float, angle_deg: float, size: int = 65) -> float:
    """Detector position x' (px from the centre) at which `radon` (with TILT_SIGN) puts a point at (x, z) px from
    the centre of a (size, size) XZ slice: the check of the tilt convention (expected x cos t + z sin t)."""
    slice_zx = np.zeros((size, size))
    slice_zx[size // 2 + int(z), size // 2 + int(x)] = 1.0
    profile = radon(ndimage.gaussian_filter(slice_zx, 1.0), theta=[TILT_SIGN * angle_deg], circle=False)[:, 0]
    k = int(np.argmax(profile))
    return k + 0.5 * (profile[k - 1] - profile[k + 1]) / (profile[k - 1] - 2 * profile[k] + profile[k + 1]) - len(profile) // 2


@lru_cache(maxsize=4)
def projections(seed: int, thickness: int = THICKNESS_PX) -> np.ndarray:
    """Aligned projections (T, y, x') at ANGLES_DEG of `specimen(seed, thickness=thickness)`, the tilt axis along y;
    x' cropped to the volume's y extent (square images), centre index n // 2 on the volume centre."""
    vol = specimen(seed, thickness=thickness)
    ny = vol.shape[1]
    theta = TILT_SIGN * ANGLES_DEG
    rows = [radon(vol[:, y, :], theta=theta, circle=False) for y in range(ny)]  # each (detector, T)
    sino = np.stack(rows, axis=1)  # (detector, y, T)
    centre = sino.shape[0] // 2
    cropped = sino[centre - ny // 2 : centre + ny // 2 + 1]
    return np.ascontiguousarray(np.moveaxis(cropped, 2, 0).transpose(0, 2, 1)).astype(np.float32)  # (T, y, x')


def to_raw(projection: np.ndarray, axis_deg: float, shift_xy: np.ndarray, field: int = FIELD_PX) -> np.ndarray:
    """raw(q) = projection(R(-axis) (q - s)) about the centre index, cropped to (field, field); cubic splines.

    scipy.ndimage.rotate turns the array counter-clockwise as displayed with row 0 at the top, which is
    clockwise in the (x, y) = (column, row) frame of `cryocloud.geometry.rotation_2d`: hence -axis."""
    turned = ndimage.rotate(projection, -axis_deg, reshape=False, order=3, mode="constant")
    moved = ndimage.shift(turned, (shift_xy[1], shift_xy[0]), order=3, mode="constant")
    c, h = projection.shape[0] // 2, field // 2
    return moved[c - h : c + h + 1, c - h : c + h + 1]


def tilt_series(
    seed: int, axis_deg: float, *, thickness: int = THICKNESS_PX, shift_sigma_px: float = 5.0, dose_e_per_a2: float = DOSE_E_PER_A2
) -> IndependentSeries:
    """The raw, noisy series of `specimen(seed, thickness=thickness)` (px) at tilt-axis angle `axis_deg` with random
    shifts (sigma px) and Poisson noise at `dose_e_per_a2` per tilt."""
    rng = np.random.default_rng(seed + 1000)
    proj = projections(seed, thickness)
    shifts = rng.normal(0.0, shift_sigma_px, (len(ANGLES_DEG), 2))
    ideal = np.stack([to_raw(p, axis_deg, s) for p, s in zip(proj, shifts)])
    counts_per_px = dose_e_per_a2 * PIXEL_A**2
    images = rng.poisson(counts_per_px * np.exp(-CONTRAST * np.clip(ideal, 0.0, None))).astype(np.float32)
    return IndependentSeries(images, ANGLES_DEG.copy(), float(axis_deg), shifts, PIXEL_A)
