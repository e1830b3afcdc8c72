"""Geometry conventions, one place for all stages.

- Positions are (x, y, z) in Angstrom; arrays are indexed (z, y, x); voxel (0, 0, 0) sits at
  physical (0, 0, 0). Projection formulas work relative to the volume / image centre, at index
  n // 2 along an axis of n samples (the FFT centre), so the centre voxel projects onto the
  centre pixel.
- After alignment the tilt axis is the image y axis. Tilting by t (degrees) rotates the specimen
  about +y: x_rot = x cos t + z sin t, z_rot = -x sin t + z cos t. The projection at tilt t of a
  point lands at x' = x_rot, y' = y.
- +z points towards the electron source. Local defocus (A, underfocus positive) of a point is
  df0 - z_rot: at positive tilt the right side of the image (larger x') is more underfocused
  (IMOD / Dynamo / novaCTF convention), df(x') = df0 + x' tan t on the specimen mid-plane.
- Raw images: the tilt axis is at `tilt_axis_angle` degrees counter-clockwise from the image y
  axis (SerialEM's TiltAxisAngle). A point of the aligned projection at (x', y') (relative to the
  centre) appears in the raw image at R(axis) (x', y') + (shift_x, shift_y), R the 2D
  counter-clockwise rotation. IMOD .xf maps raw to aligned: aligned = A raw + d.
- Rotation matrices act on column vectors (x, y, z) and rotate the reference (template) into the
  particle's orientation in the tomogram. Euler angles exist only at format edges.
"""

from __future__ import annotations

import numpy as np


def centre_index(n: int) -> int:
    """Index of the rotation / projection centre along an axis of `n` samples (the FFT centre)."""
    return n // 2


def tilt_rotation(tilt_deg: float) -> np.ndarray:
    """3x3 rotation about +y by `tilt_deg`, acting on (x, y, z) column vectors."""
    t = np.deg2rad(tilt_deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def project_points(xyz_a: np.ndarray, tilt_deg: float) -> np.ndarray:
    """Aligned-image positions (x', y') in A of points (N, 3) given relative to the volume centre."""
    rotated = np.asarray(xyz_a, dtype=np.float64) @ tilt_rotation(tilt_deg).T
    return rotated[:, :2]


def point_defocus(xyz_a: np.ndarray, tilt_deg: float, defocus_a: float) -> np.ndarray:
    """Local defocus (A) of points (N, 3, relative to the volume centre) at tilt `tilt_deg`.

    `defocus_a` is the defocus at the tilt axis on the specimen mid-plane.
    """
    rotated = np.asarray(xyz_a, dtype=np.float64) @ tilt_rotation(tilt_deg).T
    return defocus_a - rotated[:, 2]


def image_defocus_gradient(x_prime_a: np.ndarray, tilt_deg: float, defocus_a: float) -> np.ndarray:
    """Defocus (A) across an aligned tilt image of the specimen mid-plane, x' relative to the axis."""
    return defocus_a + np.asarray(x_prime_a) * np.tan(np.deg2rad(tilt_deg))


def rotation_2d(angle_deg: float) -> np.ndarray:
    """2x2 counter-clockwise rotation acting on (x, y) column vectors."""
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s], [s, c]])


def aligned_to_raw(xy_a: np.ndarray, tilt_axis_angle_deg: float, shift_xy_a: np.ndarray) -> np.ndarray:
    """Raw-image positions (N, 2, relative to the centre) of aligned-projection positions."""
    return np.asarray(xy_a) @ rotation_2d(tilt_axis_angle_deg).T + np.asarray(shift_xy_a)


def raw_to_aligned(xy_a: np.ndarray, tilt_axis_angle_deg: float, shift_xy_a: np.ndarray) -> np.ndarray:
    """Inverse of `aligned_to_raw`."""
    return (np.asarray(xy_a) - np.asarray(shift_xy_a)) @ rotation_2d(tilt_axis_angle_deg)


