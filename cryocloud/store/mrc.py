"""MRC files (mrcfile): lazy reads, chunk-streamed writes, tilt-series stacks with their angles.

Arrays are indexed (z, y, x) (MRC sections, rows, columns); the voxel size (A) comes from the
header. Local files are read lazily: each Dask chunk (a slab of whole sections) opens the file
memory-mapped and copies its slab. Remote files (s3://) are downloaded whole into memory.
Writes go to ``<name>.partial`` first and are renamed when complete (local; a failed write removes
it), or uploaded after (remote), so a reader never sees a half-written MRC. Each Dask block is
written by the worker that computes it, through its own memory map of the file (`MrcSlabWriter`).
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import dask.array as da
import mrcfile
import numpy as np
import xarray as xr

from cryocloud.errors import ModelError, OutputExistsError, StoreError
from cryocloud.model import Microscope, TiltSeries, Tomogram
from cryocloud.progress import compute
from cryocloud.store.guard import refuse_input_overlap
from cryocloud.store.images import source_locations
from cryocloud.store.location import Location, resolve
from cryocloud.store.ngff import all_finite
from cryocloud.store.mdoc import Mdoc, read_mdoc
from cryocloud.store.tiltfiles import read_tlt

SLAB_BYTES = 64 * 2**20


class MrcSlabReader:
    """Array-like over a local MRC file for `dask.array.from_array`; opens the file per read (picklable)."""

    def __init__(self, location: Location, shape: tuple[int, ...], dtype: np.dtype):
        self.location = location
        self.shape = shape
        self.dtype = dtype
        self.ndim = len(shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        with _open_mrc(self.location) as mrc:
            return _finite(np.array(mrc.data.reshape(self.shape)[key]), self.location.url)


class MrcSlabWriter:
    """Target for `dask.array.store` into a local MRC file laid out by `mrcfile.new_mmap`: each write
    maps the file's data block (mode r+, never creating it) in the process that runs it, so Dask
    workers (threads or processes sharing the filesystem) write into the file itself; picklable.
    (A memory map handed to process workers would be pickled as an in-memory copy, and lost.)"""

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype, offset: int):
        self.path = path
        self.shape = shape
        self.dtype = dtype
        self.offset = offset
        self.ndim = len(shape)

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        data = np.memmap(self.path, dtype=self.dtype, mode="r+", offset=self.offset, shape=self.shape)
        data[key] = value
        data.flush()
        del data


def _finite(block: np.ndarray, url: str) -> np.ndarray:
    if not all_finite(block):
        raise StoreError(url, "contains NaN or infinite values; expected finite numbers", field="data")
    return block


def _open_mrc(loc: Location) -> Any:
    """An open MRC object (memory-mapped when local). Old files without the MAP id are accepted;
    unreadable or truncated files raise StoreError with mrcfile's complaints."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if loc.is_local:
                if not os.path.isfile(loc.path):
                    raise StoreError(loc.url, "does not exist")
                mrc = mrcfile.mmap(loc.path, mode="r", permissive=True)
            else:
                fs = loc.filesystem()
                if not fs.isfile(loc.path):
                    raise StoreError(loc.url, "does not exist")
                mrc = mrcfile.mrcinterpreter.MrcInterpreter(io.BytesIO(fs.cat_file(loc.path)), permissive=True)
        except StoreError:
            raise
        except (ValueError, OSError, EOFError) as exc:
            raise StoreError(loc.url, f"is not a readable MRC file: {exc}") from exc
    if mrc.header is None or mrc.data is None:
        problems = "; ".join(str(w.message) for w in caught) or "no header or data"
        mrc.close()
        raise StoreError(loc.url, f"is not a readable MRC file: {problems}")
    return mrc


def _open_header(loc: Location) -> tuple[Any, Any]:
    """(header, data or None) of an MRC; data only for remote files (downloaded)."""
    mrc = _open_mrc(loc)
    try:
        return mrc.header.copy(), None if loc.is_local else np.array(mrc.data)
    finally:
        mrc.close()


def _voxel_size(loc: Location, header: Any, override: float | None) -> float:
    if override is not None:
        return float(override)
    mx = int(header.mx) or 1
    px = float(header.cella.x) / mx
    if not np.isfinite(px) or px <= 0:
        raise StoreError(loc.url, "header voxel size is 0 (unknown); pass pixel_size (A)", field="voxel_size")
    return px


