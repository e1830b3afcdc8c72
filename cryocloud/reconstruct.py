"""Tomogram reconstruction by weighted back-projection, one Dask task per Y slab.

Geometry (see `cryocloud.geometry`): the input is an aligned tilt series (tilt, y, x), tilt axis
along y. Voxel (x, z) of the output, relative to the centre indices (nx // 2, nz // 2), is read
from detector position x' = x cos t + z sin t (relative to nx // 2) of tilt t, with linear
interpolation: the back-projector is the exact adjoint of `cryocloud.project.project_volume`.
Per-tilt `shift_x` / `shift_y` coordinates (A), when present, are applied on the fly: the
aligned image at (x', y') is read from the stored image at (x' + shift_x, y' + shift_y)
(geometry.aligned_to_raw with a zero tilt-axis angle). A tilt series with a non-zero
`tilt_axis_angle` carries a stored alignment (`cryocloud align`): it is applied here, lazily, by
`cryocloud.resample.apply_alignment` with one block per tilt and slab, so each task resamples only
its own rows (a series with a tilted axis and no shifts is refused as not aligned).

Every XZ slice is independent, so the graph has one task per slab of Y rows: it reads those rows
(plus the margin the y shifts need) of all tilts from the lazy tilt series, bins them, filters
them (`cryocloud.recon_filters`) and back-projects them into a (z, rows, x) block. Memory per
task is bounded by the slab, whatever the size of the tomogram.

Values: projections are line integrals in pixel units; the reconstruction is in the same
density units per voxel (a voxel of density 1 projected by `project_volume` comes back as ~1),
independent of binning (binning by b mean-pools b x b pixels and divides by b, the path length
of one binned voxel).
"""

from __future__ import annotations

import dask
import dask.array as da
import numba
import numpy as np

from cryocloud.errors import ModelError
from cryocloud.model import TiltSeries, Tomogram
from cryocloud.recon_filters import FilterSpec, apply_filter, filter_response, padded_length
from cryocloud.resample import apply_alignment

HALVES = ("even", "odd")
SLAB_TARGET_BYTES = 64 * 2**20


@numba.njit(cache=True, inline="always")
def _x_range(base: float, c: float, nx: int, nu: int) -> tuple[int, int]:
    """Half-open range of x with -1 <= base + x c < nu (x' inside the detector, edge pixels incl.)."""
    if c < 1e-9:
        if -1.0 <= base < nu:
            return 0, nx
        return 0, 0
    lo = max(0, int(np.ceil((-1.0 - base) / c)))
    hi = min(nx, int(np.ceil((nu - base) / c)))
    while lo < hi and base + lo * c < -1.0:  # guard against rounding of the divisions
        lo += 1
    while lo > 0 and base + (lo - 1) * c >= -1.0:
        lo -= 1
    while hi > lo and base + (hi - 1) * c >= nu:
        hi -= 1
    while hi < nx and base + hi * c < nu:
        hi += 1
    return lo, hi


Z_BLOCK = 8  # slices per pass over the projections: one tilt's rows stay in cache for all of them