def xf_from_alignment(tilt_axis_angle_deg: float, shift_xy_px: np.ndarray) -> np.ndarray:
    """IMOD .xf row (a11 a12 a21 a22 dx dy) in pixels that maps raw to aligned coordinates."""
    a = rotation_2d(-tilt_axis_angle_deg)
    d = -a @ np.asarray(shift_xy_px, dtype=np.float64)
    return np.array([a[0, 0], a[0, 1], a[1, 0], a[1, 1], d[0], d[1]])


def alignment_from_xf(xf_row: np.ndarray) -> tuple[float, np.ndarray]:
    """Inverse of `xf_from_alignment`: (tilt_axis_angle_deg, shift_xy_px) from one .xf row.

    Assumes a pure rotation (no magnification or skew); the rotation part is orthonormalised.
    """
    a11, a12, a21, a22, dx, dy = (float(v) for v in xf_row)
    angle = -np.rad2deg(np.arctan2(a21 - a12, a11 + a22))
    a = rotation_2d(-angle)
    shift = -np.linalg.solve(a, np.array([dx, dy]))
    return float(angle), shift


def relion_euler_to_matrix(rot_deg, tilt_deg, psi_deg) -> np.ndarray:
    """Rotation matrices (..., 3, 3) from RELION ZYZ Euler angles (degrees).

    This is RELION's own matrix A (Euler_angles2matrix): image / particle coordinates = A @
    reference coordinates (RELION's projector samples the reference at A^T k), i.e. the rotation of
    the reference into the particle, which is our convention for `Particles.rotations`. It equals
    scipy's Rotation.from_euler("ZYZ", (rot, tilt, psi)).inv(). Checked on real data: averaging the
    EMPIAR-10499 particles with A agrees with RELION's map, with A^T it looks like random
    orientations (tests/test_average_subtilt.py).
    """
    a = np.deg2rad(np.asarray(rot_deg, dtype=np.float64))
    b = np.deg2rad(np.asarray(tilt_deg, dtype=np.float64))
    g = np.deg2rad(np.asarray(psi_deg, dtype=np.float64))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    relion = np.stack(
        [
            np.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], axis=-1),
            np.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], axis=-1),
            np.stack([sc, ss, cb], axis=-1),
        ],
        axis=-2,
    )
    return relion


def matrix_to_relion_euler(matrix: np.ndarray) -> np.ndarray:
    """RELION ZYZ Euler angles (..., 3) = (rot, tilt, psi) in degrees of rotation matrices."""
    a = np.asarray(matrix, dtype=np.float64)  # RELION's A (see relion_euler_to_matrix)
    tilt = np.arctan2(np.hypot(a[..., 2, 0], a[..., 2, 1]), a[..., 2, 2])
    gimbal = np.hypot(a[..., 2, 0], a[..., 2, 1]) < 1e-9
    rot = np.where(gimbal, 0.0, np.arctan2(a[..., 2, 1], a[..., 2, 0]))
    psi = np.where(
        gimbal,
        np.arctan2(-a[..., 1, 0], a[..., 0, 0]) * np.sign(a[..., 2, 2]),
        np.arctan2(a[..., 1, 2], -a[..., 0, 2]),
    )
    return np.rad2deg(np.stack([rot, tilt, psi], axis=-1))


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` rotation matrices drawn uniformly from SO(3) (unit quaternions, Shoemake)."""
    u1, u2, u3 = rng.random((3, n))
    q = np.stack(
        [
            np.sqrt(1 - u1) * np.sin(2 * np.pi * u2),
            np.sqrt(1 - u1) * np.cos(2 * np.pi * u2),
            np.sqrt(u1) * np.sin(2 * np.pi * u3),
            np.sqrt(u1) * np.cos(2 * np.pi * u3),
        ],
        axis=-1,
    )
    return quaternion_to_matrix(q)


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) from unit quaternions (..., 4) ordered (x, y, z, w)."""
    x, y, z, w = np.moveaxis(np.asarray(q, dtype=np.float64), -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], axis=-1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], axis=-1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=-1),
        ],
        axis=-2,
    )


def rotation_angle_deg(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """Angle (degrees) of the rotation between orientations r1 and r2 (..., 3, 3)."""
    rel = np.einsum("...ji,...jk->...ik", r1, r2)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0)))
