"""Training targets: class labels (z, y, x) for a box of a tomogram from picks and membranes.

Classes: 0 background, 1 particle (a ball of the particle radius around every pick),
2 membrane (voxels of a label volume equal to `membrane_label`, e.g. the digital twin's
labels.zarr where 1 = particle, 2 = membrane, or a segmentation's mask) when membranes are given.
Particles win where the two overlap.
"""

from __future__ import annotations

import numpy as np

BACKGROUND, PARTICLE, MEMBRANE = 0, 1, 2


def render_targets(
    corner_zyx: np.ndarray,
    size_zyx: tuple[int, int, int],
    positions_a: np.ndarray,
    pixel_size_a: float,
    radius_a: float,
    membranes: np.ndarray | None = None,
) -> np.ndarray:
    """uint8 labels of the box [corner, corner + size) (voxels, z, y, x) of a tomogram.

    positions_a: (N, 3) picks x, y, z in Angstrom (voxel (0, 0, 0) at 0 A); every voxel centre
    within `radius_a` of a pick is PARTICLE. membranes: optional bool (z, y, x) array of the box
    itself, True where MEMBRANE.
    """
    labels = np.zeros(size_zyx, dtype=np.uint8)
    if membranes is not None:
        labels[np.asarray(membranes, dtype=bool)] = MEMBRANE
    radius = radius_a / pixel_size_a
    centres = np.asarray(positions_a, dtype=np.float64).reshape(-1, 3)[:, ::-1] / pixel_size_a - np.asarray(corner_zyx)
    size = np.asarray(size_zyx)
    near = np.all((centres > -radius - 1) & (centres < size + radius), axis=1)
    for c in centres[near]:
        lo = np.maximum(np.floor(c - radius).astype(int), 0)
        hi = np.minimum(np.ceil(c + radius).astype(int) + 1, size)
        if np.any(hi <= lo):
            continue
        z, y, x = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        ball = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= radius**2
        labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]][ball] = PARTICLE
    return labels