@numba.njit(parallel=True, cache=True, fastmath=True)
def _backproject(proj: np.ndarray, cos_t: np.ndarray, sin_t: np.ndarray, shift_u: np.ndarray, out: np.ndarray) -> None:
    """Write into out (z, y, x) the linear-interpolation back-projection of proj (tilt, u + 2, y).

    proj[:, 0] and proj[:, -1] are zero guard rows (detector pixels -1 and nu). y is innermost in
    proj and in the per-slice accumulators (x, y), so the interpolation weights of one (z, tilt, x)
    serve a whole vector of y rows. Z_BLOCK slices are accumulated per pass over the tilts, so each
    tilt's rows are read from memory once per block rather than once per slice (the kernel is
    memory-bound otherwise); finished slices are transposed into out.
    """
    n_t, nup2, n_y = proj.shape
    nu = nup2 - 2
    nz, _, nx = out.shape
    cx = nx // 2
    cz = nz // 2
    cu = nu // 2
    for zb in numba.prange((nz + Z_BLOCK - 1) // Z_BLOCK):
        z0 = zb * Z_BLOCK
        n_slices = min(nz, z0 + Z_BLOCK) - z0
        acc = np.zeros((Z_BLOCK, nx, n_y), dtype=np.float32)
        for t in range(n_t):
            c = cos_t[t]
            p = proj[t]
            for k in range(n_slices):
                base = cu + (z0 + k - cz) * sin_t[t] - cx * c + shift_u[t]
                lo, hi = _x_range(base, c, nx, nu)
                for x in range(lo, hi):
                    u = base + x * c
                    i = int(u + 1.0)  # floor(u) + 1 >= 0: row of pixel floor(u) in proj
                    w = np.float32(u + 1.0 - i)
                    w0 = np.float32(1.0) - w
                    a = acc[k, x]
                    p0 = p[i]
                    p1 = p[i + 1]
                    for y in range(n_y):
                        a[y] += w0 * p0[y] + w * p1[y]
        for k in range(n_slices):
            for y in range(n_y):
                for x in range(nx):
                    out[z0 + k, y, x] = acc[k, x, y]


def backproject(filtered: np.ndarray, tilt_angles_deg, thickness_px: int, *, shift_u=None) -> np.ndarray:
    """Back-project filtered rows (tilt, y, x) into a block (z, y, x) of `thickness_px` slices.

    `shift_u` (pixels, per tilt) is added to the detector position x' (reads x' + shift_u).
    Plain linear-interpolation back-projection, no weighting: the adjoint of `project_volume`.
    """
    n_t, n_y, n_x = filtered.shape
    angles = np.deg2rad(np.asarray(tilt_angles_deg, dtype=np.float64).reshape(-1))
    if angles.size != n_t:
        raise ModelError("tilt_angles", f"has {angles.size} values for {n_t} images")
    shifts = np.zeros(n_t) if shift_u is None else np.asarray(shift_u, dtype=np.float64).reshape(-1)
    proj = np.zeros((n_t, n_x + 2, n_y), dtype=np.float32)
    proj[:, 1:-1, :] = np.transpose(filtered, (0, 2, 1))
    out = np.empty((int(thickness_px), n_y, n_x), dtype=np.float32)
    _backproject(proj, np.cos(angles), np.sin(angles), shifts, out)
    return out


def reconstruct_rows(
    rows: np.ndarray, tilt_angles_deg, thickness_px: int, spec: FilterSpec = FilterSpec(), *, shift_u=None
) -> np.ndarray:
    """Weighted back-projection of aligned rows (tilt, y, x) into a block (z, y, x), in memory."""
    rows = np.asarray(rows, dtype=np.float32)
    response = filter_response(rows.shape[2], tilt_angles_deg, spec, thickness_px=thickness_px)
    return backproject(apply_filter(rows, response), tilt_angles_deg, thickness_px, shift_u=shift_u)


def _bin(block: np.ndarray, b: int) -> np.ndarray:
    """Mean-pool (tilt, y, x) by b in y and x (remainders cropped), divided by b (path length)."""
    if b == 1:
        return block.astype(np.float32, copy=False)
    t, h, w = block.shape
    h, w = h // b, w // b
    pooled = block[:, : h * b, : w * b].reshape(t, h, b, w, b).mean(axis=(2, 4), dtype=np.float64)
    return (pooled / b).astype(np.float32)


def _shift_rows(binned: np.ndarray, lo: int, y0: int, y1: int, shift_y: np.ndarray) -> np.ndarray:
    """Rows y0..y1 of the aligned images, read at y + shift_y (binned pixels) from `binned` rows lo.."""
    if not np.any(shift_y) and lo == y0 and binned.shape[1] == y1 - y0:
        return binned
    n_t, n_rows, n_x = binned.shape
    out = np.zeros((n_t, y1 - y0, n_x), dtype=np.float32)
    for t in range(n_t):
        pos = np.arange(y0, y1) + shift_y[t] - lo
        i = np.floor(pos).astype(np.int64)
        w = (pos - i).astype(np.float32)[:, None]
        for idx, weight in ((i, 1.0 - w), (i + 1, w)):
            ok = (idx >= 0) & (idx < n_rows)
            out[t, ok] += weight[ok] * binned[t, idx[ok]]
    return out


def _in_distributed_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


class _Rows:
    """The raw rows (tilt, y, x) one slab needs, still lazy: handed to the slab task unevaluated so
    that the task reads them itself (one task per slab instead of one per tilt chunk plus the slab).
    A plain class on purpose: Dask unpacks the dask arrays held by tuples, lists and dataclasses."""

    __slots__ = ("block",)

    def __init__(self, block: da.Array) -> None:
        self.block = block

    def __dask_tokenize__(self) -> str:
        return self.block.name

    def load(self) -> np.ndarray:
        """The rows in memory, read in the calling process (synchronous scheduler: inside a worker)."""
        return np.asarray(self.block.compute(scheduler="synchronous"))


def _slab(rows_in: _Rows, lo, y0, y1, binning, angles, shift_x, shift_y, thickness, spec) -> np.ndarray:
    """One task: rows [y0, y1) (binned) of the tomogram from the raw rows [lo * b, ...) of all tilts.

    The task reads its rows itself, so the graph holds one task per slab whatever the number of tilts
    and input chunks (with one task per tilt chunk the scheduler handled ~120 tasks per slab and
    spread the reads over the workers). In a distributed worker the kernel runs on one numba thread
    (thread-local setting): cryocloud's clusters run one single-threaded worker per core, so Dask
    supplies the parallelism.
    """
    if _in_distributed_worker():
        numba.set_num_threads(1)
    rows = _shift_rows(_bin(rows_in.load(), binning), lo, y0, y1, shift_y)
    return reconstruct_rows(rows, angles, thickness, spec, shift_u=shift_x)


def default_thickness(n_x: int) -> int:
    """Default z size (binned voxels): a quarter of the image width, at least 64, even."""
    return max(64, (n_x // 4) // 2 * 2)


def default_slab_rows(n_y: int, n_x: int, thickness: int, input_rows: int | None = None) -> int:
    """Rows per task: an output slab of at most ~64 MiB (4..128 rows).

    With `input_rows` (binned rows per chunk of the stored tilt series) the slab is the largest
    divisor of it within that limit, so slabs tile the input chunks and each chunk is decoded by
    as few tasks as possible (a zarr chunk is always decoded whole).
    """
    limit = int(min(n_y, max(4, min(128, SLAB_TARGET_BYTES // (4 * n_x * thickness)))))
    if input_rows is None or input_rows < 1:
        return limit
    return max(d for d in range(1, min(limit, input_rows) + 1) if input_rows % d == 0)


def reconstruct(
    ts: TiltSeries,
    *,
    thickness_px: int | None = None,
    binning: int = 1,
    filter: str = "radial",
    radial_cutoff: float = 0.35,
    radial_falloff: float = 0.035,
    sirt_iterations: int = 10,
    slab_rows: int | None = None,
    halves: str | None = None,
) -> Tomogram:
    """Lazy weighted back-projection of an aligned tilt series, or one with a stored alignment, into a Tomogram (z, y, x).

    thickness_px: z size in binned voxels (default `default_thickness`: max(64, width / 4)).
    binning: mean-pooling factor of the tilt images (voxel size = pixel size x binning).
    filter: "radial" (ramp with IMOD-like Gaussian falloff beyond `radial_cutoff`, sigma
    `radial_falloff`, both cycles/pixel of the binned images, 0.5 = Nyquist), "sirt" (that filter
    times a window equivalent to `sirt_iterations` SIRT iterations) or "none" (back-projection).
    slab_rows: binned Y rows per task (default `default_slab_rows`: <= ~64 MiB of output, tiling
    the input's Y chunks).
    halves: "even" / "odd" when `ts` is the even or odd frame sum of a tilt series (from motion
    correction); recorded on the output for half-map denoising and FSC, the maths is the same.

    The result is Dask-backed float32 chunked (thickness, slab_rows, x); nothing is computed here.
    """
    if ts.has_frames:
        raise ModelError("data", "reconstruction needs images (tilt, y, x); sum the movie frames first")
    if halves is not None and halves not in HALVES:
        raise ModelError("halves", f"expected one of {HALVES} or None, got {halves!r}")
    if int(binning) != binning or binning < 1:
        raise ModelError("binning", f"expected an integer >= 1, got {binning}")
    binning = int(binning)
    spec = FilterSpec(filter, radial_cutoff, radial_falloff, sirt_iterations)
    _, ny_raw, nx_raw = ts.data.shape
    ny, nx = ny_raw // binning, nx_raw // binning
    if ny < 1 or nx < 2:
        raise ModelError("binning", f"{binning} leaves no image from {ny_raw} x {nx_raw} pixels")
    nz = default_thickness(nx) if thickness_px is None else int(thickness_px)
    if nz < 1:
        raise ModelError("thickness_px", f"expected a positive number of voxels, got {thickness_px}")
    data = ts.data.data
    stored_axis = float(ts.tilt_axis_angle)
    apply = abs(stored_axis) > 1e-6  # a stored alignment: resampled per slab, so the input's chunks do not matter
    input_rows = data.chunks[1][0] // binning if isinstance(data, da.Array) and not apply else None
    rows = default_slab_rows(ny, nx, nz, input_rows) if slab_rows is None else int(slab_rows)
    if rows < 1:
        raise ModelError("slab_rows", f"expected a positive number of rows, got {slab_rows}")
    if apply:
        ts = apply_alignment(ts, slab_rows=rows * binning)
        data = ts.data.data
    if not isinstance(data, da.Array):  # in memory: each task gets only its own rows, not the whole array
        data = np.asarray(data)

    pixel = ts.pixel_size * binning
    angles = ts.tilt_angles
    shift_x = _per_tilt_px(ts, "shift_x", pixel)
    shift_y = _per_tilt_px(ts, "shift_y", pixel)

    pieces = []
    for y0 in range(0, ny, rows):
        y1 = min(ny, y0 + rows)
        lo = max(0, y0 + int(np.floor(shift_y.min())))
        hi = min(ny, y1 + int(np.ceil(shift_y.max())) + 1) if shift_y.any() else y1
        block = data[:, lo * binning : hi * binning, : nx * binning]
        block = block if isinstance(block, da.Array) else da.from_array(block, chunks=-1)
        task = dask.delayed(_slab, pure=True)(_Rows(block), lo, y0, y1, binning, angles, shift_x, shift_y, nz, spec)
        pieces.append(da.from_delayed(task, shape=(nz, y1 - y0, nx), dtype=np.float32))
    volume = da.concatenate(pieces, axis=1)

    name = "tomogram" if halves is None else f"tomogram_{halves}"
    tomo = Tomogram.from_array(volume, pixel_size=pixel, microscope=ts.microscope, tilt_angles=angles, name=name)
    tomo.data.attrs["reconstruction"] = {
        "method": "weighted back-projection",
        "filter": spec.kind,
        "radial_cutoff": spec.radial_cutoff,
        "radial_falloff": spec.radial_falloff,
        "sirt_iterations": spec.sirt_iterations if spec.kind == "sirt" else None,
        "binning": binning,
        "thickness_px": nz,
        "half": halves,
        "applied_alignment_axis_deg": stored_axis if apply else None,
    }
    defocus = mean_defocus(ts)
    if defocus is not None:
        tomo.data.attrs["reconstruction"]["defocus_a"] = tomo.data.attrs["defocus_a"] = defocus
    return tomo


def mean_defocus(ts: TiltSeries) -> float | None:
    """Mean defocus (A, underfocus > 0) of a tilt series: (defocus_u + defocus_v) / 2 averaged over all
    tilts (each tilt's defocus is the one at its tilt axis, the same specimen height, so every tilt
    estimates it); None when the series has no defocus."""
    u, v = ts.per_tilt("defocus_u"), ts.per_tilt("defocus_v")
    if u is None:
        return None
    return float(np.mean(0.5 * (u + (u if v is None else v))))


def _per_tilt_px(ts: TiltSeries, name: str, pixel_a: float) -> np.ndarray:
    values = ts.per_tilt(name)
    return np.zeros(ts.n_tilts) if values is None else np.asarray(values, dtype=np.float64) / pixel_a


def slab_task_bytes(ts: TiltSeries, tomo: Tomogram) -> int:
    """Peak memory (bytes) of the largest slab task of `tomo = reconstruct(ts, ...)`: the largest of its steps,
    reading (one stored chunk decoded, the raw rows twice while the pieces read are joined), binning (the raw
    rows and the float64 pooling), filtering (the binned rows and three arrays of the padded row length:
    padded rows, spectrum, filtered) and back-projecting (binned rows, filtered, their transposed copy, one z
    block of the kernel's accumulator and the output slab). Within 15 % of tracemalloc's peak (tests)."""
    nz, _, nx = tomo.shape
    rows = max(tomo.data.data.chunks[1])
    binning = int(tomo.data.attrs["reconstruction"]["binning"])
    shift_y = _per_tilt_px(ts, "shift_y", tomo.pixel_size)
    margin = int(np.ceil(shift_y.max()) - np.floor(shift_y.min())) + 1 if shift_y.any() else 0
    itemsize = ts.data.dtype.itemsize
    chunk = int(np.prod(ts.data.data.chunksize)) * itemsize if isinstance(ts.data.data, da.Array) else 0
    raw = ts.n_tilts * (rows + margin) * binning * nx * binning * itemsize
    binned = ts.n_tilts * rows * nx * 4
    padded = binned * padded_length(nx) // nx
    reading = 2 * raw + chunk
    pooling = raw + 5 * binned if binning > 1 else 0
    filtering = binned + 3 * padded
    backprojecting = 2 * binned + padded + 4 * (Z_BLOCK + nz) * rows * nx
    return int(max(reading, pooling, filtering, backprojecting))
