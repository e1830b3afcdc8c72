"""Orientation-dependent noise normalisation of the plate response (the missing wedge's anisotropy).

A single-axis tilt series (tilt axis y, +-60 deg) leaves the tomogram's noise anisotropic: its
power is missing in the wedge around z and the point-spread function is elongated along z, so
noise forms z-elongated structures whose plate response has normals near the x-y plane. Averaged
over a volume, the plate tensor of noise, N = <R n n^T> (`hessian` step 2), is about twice as
large for x normals as for z normals (and y > x for the tilt axis), while the noise in a
directional second derivative is about half as large along z. Membranes whose normals point
between the wedge and the x-y plane (30-60 deg from z) image weaker, yet in noise that is weaker
still in that direction; an isotropic plate measure ranks them below the noise and loses them.

The whitener W = (N / (tr N / 3))^(-1/2) makes the noise tensor isotropic (W N W = c I): the
integrated tensor T becomes W T W before the plateness and coherence are taken (`hessian`
step 3), so a plate is judged against the noise in its own orientation. For isotropic noise
W = I, and the plateness is unchanged. A plate r n n^T becomes r (W n)(W n)^T, so the voxel-space
normal is W^-1 times the whitened one (used for the ridge test).

N is measured on the volume itself, from at most 2 x 2 x 2 cubes of `CALIBRATION_EDGE` voxels at
fixed positions (the whole volume when it is small), each without its filter margin: a bounded
cost, and the same result whatever the Dask chunking. Membranes cover a few percent of a
tomogram, so N is the noise's (they bias it by a few percent at most).
"""

from __future__ import annotations

import math

import dask
import dask.array as da
import numpy as np

from cryocloud.progress import compute
from cryocloud.segment.hessian import PAIRS, TRUNCATE, Polarity, derivatives, plate_tensor

CALIBRATION_EDGE = 64
CALIBRATION_PER_AXIS = 2
MIN_EIGENVALUE = 1e-3  # of the largest: keeps W finite where N is degenerate (a flat or constant block)


def calibration_slices(shape: tuple[int, ...], edge: int = CALIBRATION_EDGE) -> list[tuple[slice, ...]]:
    """The cubes (z, y, x slices) on which N is measured: per axis one cube when the axis is at most
    `edge` long, else `CALIBRATION_PER_AXIS` cubes spread evenly from one face to the other."""
    starts = []
    for n in shape:
        if n <= edge:
            starts.append([(0, n)])
        else:
            starts.append([(s, s + edge) for s in np.linspace(0, n - edge, CALIBRATION_PER_AXIS).round().astype(int)])
    grids = np.meshgrid(*[range(len(s)) for s in starts], indexing="ij")
    return [tuple(slice(*starts[a][i]) for a, i in enumerate(idx)) for idx in zip(*(g.ravel() for g in grids))]


def tensor_sum(cube: np.ndarray, scale_vox: float, polarity: Polarity) -> np.ndarray:
    """(7,): the sums of the 6 plate-tensor components over the cube's interior (the filter margin
    of TRUNCATE x scale left out where the cube is large enough) and the voxel count."""
    t = plate_tensor(*derivatives(cube, scale_vox), polarity)
    m = int(math.ceil(TRUNCATE * scale_vox))
    inner = tuple(slice(m, n - m) if n > 4 * m else slice(None) for n in cube.shape)
    part = t[(slice(None),) + inner].reshape(6, -1)
    return np.append(part.sum(axis=1, dtype=np.float64), part.shape[1])


def whitener(mean_tensor: np.ndarray) -> np.ndarray:
    """W = (N / (tr N / 3))^(-1/2) (3 x 3) of a mean plate tensor given as its 6 components in `PAIRS`
    order; the identity when N is zero."""
    n = np.empty((3, 3))
    for k, (i, j) in enumerate(PAIRS):
        n[i, j] = n[j, i] = mean_tensor[k]
    trace = np.trace(n)
    if not trace > 0:
        return np.eye(3)
    values, vectors = np.linalg.eigh(n / (trace / 3))
    values = np.maximum(values, MIN_EIGENVALUE * values.max())
    return vectors @ np.diag(values**-0.5) @ vectors.T


def estimate_whitener(volume: da.Array, scale_vox: float, polarity: Polarity, *, quiet: bool = False) -> np.ndarray:
    """W of a (lazy) volume (z, y, x), measured on the calibration cubes (computed here)."""
    parts = [dask.delayed(tensor_sum)(volume[s].astype(np.float32), scale_vox, polarity) for s in calibration_slices(volume.shape)]
    sums = np.sum(compute(*parts, description="membrane noise anisotropy", quiet=quiet), axis=0)
    return whitener(sums[:6] / max(sums[6], 1.0))
