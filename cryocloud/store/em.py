"""EM files (TOM toolbox / PyTom, suffix .em), read with the `emfile` library.

The layout (`emfile.specs`): a 512-byte header -- byte 0 the machine (6 = PC, little-endian), byte 3
the data type (1 int8, 2 int16, 4 int32, 5 float32, 9 float64), bytes 4-15 nx, ny, nz (int32) -- then
the data, x fastest, read here as (z, y, x). EM stores no voxel size: the caller gives it
(`cryocloud match --template-voxel-size`, `read_volume(..., pixel_size=)`).

A local file is memory-mapped; a remote one (s3://) is copied through `open_url` to a temporary file
first (emfile reads paths only). A damaged file is one StoreError naming the file and the field.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from contextlib import contextmanager
from typing import Iterator

import emfile
import numpy as np

from cryocloud.errors import StoreError
from cryocloud.store.location import Location, open_url, resolve

EM_HEADER_BYTES = 512
#: the byte order emfile reads (the machine's own; TOM's code 6, PC, is little-endian)
EM_PC_MACHINE = 6
#: data-type codes of real-valued EM data (emfile's 8 and 10, complex pairs, are not volumes)
EM_REAL_DTYPES = {1: np.int8, 2: np.int16, 4: np.int32, 5: np.float32, 9: np.float64}


@contextmanager
def _local_path(loc: Location) -> Iterator[str]:
    """A local path holding the file at `loc`: itself, or a temporary copy of a remote file."""
    if loc.is_local:
        if not os.path.isfile(loc.path):
            raise StoreError(loc.url, "does not exist (or is not a file)")
        yield loc.path
        return
    with open_url(loc.url, "rb", storage_options=loc.storage_options) as remote, tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, loc.name or "volume.em")
        with open(path, "wb") as local:
            shutil.copyfileobj(remote, local)
        yield path


def _checked_header(path: str, url: str) -> dict:
    """emfile's header of the EM file at `path`, checked against the file: StoreError naming `url` and
    the field when the header is short, the byte order or data type unsupported, or the size wrong."""
    size = os.path.getsize(path)
    try:
        header, _ = emfile.read(path, header_only=True)
    except struct.error:
        raise StoreError(url, f"is {size} bytes, shorter than the {EM_HEADER_BYTES}-byte EM header", field="header") from None
    if header["machine"] != EM_PC_MACHINE:
        raise StoreError(url, f"machine code {header['machine']} (a big-endian writer); expected {EM_PC_MACHINE} (PC, little-endian)",
                         field="machine")
    code = header["dtype"]
    if code not in EM_REAL_DTYPES:
        raise StoreError(url, f"data type code {code} is not one of {sorted(EM_REAL_DTYPES)} (int8, int16, int32, float32, float64)",
                         field="datatype")
    nx, ny, nz = header["xdim"], header["ydim"], header["zdim"]
    dtype = np.dtype(EM_REAL_DTYPES[code])
    expected = nx * ny * nz * dtype.itemsize
    if min(nx, ny, nz) <= 0 or size - EM_HEADER_BYTES != expected:
        raise StoreError(url, f"header says {nx}x{ny}x{nz} (x, y, z) of {dtype.name}, {expected} bytes of data, but the file holds "
                              f"{size - EM_HEADER_BYTES} after the {EM_HEADER_BYTES}-byte header", field="size")
    return header


def em_info(url: str | os.PathLike, *, storage_options: dict | None = None) -> dict:
    """Header summary of an EM file: shape (z, y, x), dtype, voxel size (always None: EM stores none)."""
    loc = resolve(url, storage_options)
    with _local_path(loc) as path:
        header = _checked_header(path, loc.url)
    return {
        "url": loc.url,
        "format": "EM",
        "shape": [header["zdim"], header["ydim"], header["xdim"]],
        "dtype": str(np.dtype(EM_REAL_DTYPES[header["dtype"]])),
        "pixel_size": None,
    }


def read_em(url: str | os.PathLike, *, storage_options: dict | None = None) -> np.ndarray:
    """The volume (z, y, x) of an EM file in its stored dtype: memory-mapped read-only when local,
    in memory when remote. EM stores no voxel size; the caller gives it."""
    loc = resolve(url, storage_options)
    with _local_path(loc) as path:
        _checked_header(path, loc.url)
        _, data = emfile.read(path, mmap=loc.is_local)
    return data
