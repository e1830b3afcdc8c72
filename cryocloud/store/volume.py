"""Read a volume (z, y, x) whichever its format: MRC by file suffix, else OME-Zarr (or a portal address)."""

from __future__ import annotations

import os
from pathlib import PurePosixPath
from typing import Any

from cryocloud.errors import StoreError
from cryocloud.model import Tomogram
from cryocloud.store.images import read_tomogram
from cryocloud.store.mrc import read_mrc

MRC_SUFFIXES = frozenset({".mrc", ".map", ".mrcs", ".st", ".ali", ".rec", ".preali"})


def is_mrc(url: str | os.PathLike) -> bool:
    """True when the URL or path names an MRC file (suffix .mrc, .map, .mrcs, .st, .ali, .rec, .preali; any case)."""
    return PurePosixPath(os.fspath(url).rstrip("/")).suffix.lower() in MRC_SUFFIXES


def read_volume(url: str | os.PathLike, *, level: int = 0, storage_options: dict | None = None, chunks: Any = None) -> Tomogram:
    """Lazily read a tomogram (z, y, x): MRC (see `is_mrc`, voxel size in A from the header) or OME-Zarr level `level`.

    An MRC file has a single level: `level` > 0 raises StoreError; `chunks` applies to OME-Zarr only.
    """
    if is_mrc(url):
        if level != 0:
            raise StoreError(os.fspath(url), f"is an MRC file with one level; level {level} was asked for, expected 0", field="level")
        return read_mrc(url, storage_options=storage_options)
    return read_tomogram(os.fspath(url), level=level, storage_options=storage_options, chunks=chunks)
