"""OME-Zarr multiscale images: safe, resumable writes and lazy, chunk-exact reads.

Layout of one image (a zarr group):
- arrays ``"0"``, ``"1"``, ... : level n is level n-1 mean-pooled (max-pooled for labels) by 2 along the binned
  (spatial) axes, trimming an odd last voxel; non-spatial axes (tilt) are never binned.
- ``multiscales`` (NGFF 0.4, zarr format 2, the default) or ``ome.multiscales`` (NGFF 0.5, zarr
  format 3) with a scale AND a translation per level: level n voxel j averages level-0 voxels
  j*f .. j*f+f-1 (f = 2**n), so its centre is at (j*f + (f-1)/2) * pixel_size, i.e.
  scale = f * pixel_size and translation = (f - 1) / 2 * pixel_size (Angstrom).

Write order (a reader never mistakes a half-written image for a complete one):
1. group and array metadata; 2. level-0 chunks (one Dask task per Dask chunk; Dask chunks tile the
zarr chunks, so no two tasks write the same chunk); 3. each further level from the STORED level
above it; 4. the group attributes (multiscales + the caller's blocks) LAST: their presence marks
the image complete. Re-running after an interruption writes only the blocks with a missing chunk.

Reads are lazy: a Dask array whose tasks read only the zarr chunks they cover; a chunk that
cannot be decoded raises StoreError naming the chunk.

Completeness (nothing lost is ever read as zeros): cryocloud stores every chunk, empty ones too, and
writes a completion record (`COMPLETION_KEY`: the number of chunks of each level) with the multiscales,
last. An image that carries it is strict: reading any level lists the chunks of every level (one listing
request per level and 1000 chunks on object storage) and a missing one is a StoreError naming the array
and the chunk key, wherever it lies.
Float arrays are created with fill value NaN, so a chunk lost after that listing reads as NaN, which
every read refuses, and is then reported as missing. Images cryocloud did not write (the CryoET Data
Portal's, ome-zarr-py's) follow the zarr specification: a chunk that is not stored holds the array's
fill value (writers skip empty chunks), so their missing chunks cannot be told from empty ones;
`image_info` reports how many are stored.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

import dask
import dask.array as da
import numpy as np
import zarr

from cryocloud.errors import OutputExistsError, StoreError
from cryocloud.progress import compute
from cryocloud.store.guard import refuse_input_overlap
from cryocloud.store.location import Location, describe_os_error, os_errors_as_store_errors, transport_errors

UNIT_TO_ANGSTROM = {"angstrom": 1.0, "nanometer": 10.0, "micrometer": 1e4, "picometer": 0.01, "meter": 1e10}
ZarrFormat = Literal[2, 3]
NGFF_VERSIONS: dict[str, ZarrFormat] = {"0.4": 2, "0.5": 3}
TOMOGRAM_CHUNK_BYTES = 8 * 2**20
TILT_SLAB_ROWS = 256
TILT_CHUNK_BYTES = 8 * 2**20
READ_CHUNK_BYTES = 32 * 2**20
#: group attribute written last with the multiscales: {"version": 1, "chunks_per_level": [n0, n1, ...]}
COMPLETION_KEY = "cryocloud_completion"


# ----------------------------------------------------------------------------------------- layout
def default_chunks(shape: Sequence[int], itemsize: int, binned: Sequence[bool]) -> tuple[int, ...]:
    """Default zarr chunks for an image of `shape` (see the rules below).

    Volumes (all axes binned, z, y, x): cubes with the largest power-of-two edge whose
    uncompressed size is at most 8 MiB (128^3 for float32 and uint8, 64^3 for float64), clipped to
    the shape;
    template matching and viewers read cubes.
    Tilt series (tilt, y, x): one tilt per chunk, Y slabs of 256 rows by the full width, fewer
    rows when a slab would exceed 8 MiB (and the width is split only when one row does):
    reconstruction reads the same Y rows of every tilt.
    """
    shape = tuple(int(n) for n in shape)
    if all(binned):
        edge = 1
        while (2 * edge) ** len(shape) * itemsize <= TOMOGRAM_CHUNK_BYTES:
            edge *= 2
        return tuple(min(n, edge) for n in shape)
    *lead, ny, nx = shape
    row_bytes = nx * itemsize
    cx = nx if row_bytes <= TILT_CHUNK_BYTES else max(1, TILT_CHUNK_BYTES // itemsize)
    cy = max(1, min(ny, TILT_SLAB_ROWS, TILT_CHUNK_BYTES // (cx * itemsize)))
    return tuple([1] * len(lead) + [cy, cx])


def read_chunks(shape: Sequence[int], zarr_chunks: Sequence[int], itemsize: int, limit: int = READ_CHUNK_BYTES) -> tuple[int, ...]:
    """Dask chunks for lazy reads: whole zarr chunks, doubled axis by axis (outermost first) up to `limit` bytes.

    A task reading several chunk objects fetches them concurrently (zarr's async I/O), which
    hides object-store latency; each Dask chunk covers whole zarr chunks.
    """
    chunks = [min(int(c), int(n)) for c, n in zip(zarr_chunks, shape)]
    grown = True
    while grown:
        grown = False
        for axis, n in enumerate(shape):
            if chunks[axis] < n and math.prod(chunks) * 2 * itemsize <= limit:
                chunks[axis] = min(2 * chunks[axis], int(n))
                grown = True
    return tuple(chunks)


def pyramid_shapes(shape: Sequence[int], binned: Sequence[bool], levels: int) -> list[tuple[int, ...]]:
    """Shapes of up to `levels` levels (factor 2 along binned axes); stops before a binned axis would vanish."""
    if levels < 1:
        raise StoreError("levels", f"expected at least 1 pyramid level, got {levels}", field="levels")
    shapes = [tuple(int(n) for n in shape)]
    while len(shapes) < levels:
        nxt = tuple(n // 2 if b else n for n, b in zip(shapes[-1], binned))
        if min(n for n, b in zip(nxt, binned) if b) < 1:
            break
        shapes.append(nxt)
    return shapes


def level_transforms(level: int, pixel_size: float, binned: Sequence[bool]) -> list[dict]:
    """NGFF coordinateTransformations of a level: scale = f * px, translation = (f - 1)/2 * px (A)."""
    f = 2**level
    scale = [f * pixel_size if b else 1.0 for b in binned]
    translation = [(f - 1) / 2 * pixel_size if b else 0.0 for b in binned]
    return [{"type": "scale", "scale": scale}, {"type": "translation", "translation": translation}]


def multiscales_attrs(
    axes: list[dict], n_levels: int, pixel_size: float, binned: Sequence[bool], ngff_version: str, name: str, pooling: str = "mean"
) -> dict:
    """Group attributes holding the NGFF multiscales for `ngff_version` ("0.4" or "0.5")."""
    multiscale: dict[str, Any] = {
        "name": name,
        "axes": axes,
        "datasets": [
            {"path": str(n), "coordinateTransformations": level_transforms(n, pixel_size, binned)} for n in range(n_levels)
        ],
        "type": pooling,
        "metadata": {"description": f"{pooling} pooling by 2 along spatial axes, odd last voxel trimmed"},
    }
    if ngff_version == "0.4":
        return {"multiscales": [{"version": "0.4", **multiscale}]}
    return {"ome": {"version": "0.5", "multiscales": [multiscale]}}


def _compressors(zarr_format: ZarrFormat):
    if zarr_format == 2:
        from numcodecs import Blosc

        return Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE)
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


# ------------------------------------------------------------------------------------------ reads
def _chunk_keys(array: zarr.Array, key: tuple) -> list[str]:
    """Chunk keys (relative to the array) of the chunks touched by a tuple of slices."""
    ranges = []
    for sl, n, c in zip(key, array.shape, array.chunks):
        start, stop, _ = sl.indices(n) if isinstance(sl, slice) else (int(sl), int(sl) + 1, 1)
        ranges.append(range(start // c, max(start // c + 1, math.ceil(stop / c))))
    return [array.metadata.encode_chunk_key(idx) for idx in itertools.product(*ranges)]


def all_chunk_keys(array: zarr.Array) -> list[str]:
    """Every chunk key (relative to the array) of the array's chunk grid."""
    return _chunk_keys(array, tuple(slice(0, n) for n in array.shape))


def missing_chunk_keys(array: zarr.Array, location: Location, array_path: str, keys: Sequence[str] | None = None) -> list[str]:
    """The chunk keys of `keys` (default: the whole grid) that are not stored."""
    stored = _existing_chunk_keys(location, array_path)
    return [k for k in (all_chunk_keys(array) if keys is None else keys) if k not in stored]


def missing_chunks_error(url: str, missing: Sequence[str]) -> StoreError:
    """The StoreError for lost chunks of the array at `url`."""
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    return StoreError(
        f"{url}/{missing[0]}",
        f"chunk {missing[0]}{more} of {url} is missing: the image was written with every chunk stored, so these data are lost "
        "(never read as zeros); restore them or rewrite the image",
        field="chunk",
    )


class ChunkReader:
    """Array-like over a zarr array for `dask.array.from_array`; read errors become StoreError."""

    def __init__(self, array: zarr.Array, location: Location, array_path: str):
        self.array = array
        self.location = location
        self.array_path = array_path
        self.url = f"{location.url}/{array_path}"
        self.shape = array.shape
        self.dtype = array.dtype
        self.ndim = array.ndim

    def _chunks_named(self, key: tuple) -> tuple[str, str]:
        """(source, shown chunk keys) of the chunks a selection touches, for messages."""
        chunks = _chunk_keys(self.array, key) if all(isinstance(k, (slice, int)) for k in key) else []
        shown = ", ".join(chunks[:4]) + (" ..." if len(chunks) > 4 else "")
        return (f"{self.url}/{shown}" if len(chunks) == 1 else self.url), shown

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        try:
            block = np.asarray(self.array[key])
        except Exception as exc:  # any codec / transport failure: report which chunks were involved
            source, shown = self._chunks_named(key)
            if isinstance(exc, transport_errors()) and not isinstance(exc, StoreError):
                raise StoreError(source, f"chunk(s) [{shown}] cannot be read: {describe_os_error(exc)}", field="chunk") from exc
            raise StoreError(
                source, f"chunk(s) [{shown}] cannot be read ({type(exc).__name__}: {exc}); the data are truncated or corrupt", field="chunk"
            ) from exc
        if not all_finite(block):
            touched = _chunk_keys(self.array, key) if all(isinstance(k, (slice, int)) for k in key) else []
            missing = missing_chunk_keys(self.array, self.location, self.array_path, touched) if touched else []
            if missing:
                raise missing_chunks_error(self.url, missing)
            source, shown = self._chunks_named(key)
            raise StoreError(source, f"chunk(s) [{shown}] contain NaN or infinite values; expected finite numbers", field="chunk")
        return block


def all_finite(block: np.ndarray) -> bool:
    """True unless a floating-point block holds NaN or +-inf (integer data are always finite)."""
    return not np.issubdtype(block.dtype, np.inexact) or bool(np.isfinite(block).all())


@dataclass(frozen=True)
class NgffImage:
    """An opened (complete) OME-Zarr multiscale image."""

    location: Location
    group: zarr.Group
    ngff_version: str
    axes: list[dict]
    dataset_paths: list[str]
    transforms: list[list[dict]]
    attrs: dict

    @property
    def url(self) -> str:
        return self.location.url

    @property
    def axis_names(self) -> tuple[str, ...]:
        return tuple(str(a.get("name")) for a in self.axes)

    @property
    def n_levels(self) -> int:
        return len(self.dataset_paths)

    def zarr_array(self, level: int = 0) -> zarr.Array:
        if not 0 <= level < self.n_levels:
            raise StoreError(self.url, f"has levels 0..{self.n_levels - 1}, level {level} was asked for", field="level")
        path = self.dataset_paths[level]
        try:
            arr = self.group[path]
        except KeyError:
            raise StoreError(self.url, f"dataset '{path}' named in multiscales does not exist", field="multiscales.datasets") from None
        if not isinstance(arr, zarr.Array):
            raise StoreError(self.url, f"dataset '{path}' is a group, expected an array", field="multiscales.datasets")
        if arr.ndim != len(self.axes):
            raise StoreError(self.url, f"dataset '{path}' has {arr.ndim} dims but {len(self.axes)} axes", field="multiscales.axes")
        return arr

    def dask_array(self, level: int = 0, chunks: Any = None) -> da.Array:
        """Lazy Dask array of a level.

        `chunks`: None (default) gives one Dask chunk per zarr chunk, so any selection reads
        exactly the chunk objects it overlaps; "auto" gives `read_chunks` (several zarr chunks
        per task, fetched concurrently: faster bulk reads from object stores, but a selection
        reads whole Dask chunks); or explicit Dask chunks.
        """
        arr = self.zarr_array(level)
        self.require_all_chunks()
        reader = ChunkReader(arr, self.location, self.dataset_paths[level])
        name = f"read-ngff-{dask.base.tokenize(self.url, level, arr.shape, str(arr.dtype), arr.chunks, chunks)}"
        if chunks is None:
            chunks = arr.chunks
        elif isinstance(chunks, str) and chunks == "auto":
            chunks = read_chunks(arr.shape, arr.chunks, arr.dtype.itemsize)
        return da.from_array(reader, chunks=chunks, name=name, asarray=False, fancy=False)

    @property
    def is_strict(self) -> bool:
        """True when the image carries cryocloud's completion record: every chunk of it must be stored."""
        return COMPLETION_KEY in self.attrs

    def require_all_chunks(self) -> None:
        """StoreError naming the first missing chunk of a strict image, at any level (nothing for other images):
        data lost anywhere in an input is reported, not only in the level read."""
        if not self.is_strict:
            return
        for level, path in enumerate(self.dataset_paths):
            with os_errors_as_store_errors(self.url, "listed"):
                missing = missing_chunk_keys(self.zarr_array(level), self.location, path)
            if missing:
                raise missing_chunks_error(f"{self.url}/{path}", missing)

    def scale_translation(self, level: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Scale and translation of a level in Angstrom for spatial axes (unit-converted)."""
        scale = None
        translation = np.zeros(len(self.axes))
        try:
            for t in self.transforms[level]:
                if t.get("type") == "scale":
                    scale = np.asarray(t["scale"], dtype=np.float64).reshape(len(self.axes))
                elif t.get("type") == "translation":
                    translation = np.asarray(t["translation"], dtype=np.float64).reshape(len(self.axes))
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(self.url, f"level {level}: malformed coordinateTransformations ({exc})", field="pixel_size") from exc
        spatial = [i for i, a in enumerate(self.axes) if a.get("type") == "space"]
        if scale is None or not all(np.isfinite(scale[i]) and scale[i] > 0 for i in spatial):
            raise StoreError(
                self.url, f"level {level} has no positive scale transform on its spatial axes (the pixel size is missing)", field="pixel_size"
            )
        factor = np.array([_unit_factor(self.url, a) for a in self.axes])
        return scale * factor, translation * factor


def _unit_factor(url: str, axis: dict) -> float:
    if axis.get("type") != "space":
        return 1.0
    unit = axis.get("unit") or "angstrom"
    if unit not in UNIT_TO_ANGSTROM:
        raise StoreError(url, f"axis '{axis.get('name')}' has unit '{unit}', expected one of {sorted(UNIT_TO_ANGSTROM)}", field="multiscales.axes.unit")
    return UNIT_TO_ANGSTROM[unit]


def _open_group(loc: Location, mode: Literal["r", "r+", "a"] = "r") -> zarr.Group | None:
    """The zarr group at `loc`, or None when there is none."""
    try:
        return zarr.open_group(store=loc.zarr_store(read_only=mode == "r"), mode=mode, use_consolidated=False)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return None
    except KeyError:
        return None
    except StoreError:
        raise
    except transport_errors() as exc:  # missing bucket, permission, network (after retries)
        raise StoreError(loc.url, f"cannot be opened: {describe_os_error(exc)}") from exc


def multiscales_of(attrs: dict) -> tuple[str, list] | None:
    """(ngff_version, multiscales list) from group attributes, or None when there are none."""
    if isinstance(attrs.get("ome"), dict) and "multiscales" in attrs["ome"]:
        return str(attrs["ome"].get("version", "0.5")), attrs["ome"]["multiscales"]
    if "multiscales" in attrs:
        ms = attrs["multiscales"]
        version = str(ms[0].get("version", "0.4")) if isinstance(ms, list) and ms and isinstance(ms[0], dict) else "0.4"
        return version, ms
    return None


def open_image(loc: Location) -> NgffImage:
    """Open the OME-Zarr image at `loc`; StoreError when missing, incomplete or not NGFF."""
    group = _open_group(loc, "r")
    if group is None:
        if loc.exists():
            raise StoreError(loc.url, "exists but is not a zarr group (expected an OME-Zarr image)")
        raise StoreError(loc.url, "does not exist")
    attrs = dict(group.attrs)
    found = multiscales_of(attrs)
    if found is None:
        if any(True for _ in group.array_keys()):
            raise StoreError(
                loc.url,
                "is an incomplete image: its arrays exist but the multiscales metadata (written last) do not; "
                "the write was interrupted? rerun it to resume",
                field="multiscales",
            )
        raise StoreError(loc.url, "is a zarr group without NGFF multiscales metadata (not an OME-Zarr image)", field="multiscales")
    version, multiscales = found
    try:
        ms = multiscales[0]
        axes = [a if isinstance(a, dict) else {"name": a} for a in ms["axes"]]
        paths = [d["path"] for d in ms["datasets"]]
        transforms = [list(d.get("coordinateTransformations", [])) for d in ms["datasets"]]
        if not paths:
            raise ValueError("no datasets")
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise StoreError(loc.url, f"malformed NGFF multiscales ({type(exc).__name__}: {exc})", field="multiscales") from exc
    return NgffImage(loc, group, version, axes, paths, transforms, attrs)


# ----------------------------------------------------------------------------------------- writes
def _tiling_chunks(data: da.Array, zchunks: tuple[int, ...]) -> da.Array:
    """`data` rechunked (only if needed) so that every Dask chunk is a union of whole zarr chunks."""
    aligned = all(
        all(c % z == 0 for c in dims[:-1]) for dims, z in zip(data.chunks, zchunks)
    )
    if aligned:
        return data
    target = tuple(max(1, round(max(dims) / z)) * z for dims, z in zip(data.chunks, zchunks))
    return data.rechunk(target)


def _existing_chunk_keys(loc: Location, array_path: str) -> set[str]:
    """Chunk keys (relative to the array) already stored."""
    fs = loc.filesystem()
    root = f"{loc.path.rstrip('/')}/{array_path}"
    try:
        found = fs.find(root)
    except FileNotFoundError:
        return set()
    prefix = root.lstrip("/") + "/"
    keys = set()
    for f in found:
        rel = f.lstrip("/")[len(prefix):] if f.lstrip("/").startswith(prefix) else f
        # zarr metadata, and the temporary files of local writes a killed process left behind
        if not rel.startswith(".") and not rel.endswith((".json", ".partial")) and rel != "zarr.json":
            keys.add(rel)
    return keys


def _store_block(block: np.ndarray, array: zarr.Array, region: tuple[slice, ...]) -> int:
    array[region] = np.asarray(block, dtype=array.dtype)
    return 1


def _block_regions(data: da.Array) -> Iterable[tuple[tuple[int, ...], tuple[slice, ...]]]:
    offsets = [np.concatenate([[0], np.cumsum(c)]) for c in data.chunks]
    for idx in itertools.product(*(range(len(c)) for c in data.chunks)):
        yield idx, tuple(slice(int(o[i]), int(o[i + 1])) for o, i in zip(offsets, idx))


def write_level(data: da.Array, array: zarr.Array, loc: Location, array_path: str, *, description: str) -> int:
    """Store `data` into the pre-created `array`, writing only blocks with a missing chunk.

    Returns the number of Dask blocks written.
    """
    data = _tiling_chunks(data, array.chunks)
    existing = _existing_chunk_keys(loc, array_path)
    todo = [
        (idx, region)
        for idx, region in _block_regions(data)
        if not existing or not set(_chunk_keys(array, region)) <= existing
    ]
    if not todo:
        return 0
    blocks = data.to_delayed(optimize_graph=True)
    tasks = [dask.delayed(_store_block)(blocks[idx], array, region) for idx, region in todo]
    compute(*tasks, description=description)
    return len(todo)


POOLINGS = ("mean", "max")


def _pool(block: np.ndarray, binned: tuple[bool, ...], dtype: np.dtype, pooling: str = "mean") -> np.ndarray:
    shape = []
    for n, b in zip(block.shape, binned):
        shape.extend([n // 2, 2] if b else [n, 1])
    if pooling == "max":  # label images: a voxel keeps a label of the 2^d it covers (the largest id), never an average
        return block.reshape(shape).max(axis=tuple(range(1, 2 * block.ndim, 2))).astype(dtype, copy=False)
    mean = block.reshape(shape).mean(axis=tuple(range(1, 2 * block.ndim, 2)), dtype=np.float64)
    if np.issubdtype(dtype, np.integer):
        mean = np.rint(mean)
    return mean.astype(dtype, copy=False)


def downsample(stored: da.Array, binned: tuple[bool, ...], out_chunks: tuple[int, ...], pooling: str = "mean") -> da.Array:
    """Pool a stored level by 2 along binned axes ("mean"; "max" for labels); output Dask chunks equal `out_chunks`."""
    trimmed = stored[tuple(slice(0, (n // 2) * 2) if b else slice(None) for n, b in zip(stored.shape, binned))]
    src = trimmed.rechunk(tuple(c * 2 if b else c for c, b in zip(out_chunks, binned)))
    out_block_chunks = tuple(tuple(c // 2 for c in dims) if b else dims for dims, b in zip(src.chunks, binned))
    return src.map_blocks(_pool, binned, stored.dtype, pooling, chunks=out_block_chunks, dtype=stored.dtype)


def prepare_output(loc: Location, *, overwrite: bool, zarr_format: ZarrFormat) -> zarr.Group:
    """The group to write into: new, or an interrupted one to resume; complete ones need `overwrite`."""
    group = _open_group(loc, "r")
    if group is not None and group.metadata.zarr_format != zarr_format and not overwrite:
        raise OutputExistsError(
            f"{loc.url}: an interrupted zarr format {group.metadata.zarr_format} image exists; "
            f"writing format {zarr_format} needs overwrite=True"
        )
    if group is not None and multiscales_of(dict(group.attrs)) is not None and not overwrite:
        raise OutputExistsError(f"{loc.url}: a complete image exists already; pass overwrite=True (--overwrite) to replace it")
    if group is None and loc.exists() and not overwrite:
        fs = loc.filesystem()
        if not fs.isdir(loc.path) or fs.ls(loc.path):
            raise OutputExistsError(f"{loc.url}: exists and is not an OME-Zarr image; refusing to overwrite it")
    if overwrite and loc.exists():
        loc.filesystem().rm(loc.path, recursive=True)
        group = None
    if group is not None:
        return zarr.open_group(store=loc.zarr_store(read_only=False), mode="r+")
    return zarr.create_group(store=loc.zarr_store(read_only=False), zarr_format=zarr_format)


def _level_array(group: zarr.Group, path: str, shape, chunks, dtype, zarr_format: ZarrFormat, dim_names) -> zarr.Array:
    """The array of one level: reused when an interrupted run made it with the same layout."""
    if path in group:
        arr = group[path]
        if isinstance(arr, zarr.Array) and arr.shape == tuple(shape) and arr.chunks == tuple(chunks) and arr.dtype == dtype:
            return arr
        raise OutputExistsError(
            f"{group.store}: level '{path}' of an interrupted write has another layout "
            f"(shape {getattr(arr, 'shape', None)}, chunks {getattr(arr, 'chunks', None)}); use overwrite=True"
        )
    kwargs: dict[str, Any] = {}
    if zarr_format == 2:
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    else:
        kwargs["dimension_names"] = list(dim_names)
    return group.create_array(
        path,
        shape=tuple(shape),
        chunks=tuple(chunks),
        dtype=dtype,
        compressors=_compressors(zarr_format),
        fill_value=np.nan if np.issubdtype(dtype, np.floating) else 0,  # a lost float chunk reads as NaN: refused
        config={"write_empty_chunks": True},
        **kwargs,
    )


def write_multiscale(
    data: da.Array,
    loc: Location,
    *,
    axes: list[dict],
    binned: tuple[bool, ...],
    pixel_size: float,
    ngff_version: str = "0.4",
    chunks: Sequence[int] | None = None,
    levels: int = 3,
    overwrite: bool = False,
    extra_attrs: dict | None = None,
    sources: Iterable[Location] = (),
    name: str = "image",
    pooling: str = "mean",
) -> dict:
    """Write `data` as an OME-Zarr multiscale image at `loc` (see the module docstring for the order).

    `pooling`: how each level is made from the one above, "mean" (images) or "max" (label images).

    Returns a summary: {"levels": [...shapes], "written_blocks": [...per level], "chunks": ...}.
    """
    if ngff_version not in NGFF_VERSIONS:
        raise StoreError(loc.url, f"NGFF version '{ngff_version}' is not supported; expected one of {sorted(NGFF_VERSIONS)}", field="ngff_version")
    if data.ndim != len(axes):
        raise StoreError(loc.url, f"data have {data.ndim} dims, expected {len(axes)} ({[a['name'] for a in axes]})", field="dims")
    if pooling not in POOLINGS:
        raise StoreError(loc.url, f"pooling '{pooling}' is not supported; expected one of {POOLINGS}", field="pooling")
    refuse_input_overlap([loc], sources)  # the images the lazy data are read from
    loc.require_writable()
    with os_errors_as_store_errors(loc.url, "written"):
        zarr_format = NGFF_VERSIONS[ngff_version]
        dtype = np.dtype(data.dtype)
        shapes = pyramid_shapes(data.shape, binned, levels)
        if chunks is not None and (len(chunks) != data.ndim or any(int(c) < 1 for c in chunks)):
            raise StoreError(loc.url, f"expected {data.ndim} positive chunk sizes, got {tuple(chunks)}", field="chunks")
        group = prepare_output(loc, overwrite=overwrite, zarr_format=zarr_format)
        names = [a["name"] for a in axes]
        arrays = []
        for n, shape in enumerate(shapes):
            lchunks = default_chunks(shape, dtype.itemsize, binned) if chunks is None else tuple(min(int(c), s) for c, s in zip(chunks, shape))
            arrays.append(_level_array(group, str(n), shape, lchunks, dtype, zarr_format, names))
        written = [write_level(data, arrays[0], loc, "0", description=f"writing {loc.url} level 0")]
        for n in range(1, len(shapes)):
            stored = da.from_array(ChunkReader(arrays[n - 1], loc, str(n - 1)), chunks=arrays[n - 1].chunks, asarray=False, fancy=False)
            pooled = downsample(stored, binned, arrays[n].chunks, pooling)
            written.append(write_level(pooled, arrays[n], loc, str(n), description=f"writing {loc.url} level {n}"))
        attrs = multiscales_attrs(axes, len(shapes), pixel_size, binned, ngff_version, name, pooling)
        attrs[COMPLETION_KEY] = {"version": 1, "chunks_per_level": [len(all_chunk_keys(a)) for a in arrays]}
        attrs.update(extra_attrs or {})
        group.attrs.update(attrs)
        return {"levels": shapes, "written_blocks": written, "chunks": [a.chunks for a in arrays]}
