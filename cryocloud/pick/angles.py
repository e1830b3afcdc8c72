"""Angular search sets for template matching: rotation matrices (N, 3, 3).

Convention (cryocloud.geometry): a matrix R rotates the template (reference) into the particle's
orientation in the tomogram frame, acting on (x, y, z) column vectors.

Uniform sets use Hopf-like coordinates: the direction w = R^T e_z (where the tomogram's z axis
points in the template frame) lies on rings of the sphere spaced by the increment, each ring
holding round(360 sin(beta) / increment) points, and the in-plane angle gamma about w takes
ceil(360 / increment) values. Neighbouring rotations are about one increment apart, and the count
follows 8 pi^2 / increment^3: 44,148 rotations at 7 degrees (PyTom's list has 45,123), 4,416 at
15 degrees.

Symmetric particles (Cn, Dn, T, O): the orbit {R S} of a rotation under the particle's symmetry
operators S gives identical templates, and S acts on w as w -> S^T w. Keeping only directions in
the Voronoi cell of a generic vector v among its orbit {S v} (plus half an increment of slack at
the cell border, so the set still covers every orientation) reduces the set about |G|-fold.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from cryocloud.errors import ModelError
from cryocloud.geometry import relion_euler_to_matrix

_REFERENCE = np.array([1.0, 0.3, 0.2]) / np.linalg.norm([1.0, 0.3, 0.2])  # on no symmetry axis


def crowther_increment(resolution_a: float, diameter_a: float) -> float:
    """Angular increment (deg) from the Crowther criterion: resolution / particle diameter (rad)."""
    if resolution_a <= 0 or diameter_a <= 0:
        raise ModelError("angular_increment", f"needs positive resolution and diameter (A), got {resolution_a}, {diameter_a}")
    return float(np.rad2deg(resolution_a / diameter_a))


def _rz(angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def symmetry_operators(symmetry: str) -> np.ndarray:
    """Rotation operators (K, 3, 3) of a point group: "C1", "Cn", "Dn" (n-fold about z, 2-fold about x),
    "T" (12; 2-folds along x, y, z) or "O" (24; 4-folds along x, y, z)."""
    name = symmetry.strip().upper()
    match = re.fullmatch(r"([CD])(\d+)", name)
    if match:
        n = int(match.group(2))
        if n < 1:
            raise ModelError("symmetry", f"order must be >= 1, got {symmetry!r}")
        cyclic = [_rz(2 * np.pi * k / n) for k in range(n)]
        if match.group(1) == "C":
            return np.array(cyclic)
        flip = np.diag([1.0, -1.0, -1.0])
        return np.array(cyclic + [c @ flip for c in cyclic])
    if name in ("T", "O"):
        ops = []
        for perm in itertools.permutations(range(3)):
            for signs in itertools.product((1.0, -1.0), repeat=3):
                m = np.zeros((3, 3))
                m[np.arange(3), perm] = signs
                even = np.linalg.det(np.eye(3)[list(perm)]) > 0
                if np.linalg.det(m) > 0 and (name == "O" or even):
                    ops.append(m)
        return np.array(ops)
    raise ModelError("symmetry", f"expected C1, Cn, Dn, T or O, got {symmetry!r}")


def _sphere_rings(increment_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Directions on the unit sphere spaced by about `increment_deg`: (azimuth, polar) in rad."""
    m = int(np.ceil(180.0 / increment_deg))
    azimuths, polars = [], []
    for i in range(m + 1):
        beta = np.pi * i / m
        n = max(1, int(round(360.0 * np.sin(beta) / increment_deg)))
        offset = 0.5 * (i % 2)  # stagger neighbouring rings
        azimuths.append(2 * np.pi * (np.arange(n) + offset) / n)
        polars.append(np.full(n, beta))
    return np.concatenate(azimuths), np.concatenate(polars)


def _in_fundamental_region(w: np.ndarray, operators: np.ndarray, slack_rad: float) -> np.ndarray:
    """Directions (N, 3) within `slack_rad` of the Voronoi cell of the reference among its orbit."""
    orbit = operators @ _REFERENCE  # (K, 3)
    angles = np.arccos(np.clip(w @ orbit.T, -1.0, 1.0))  # (N, K)
    return angles[:, 0] <= angles.min(axis=1) + slack_rad


