"""Missing-wedge weights of a particle from the tilt angles actually collected.

A subtomogram cut from a tomogram of tilts t_i holds Fourier data only on the central slices normal
to the beam directions d_i = (-sin t_i, 0, cos t_i) (x, y, z; the specimen rotates about +y,
cryocloud.geometry). The weight of a frequency k (cycles per voxel, tomogram frame) is

    W(k) = min(1, sum_i max(0, 1 - |k . d_i| / dk)),   dk = 1 / box

one voxel-thick linearly interpolated slices, the same sampling model as
`cryocloud.pick.weighting.tilt_weight` (which gives W on a whole rfft grid; here W is evaluated at
arbitrary, e.g. rotated, frequencies). W is 1 in the sampled region and 0 inside the missing wedge.
"""

from __future__ import annotations

import numpy as np

from cryocloud.pick.weighting import TiltWeighting, tilt_weight


def beam_directions(tilt_angles_deg) -> np.ndarray:
    """Beam directions (T, 3) (x, y, z) in the tomogram frame of tilts at the given angles (deg)."""
    t = np.deg2rad(np.asarray(tilt_angles_deg, dtype=np.float64).reshape(-1))
    return np.stack([-np.sin(t), np.zeros_like(t), np.cos(t)], axis=-1)


def wedge_at(kxyz: np.ndarray, tilt_angles_deg, box: int) -> np.ndarray:
    """W at frequencies `kxyz` (K, 3) (x, y, z, cycles per voxel, tomogram frame), float32 (K,)."""
    d = beam_directions(tilt_angles_deg)
    along = np.abs(np.asarray(kxyz, dtype=np.float64) @ d.T) * box  # (K, T) in units of dk
    return np.minimum(1.0, np.clip(1.0 - along, 0.0, None).sum(axis=1)).astype(np.float32)


def wedge_grid(box: int, tilt_angles_deg) -> np.ndarray:
    """W on the rfft grid (box, box, box // 2 + 1) of a cubic box in the tomogram frame.

    Without CTF and dose, `tilt_weight` reduces to sum s_i / max(1, sum s_i) = min(1, sum s_i).
    """
    tilts = TiltWeighting(np.asarray(tilt_angles_deg, dtype=np.float64).reshape(-1))
    return tilt_weight((box, box, box), 1.0, tilts, ctf="none")