def read_mrc(url: str | os.PathLike, *, pixel_size: float | None = None, storage_options: dict | None = None) -> Tomogram:
    """Lazily read an MRC volume or stack as a Tomogram (z, y, x); a 2D image gives z = 1.

    The voxel size (A) is the header's unless `pixel_size` is given; StoreError when neither. A
    stack of volumes (4D, space group 401-630) is a StoreError: it is neither a volume nor an image stack.
    """
    loc = resolve(url, storage_options)
    header, data = _open_header(loc)
    stored = mrcfile.utils.data_shape_from_header(header)
    if len(stored) == 4:
        raise StoreError(loc.url, f"holds a stack of {stored[0]} volumes, shape {stored} (4D, space group {int(header.ispg)}); "
                         "expected one volume or image stack (z, y, x)", field="shape")
    shape = (int(header.nz), int(header.ny), int(header.nx))
    px = _voxel_size(loc, header, pixel_size)
    if data is None:
        dtype = mrcfile.utils.dtype_from_mode(header.mode).newbyteorder("=")
        per_section = shape[1] * shape[2] * dtype.itemsize
        chunks = (max(1, min(shape[0], SLAB_BYTES // per_section)), shape[1], shape[2])
        name = f"read-mrc-{da.core.tokenize(loc.url, os.path.getmtime(loc.path), shape)}"
        array = da.from_array(MrcSlabReader(loc, shape, dtype), chunks=chunks, name=name, asarray=False, fancy=False)
    else:
        array = da.from_array(_finite(data.reshape(shape), loc.url), chunks=(1, shape[1], shape[2]))
    try:
        tomo = Tomogram.from_array(array, pixel_size=px, name=loc.name)
    except ModelError as exc:
        raise StoreError(loc.url, exc.problem, field=exc.field) from exc
    tomo.data.attrs["source"] = loc.url
    return tomo


def read_tilt_series_mrc(
    url: str | os.PathLike,
    *,
    tilt_angles: str | os.PathLike | Sequence[float] | None = None,
    mdoc: str | os.PathLike | Mdoc | None = None,
    pixel_size: float | None = None,
    exposure: float | None = None,
    microscope: Microscope | None = None,
    tilt_axis_angle: float | None = None,
    storage_options: dict | None = None,
) -> TiltSeries:
    """A tilt-series stack (tilt, y, x) with its angles from a .tlt/.rawtlt file (or a list) or an mdoc.

    With `mdoc`, angles, doses, acquisition order, tilt axis and pixel size come from it (see
    `Mdoc.to_tilt_series`); with `tilt_angles`, images are taken in acquisition order = stack
    order, with `exposure` (e/A^2 per tilt, default 0) and the header's pixel size.
    """
    if (tilt_angles is None) == (mdoc is None):
        raise StoreError(str(url), "give exactly one of tilt_angles (.tlt/.rawtlt or a list) or mdoc", field="tilt_angles")
    if mdoc is not None:
        parsed = mdoc if isinstance(mdoc, Mdoc) else read_mdoc(mdoc, storage_options=storage_options)
        stack = read_mrc(url, pixel_size=pixel_size or _agreed_pixel_size(url, parsed, storage_options), storage_options=storage_options)
        ts = parsed.to_tilt_series(stack, pixel_size=stack.pixel_size, microscope=microscope, exposure=exposure)
        return ts if tilt_axis_angle is None else TiltSeries(ts.data, ts.microscope, float(tilt_axis_angle))
    stack = read_mrc(url, pixel_size=pixel_size, storage_options=storage_options)
    if isinstance(tilt_angles, (str, os.PathLike)):
        angles, source = read_tlt(tilt_angles, storage_options=storage_options), os.fspath(tilt_angles)
    else:
        angles, source = np.asarray(tilt_angles, dtype=np.float64), "tilt_angles"
    if angles.size != stack.data.shape[0]:
        raise StoreError(source, f"has {angles.size} angles but {stack.data.shape[0]} images in {resolve(url).url}", field="tilt_angle")
    try:
        ts = TiltSeries.from_array(
            stack.data.data, tilt_angles=angles, pixel_size=stack.pixel_size, exposure=exposure or 0.0,
            microscope=microscope, tilt_axis_angle=tilt_axis_angle or 0.0, name=str(stack.data.name),
        )
    except ModelError as exc:
        raise StoreError(str(url), exc.problem, field=exc.field) from exc
    return ts


def _agreed_pixel_size(url: str | os.PathLike, parsed: Mdoc, storage_options: dict | None) -> float | None:
    """The pixel size (A) the mdoc's PixelSpacing and the MRC header agree on (either when one is
    unset); StoreError when they differ by more than 1 %."""
    header_px = mrc_info(url, storage_options=storage_options)["pixel_size"]
    mdoc_px = parsed.pixel_size
    if header_px and mdoc_px and abs(header_px - mdoc_px) > 0.01 * mdoc_px:
        raise StoreError(
            parsed.source, f"PixelSpacing {mdoc_px:g} A contradicts the pixel size {header_px:g} A in the header of {resolve(url).url}; "
            "pass the pixel size (A) to choose", field="PixelSpacing",
        )
    return mdoc_px or header_px


def mrc_info(url: str | os.PathLike, *, storage_options: dict | None = None) -> dict:
    """Header summary of an MRC file: shape (z, y, x), dtype, voxel size (A, None when unset)."""
    loc = resolve(url, storage_options)
    header, _ = _open_header(loc)
    px = float(header.cella.x) / (int(header.mx) or 1)
    return {
        "url": loc.url,
        "format": "MRC",
        "shape": [int(header.nz), int(header.ny), int(header.nx)],
        "dtype": str(mrcfile.utils.dtype_from_mode(header.mode).newbyteorder("=")),
        "pixel_size": px if px > 0 else None,
        "exttyp": header.exttyp.tobytes().decode(errors="replace").strip("\x00 "),
    }


def _as_volume(obj: Any, pixel_size: float | None) -> tuple[da.Array, float]:
    data = obj.data if isinstance(obj, (Tomogram, TiltSeries)) else obj
    px = pixel_size
    if isinstance(data, xr.DataArray):
        if px is None:
            px = obj.pixel_size if isinstance(obj, (Tomogram, TiltSeries)) else float(data.attrs.get("pixel_size", 0)) or None
        data = data.data
    if px is None:
        raise StoreError("write_mrc", "the pixel size is unknown; pass pixel_size (A)", field="pixel_size")
    array = data if isinstance(data, da.Array) else da.from_array(np.asarray(data))
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise StoreError("write_mrc", f"expected a (z, y, x) or (tilt, y, x) array, got shape {array.shape}", field="dims")
    return array, float(px)


def write_mrc(
    obj: Tomogram | TiltSeries | xr.DataArray | np.ndarray | da.Array,
    url: str | os.PathLike,
    *,
    pixel_size: float | None = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> None:
    """Write a volume or stack (z, y, x) as MRC with its voxel size (A), streaming Dask chunks.

    float64 data are stored as float32 (MRC has no float64 mode). Refuses to overwrite existing
    files unless `overwrite`, and never writes onto an input of `obj`.
    """
    loc = resolve(url, storage_options)
    loc.require_writable()
    array, px = _as_volume(obj, pixel_size)
    refuse_input_overlap([loc], source_locations(array))  # the images the lazy data are read from
    if loc.exists() and not overwrite:
        raise OutputExistsError(f"{loc.url}: exists already; pass overwrite=True (--overwrite) to replace it")
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if loc.is_local:
        Path(loc.path).parent.mkdir(parents=True, exist_ok=True)
        partial = loc.path + ".partial"
        try:
            _write_local(array, partial, px, loc.url)
        except BaseException:
            Path(partial).unlink(missing_ok=True)  # a failed write leaves nothing behind
            raise
        os.replace(partial, loc.path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, loc.name or "volume.mrc")
        _write_local(array, local, px, loc.url)
        loc.filesystem().put_file(local, loc.path)


def _write_local(array: da.Array, path: str, px: float, url: str) -> None:
    try:
        mode = mrcfile.utils.mode_from_dtype(np.dtype(array.dtype))
    except ValueError as exc:
        raise StoreError(url, f"dtype {array.dtype} has no MRC mode: {exc}", field="dtype") from exc
    with mrcfile.new_mmap(path, shape=array.shape, mrc_mode=int(mode), overwrite=True) as mrc:
        target = MrcSlabWriter(path, array.shape, mrc.data.dtype, mrc.header.nbytes + int(mrc.header.nsymbt))
    # disjoint blocks; dask annotates targets as numpy ArrayLike, but documents (and uses) any object with __setitem__
    stored = da.store(array, target, lock=False, compute=False)  # type: ignore[arg-type]
    compute(stored, description=f"writing {url}")
    with mrcfile.mmap(path, mode="r+") as mrc:
        mrc.voxel_size = px
        mrc.update_header_stats()