def uniform_rotations(increment_deg: float, symmetry: str = "C1") -> np.ndarray:
    """Rotations (N, 3, 3) covering SO(3) (or its quotient by `symmetry`) at `increment_deg` spacing."""
    if not 0.5 <= increment_deg <= 180:
        raise ModelError("angular_increment", f"expected 0.5..180 degrees, got {increment_deg}")
    operators = symmetry_operators(symmetry)
    alpha, beta = _sphere_rings(increment_deg)
    w = np.stack([np.sin(beta) * np.cos(alpha), np.sin(beta) * np.sin(alpha), np.cos(beta)], axis=-1)
    if len(operators) > 1:
        keep = _in_fundamental_region(w, operators, np.deg2rad(increment_deg) / 2)
        alpha, beta = alpha[keep], beta[keep]
    n_gamma = int(np.ceil(360.0 / increment_deg))
    gamma = 2 * np.pi * np.arange(n_gamma) / n_gamma
    a = np.repeat(alpha, n_gamma)
    b = np.repeat(beta, n_gamma)
    g = np.tile(gamma, alpha.size)
    # R^T = Rz(a) Ry(b) Rz(g): its third column (R^T e_z) is the direction w
    r_transposed = Rotation.from_euler("ZYZ", np.stack([a, b, g], axis=-1)).as_matrix()
    return np.ascontiguousarray(np.swapaxes(r_transposed, -1, -2))


def local_rotations(centres: np.ndarray, max_angle_deg: float, increment_deg: float) -> np.ndarray:
    """Rotations within `max_angle_deg` of each centre orientation (M, 3, 3), spaced by `increment_deg`.

    Offsets are rotation vectors on a cubic lattice of spacing `increment_deg` inside a ball of
    radius `max_angle_deg`, applied in the tomogram frame: R = exp(offset) R_centre.
    """
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 3, 3)
    if max_angle_deg <= 0 or increment_deg <= 0:
        raise ModelError("local_search", f"needs a positive maximum angle and increment, got {max_angle_deg}, {increment_deg}")
    n = int(np.floor(max_angle_deg / increment_deg))
    steps = np.arange(-n, n + 1) * np.deg2rad(increment_deg)
    lattice = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), axis=-1).reshape(-1, 3)
    lattice = lattice[np.linalg.norm(lattice, axis=1) <= np.deg2rad(max_angle_deg) + 1e-12]
    offsets = Rotation.from_rotvec(lattice).as_matrix()
    return np.einsum("oij,cjk->coik", offsets, centres).reshape(-1, 3, 3)


def rotations_from_list(values: np.ndarray, *, source: str = "angle list") -> np.ndarray:
    """Custom rotations from an array: (N, 3) RELION ZYZ Euler angles (deg) or (N, 9) / (N, 3, 3) matrices."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 3:
        mats = relion_euler_to_matrix(arr[:, 0], arr[:, 1], arr[:, 2])
    elif arr.ndim == 2 and arr.shape[1] == 9:
        mats = arr.reshape(-1, 3, 3)
    elif arr.ndim == 3 and arr.shape[1:] == (3, 3):
        mats = arr
    else:
        raise ModelError("angles", f"expected (N, 3) ZYZ Euler angles in degrees or (N, 9) matrices, got shape {arr.shape}", source=source)
    if len(mats) == 0:
        raise ModelError("angles", "is empty", source=source)
    ortho = np.einsum("nij,nkj->nik", mats, mats)
    if not np.allclose(ortho, np.eye(3), atol=1e-4) or not np.allclose(np.linalg.det(mats), 1.0, atol=1e-4):
        raise ModelError("angles", "rows are not proper rotation matrices", source=source)
    return np.ascontiguousarray(mats)


def parse_angle_list(text: str, *, source: str = "angle list") -> np.ndarray:
    """Rotations from text: one rotation a line, 3 numbers (RELION rot, tilt, psi in deg) or 9 (matrix rows).

    Blank lines and lines starting with '#' are ignored; commas or whitespace separate numbers.
    """
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            rows.append([float(v) for v in re.split(r"[,\s]+", line)])
        except ValueError:
            raise ModelError("angles", f"line {number} is not numbers: {line!r}", source=source) from None
    if len({len(r) for r in rows}) > 1:
        raise ModelError("angles", "lines have different numbers of values; expected 3 or 9 on every line", source=source)
    return rotations_from_list(np.array(rows), source=source)


def _quaternions(rotations: np.ndarray) -> np.ndarray:
    q = Rotation.from_matrix(rotations).as_quat()
    return np.concatenate([q, -q])


def nearest_rotation(rotations: np.ndarray, probes: np.ndarray, symmetry: str = "C1") -> tuple[np.ndarray, np.ndarray]:
    """For each probe (P, 3, 3): index of the closest rotation in the set and its angle (deg),
    taking the particle's symmetry into account (R and R S are the same orientation)."""
    n = len(rotations)
    tree = cKDTree(_quaternions(rotations))
    best_angle = np.full(len(probes), np.inf)
    best_index = np.zeros(len(probes), dtype=np.int64)
    for op in symmetry_operators(symmetry):
        chord, idx = tree.query(Rotation.from_matrix(np.asarray(probes) @ op).as_quat())
        angle = np.rad2deg(4 * np.arcsin(np.clip(chord / 2, 0, 1)))
        better = angle < best_angle
        best_angle[better] = angle[better]
        best_index[better] = idx[better] % n
    return best_index, best_angle


__all__ = [
    "crowther_increment",
    "local_rotations",
    "nearest_rotation",
    "parse_angle_list",
    "rotations_from_list",
    "symmetry_operators",
    "uniform_rotations",
]
