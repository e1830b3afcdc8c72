"""Plate (membrane) enhancement on one block: Hessian plateness, orientation-coherent integration, ridge.

All arrays are (z, y, x); scales are Gaussian standard deviations in voxels (the caller converts
from Angstrom). Steps, for a block that already carries its overlap (see `overlap_depth`):

1. Scale-normalised Gaussian derivatives (truncated at `TRUNCATE` sigma): the Hessian
   H = sigma^2 d^2 (G_sigma * v) and the gradient g = sigma grad(G_sigma * v).
2. Plate response per voxel: with the eigenvalues of H ordered by magnitude |l1| <= |l2| <= |l3|
   and the polarity sign s, R = max(s l3 - |l2| - |g . n|, 0), the plate normal n being the
   eigenvector of l3. A plate (membrane) has one large curvature across it and two small ones
   along it; a line has two large ones (R ~ 0), a blob three (R ~ 0). A plate is symmetric across
   its mid-surface, so g . n vanishes there, while the edge of a dense object (a step, e.g. a
   ribosome's surface) curves most where its gradient is large: the gradient term rejects edges.
   Dark plates in a density map are valleys, l3 > 0 (s = +1, "dark"); bright plates s = -1
   ("bright"); "either" uses |l3|. Where the sampling resolves the bilayer (with the CTF it images
   as dark leaflet / bright centre / dark leaflet) "either" lets all three layers vote for the
   same mid-surface, so the response is symmetric about it; "dark" alone puts the ridge on one
   leaflet.
3. Orientation-coherent integration (a dense, isotropic form of tensor voting): the tensor
   R n n^T is averaged with a Gaussian of `integration` voxels, then whitened, W T W, by the
   volume's noise whitener W (`cryocloud.segment.anisotropy`: the missing wedge makes noise plates
   favour x-y normals; W = I for isotropic noise). With t2 <= t3 the two largest eigenvalues of
   the whitened average, the plate normal is W^-1 times the eigenvector of t3 and the plateness
   P = (t3 - t2) C^2 with the coherence C = (t3 - t2) / t3 (0..1). Noise gives random normals that
   cancel, a membrane's agree, so P rises on membranes and falls in ice; dense, textured particles
   give strong but incoherent responses (median C ~ 0.4 at 30 A on simulated ribosomes, below the
   ~0.5 of ice, ~0.75 on membranes), which C^2 damps.
4. Ridge (non-maximum suppression across the plate): a voxel is kept when P is not smaller than
   P one voxel away on either side along the normal (trilinear interpolation). The ridge is the
   membrane mid-surface, one to two voxels thick.
"""

from __future__ import annotations

import math
from typing import Literal

import numba
import numpy as np
from scipy import ndimage

Polarity = Literal["dark", "bright", "either"]
POLARITIES = ("dark", "bright", "either")
TRUNCATE = 3.0
COHERENCE_POWER = 2.0  # P = (t3 - t2) C^2: halves the response of dense particles (C ~ 0.4) vs membranes (C ~ 0.75)
# (i, j) of the 6 distinct components of a symmetric 3x3 tensor, in this order everywhere
PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def overlap_depth(scale_vox: float, integration_vox: float) -> int:
    """Voxels of overlap a block needs so that its interior equals the whole-volume result.

    Hessian support + integration support (both truncated at TRUNCATE sigma) + 1 for the ridge test.
    """
    return int(math.ceil(TRUNCATE * scale_vox) + math.ceil(TRUNCATE * integration_vox) + 1)


@numba.njit(cache=True, inline="always")
def _eigenvalues(a00, a01, a02, a11, a12, a22):
    """Eigenvalues (ascending) of a symmetric 3x3 matrix, trigonometric closed form (float64)."""
    p1 = a01 * a01 + a02 * a02 + a12 * a12
    q = (a00 + a11 + a22) / 3.0
    if p1 == 0.0:
        lo, hi = min(a00, a11, a22), max(a00, a11, a22)
        return lo, a00 + a11 + a22 - lo - hi, hi
    p2 = (a00 - q) ** 2 + (a11 - q) ** 2 + (a22 - q) ** 2 + 2.0 * p1
    p = math.sqrt(p2 / 6.0)
    b00, b11, b22 = (a00 - q) / p, (a11 - q) / p, (a22 - q) / p
    b01, b02, b12 = a01 / p, a02 / p, a12 / p
    r = 0.5 * (b00 * (b11 * b22 - b12 * b12) - b01 * (b01 * b22 - b12 * b02) + b02 * (b01 * b12 - b11 * b02))
    r = min(1.0, max(-1.0, r))
    phi = math.acos(r) / 3.0
    e3 = q + 2.0 * p * math.cos(phi)
    e1 = q + 2.0 * p * math.cos(phi + 2.0 * math.pi / 3.0)
    return e1, 3.0 * q - e1 - e3, e3


