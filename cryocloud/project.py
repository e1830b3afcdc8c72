"""Forward projection of a volume (z, y, x) into a tilt series (tilt, y, x): the one projector every stage uses.

Geometry (see `cryocloud.geometry`): the tilt axis is +y; at tilt t a voxel at (x, z), relative to the
centre indices (nx // 2, nz // 2), lands on the detector at x' = x cos t + z sin t, relative to the
detector centre nx // 2; image y = volume y. Values are line integrals in voxel units (a volume of
ones, 10 voxels thick, projects to 10 at tilt 0).

The scheme is voxel-driven with linear interpolation on the detector ("linear splatting"): every
voxel's value is shared between the two detector pixels around its projected position x', weights
(1 - w, w). This conserves mass exactly (for voxels whose projection lies inside the detector) and
puts every voxel's centroid exactly at x', and it is the exact adjoint of the pixel-driven
linear-interpolation back-projector of `cryocloud.reconstruct`. Each y row is independent, so the
kernel runs in parallel over y and the Dask version maps it over Y slabs.
"""

from __future__ import annotations

import dask.array as da
import numba
import numpy as np

from cryocloud.errors import ModelError


@numba.njit(parallel=True, cache=True)
def _splat(volume: np.ndarray, cos_t: np.ndarray, sin_t: np.ndarray, out: np.ndarray) -> None:
    """Accumulate the projections of `volume` (z, y, x) into `out` (tilt, y, u), zeroed by the caller."""
    nz, ny, nx = volume.shape
    n_tilts = cos_t.size
    nu = out.shape[2]
    cx = nx // 2
    cz = nz // 2
    cu = nu // 2
    for y in numba.prange(ny):
        acc = np.zeros(nu + 2, dtype=np.float64)  # acc[i + 1] is detector pixel i; pixels -1 and nu are dropped
        for t in range(n_tilts):
            c = cos_t[t]
            s = sin_t[t]
            acc[:] = 0.0
            for z in range(nz):
                base = cu + (z - cz) * s - cx * c
                for x in range(nx):
                    u = base + x * c
                    if u >= -1.0 and u < nu:
                        i = int(np.floor(u))
                        w = u - i
                        v = volume[z, y, x]
                        acc[i + 1] += v * (1.0 - w)
                        acc[i + 2] += v * w
            for i in range(nu):
                out[t, y, i] = acc[i + 1]


def _angles(tilt_angles_deg) -> tuple[np.ndarray, np.ndarray]:
    angles = np.asarray(tilt_angles_deg, dtype=np.float64).reshape(-1)
    if angles.size == 0 or not np.all(np.isfinite(angles)) or np.any(np.abs(angles) > 90):
        raise ModelError("tilt_angles", f"expected finite angles within [-90, 90] degrees, got {angles.tolist()}")
    rad = np.deg2rad(angles)
    return np.cos(rad), np.sin(rad)


def project_volume(volume: np.ndarray, tilt_angles_deg, *, pixel_size_a: float = 1.0) -> np.ndarray:
    """Project a volume (z, y, x) at the given tilt angles (degrees) into an array (tilt, y, x) float32.

    Values are line integrals in voxel units; the detector width equals the volume's x size and
    voxels projecting outside it are dropped. `pixel_size_a` does not change the geometry (all in
    voxels); it is accepted for symmetry with the rest of the API.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ModelError("volume", f"expected a 3-D array (z, y, x), got shape {vol.shape}")
    if pixel_size_a <= 0:
        raise ModelError("pixel_size", f"expected a positive number of Angstrom, got {pixel_size_a}")
    cos_t, sin_t = _angles(tilt_angles_deg)
    vol = np.ascontiguousarray(vol, dtype=np.float32)
    out = np.empty((cos_t.size, vol.shape[1], vol.shape[2]), dtype=np.float32)
    _splat(vol, cos_t, sin_t, out)
    return out


def project_volume_dask(volume: da.Array, tilt_angles_deg) -> da.Array:
    """Lazy `project_volume` of a Dask volume (z, y, x): one task per Y chunk of the input.

    Returns a Dask array (tilt, y, x) float32 chunked in y like the input (z and x are gathered
    into single chunks first, as each Y slab needs the whole XZ plane).
    """
    vol = volume if isinstance(volume, da.Array) else da.from_array(np.asarray(volume))
    if vol.ndim != 3:
        raise ModelError("volume", f"expected a 3-D array (z, y, x), got shape {vol.shape}")
    angles = np.asarray(tilt_angles_deg, dtype=np.float64).reshape(-1)
    _angles(angles)  # validate early, not inside the tasks
    vol = vol.rechunk({0: -1, 2: -1})
    return vol.map_blocks(
        project_volume,
        angles,
        dtype=np.float32,
        chunks=((angles.size,), vol.chunks[1], (vol.shape[2],)),
        meta=np.empty((0, 0, 0), dtype=np.float32),
    )