@numba.njit(cache=True, inline="always")
def _cross(u0, u1, u2, v0, v1, v2):
    return u1 * v2 - u2 * v1, u2 * v0 - u0 * v2, u0 * v1 - u1 * v0


@numba.njit(cache=True, inline="always")
def _eigenvector(a00, a01, a02, a11, a12, a22, lam):
    """Unit eigenvector of a symmetric 3x3 matrix for eigenvalue `lam` (the largest cross product of
    two rows of A - lam I); (0, 0, 1) when lam is repeated and the direction is undefined."""
    d0, d1, d2 = a00 - lam, a11 - lam, a22 - lam
    best = _cross(d0, a01, a02, a01, d1, a12)
    best_n = best[0] ** 2 + best[1] ** 2 + best[2] ** 2
    for c in (_cross(d0, a01, a02, a02, a12, d2), _cross(a01, d1, a12, a02, a12, d2)):
        n = c[0] ** 2 + c[1] ** 2 + c[2] ** 2
        if n > best_n:
            best_n = n
            best = c
    if best_n <= 1e-30:
        return 0.0, 0.0, 1.0
    s = 1.0 / math.sqrt(best_n)
    return best[0] * s, best[1] * s, best[2] * s


@numba.njit(cache=True)
def _plate_tensor_kernel(h: np.ndarray, g: np.ndarray, mode: int, out: np.ndarray) -> None:
    """h (6, N) Hessian and g (3, N) gradient components -> out (6, N) = R n n^T (module step 2);
    mode 1 dark, -1 bright, 0 either."""
    for k in range(h.shape[1]):
        a00, a01, a02, a11, a12, a22 = float(h[0, k]), float(h[1, k]), float(h[2, k]), float(h[3, k]), float(h[4, k]), float(h[5, k])
        e1, e2, e3 = _eigenvalues(a00, a01, a02, a11, a12, a22)
        big, mid = (e3, max(abs(e1), abs(e2))) if abs(e3) >= abs(e1) else (e1, max(abs(e2), abs(e3)))
        across = abs(big) if mode == 0 else mode * big
        if across - mid <= 0.0:
            for c in range(6):
                out[c, k] = 0.0
            continue
        n0, n1, n2 = _eigenvector(a00, a01, a02, a11, a12, a22, big)
        r = across - mid - abs(g[0, k] * n0 + g[1, k] * n1 + g[2, k] * n2)
        if r <= 0.0:
            for c in range(6):
                out[c, k] = 0.0
            continue
        out[0, k], out[1, k], out[2, k] = r * n0 * n0, r * n0 * n1, r * n0 * n2
        out[3, k], out[4, k], out[5, k] = r * n1 * n1, r * n1 * n2, r * n2 * n2


@numba.njit(cache=True)
def _plateness_kernel(t: np.ndarray, power: float, w: np.ndarray, p: np.ndarray, normal: np.ndarray) -> None:
    """t (6, N) integrated tensor, w (3, 3) noise whitener W -> p (N,) = (t3 - t2) C^power of W T W,
    C = (t3 - t2) / t3, and normal (3, N): W^-1 times the eigenvector of t3, normalised (a voxel-space
    plate normal)."""
    wi = np.linalg.inv(w)
    for k in range(t.shape[1]):
        a00, a01, a02, a11, a12, a22 = float(t[0, k]), float(t[1, k]), float(t[2, k]), float(t[3, k]), float(t[4, k]), float(t[5, k])
        # c = A W (rows of A times the columns of W), then b = W c (symmetric: six entries)
        c00 = a00 * w[0, 0] + a01 * w[1, 0] + a02 * w[2, 0]
        c01 = a00 * w[0, 1] + a01 * w[1, 1] + a02 * w[2, 1]
        c02 = a00 * w[0, 2] + a01 * w[1, 2] + a02 * w[2, 2]
        c10 = a01 * w[0, 0] + a11 * w[1, 0] + a12 * w[2, 0]
        c11 = a01 * w[0, 1] + a11 * w[1, 1] + a12 * w[2, 1]
        c12 = a01 * w[0, 2] + a11 * w[1, 2] + a12 * w[2, 2]
        c20 = a02 * w[0, 0] + a12 * w[1, 0] + a22 * w[2, 0]
        c21 = a02 * w[0, 1] + a12 * w[1, 1] + a22 * w[2, 1]
        c22 = a02 * w[0, 2] + a12 * w[1, 2] + a22 * w[2, 2]
        b00 = w[0, 0] * c00 + w[0, 1] * c10 + w[0, 2] * c20
        b01 = w[0, 0] * c01 + w[0, 1] * c11 + w[0, 2] * c21
        b02 = w[0, 0] * c02 + w[0, 1] * c12 + w[0, 2] * c22
        b11 = w[1, 0] * c01 + w[1, 1] * c11 + w[1, 2] * c21
        b12 = w[1, 0] * c02 + w[1, 1] * c12 + w[1, 2] * c22
        b22 = w[2, 0] * c02 + w[2, 1] * c12 + w[2, 2] * c22
        _, e2, e3 = _eigenvalues(b00, b01, b02, b11, b12, b22)
        p[k] = (e3 - e2) * ((e3 - e2) / e3) ** power if e3 > 0.0 else 0.0
        n0, n1, n2 = _eigenvector(b00, b01, b02, b11, b12, b22, e3)
        m0 = wi[0, 0] * n0 + wi[0, 1] * n1 + wi[0, 2] * n2
        m1 = wi[1, 0] * n0 + wi[1, 1] * n1 + wi[1, 2] * n2
        m2 = wi[2, 0] * n0 + wi[2, 1] * n1 + wi[2, 2] * n2
        s = 1.0 / math.sqrt(m0 * m0 + m1 * m1 + m2 * m2)
        normal[0, k], normal[1, k], normal[2, k] = m0 * s, m1 * s, m2 * s


def derivatives(block: np.ndarray, scale_vox: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale-normalised Gaussian derivatives of a block: Hessian sigma^2 d^2 (G_sigma * v), (6, z, y, x)
    in `PAIRS` order, and gradient sigma d (G_sigma * v), (3, z, y, x); float32."""
    v = np.asarray(block, dtype=np.float32)
    h = np.empty((6,) + v.shape, dtype=np.float32)
    g = np.empty((3,) + v.shape, dtype=np.float32)
    for k, (i, j) in enumerate(PAIRS):
        order = [0, 0, 0]
        order[i] += 1
        order[j] += 1
        ndimage.gaussian_filter(v, scale_vox, order=order, output=h[k], truncate=TRUNCATE, mode="reflect")
    for i in range(3):
        ndimage.gaussian_filter(v, scale_vox, order=[int(a == i) for a in range(3)], output=g[i], truncate=TRUNCATE, mode="reflect")
    h *= np.float32(scale_vox**2)
    g *= np.float32(scale_vox)
    return h, g


def plate_tensor(h: np.ndarray, g: np.ndarray, polarity: Polarity) -> np.ndarray:
    """Plate response times normal outer product, R n n^T, as (6, ...) components (see module step 2)."""
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
    out = np.empty_like(h)
    mode = {"dark": 1, "bright": -1, "either": 0}[polarity]
    _plate_tensor_kernel(h.reshape(6, -1), g.reshape(3, -1), mode, out.reshape(6, -1))
    return out


def integrate(tensor: np.ndarray, integration_vox: float) -> np.ndarray:
    """Gaussian average of each tensor component (in place when possible); returns (6, ...)."""
    if integration_vox <= 0:
        return tensor
    for k in range(6):
        ndimage.gaussian_filter(tensor[k], integration_vox, output=tensor[k], truncate=TRUNCATE, mode="reflect")
    return tensor


def plateness(tensor: np.ndarray, whitener: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(P, normal): P = (t3 - t2) C^2 of the integrated tensor whitened by W (module step 3; W = identity
    when None), float32 (...); normal (3, ...) unit plate normals in voxel space."""
    w = np.eye(3) if whitener is None else np.asarray(whitener, dtype=np.float64)
    if w.shape != (3, 3):
        raise ValueError(f"whitener must be a 3 x 3 matrix, got shape {w.shape}")
    p = np.empty(tensor.shape[1:], dtype=np.float32)
    normal = np.empty((3,) + tensor.shape[1:], dtype=np.float32)
    _plateness_kernel(tensor.reshape(6, -1), COHERENCE_POWER, w, p.reshape(-1), normal.reshape(3, -1))
    return p, normal


def ridge(p: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """P where P is a maximum across the plate (one voxel either way along the normal), else 0."""
    grid = np.indices(p.shape, dtype=np.float32)
    ahead = ndimage.map_coordinates(p, grid + normal, order=1, mode="nearest")
    behind = ndimage.map_coordinates(p, grid - normal, order=1, mode="nearest")
    return np.where((p >= ahead) & (p >= behind), p, np.float32(0)).astype(np.float32)


def membrane_ridge(
    block: np.ndarray, scale_vox: float, integration_vox: float, polarity: Polarity, whitener: np.ndarray | None = None
) -> np.ndarray:
    """Steps 1-4 on one block: the ridge plateness (float32, same shape; 0 off the mid-surfaces)."""
    tensor = integrate(plate_tensor(*derivatives(block, scale_vox), polarity), integration_vox)
    p, normal = plateness(tensor, whitener)
    return ridge(p, normal)
