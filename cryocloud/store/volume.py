"""Read a volume (z, y, x) whichever its format: MRC or EM by file suffix, else OME-Zarr (or a portal address);
refuse what is not one (a 2D image) or has no contrast (a constant volume or tilt series)."""

from __future__ import annotations

import os
from pathlib import PurePosixPath
from typing import Any

import dask.array as da
import numpy as np

from cryocloud.errors import StoreError
from cryocloud.model import Tomogram
from cryocloud.progress import compute
from cryocloud.store.em import read_em
from cryocloud.store.images import read_tomogram
from cryocloud.store.mrc import read_mrc

MRC_SUFFIXES = frozenset({".mrc", ".map", ".mrcs", ".st", ".ali", ".rec", ".preali"})
EM_SUFFIX = ".em"
ATOMIC_MODEL_SUFFIXES = (".cif", ".cif.gz", ".mmcif", ".pdb", ".pdb.gz", ".ent", ".ent.gz")


def is_mrc(url: str | os.PathLike) -> bool:
    """True when the URL or path names an MRC file (suffix .mrc, .map, .mrcs, .st, .ali, .rec, .preali; any case)."""
    return PurePosixPath(os.fspath(url).rstrip("/")).suffix.lower() in MRC_SUFFIXES


def is_em(url: str | os.PathLike) -> bool:
    """True when the URL or path names an EM file (TOM toolbox / PyTom, suffix .em; any case)."""
    return PurePosixPath(os.fspath(url).rstrip("/")).suffix.lower() == EM_SUFFIX


def is_atomic_model(url: str | os.PathLike) -> bool:
    """True when a template's URL or path names an atomic model (mmCIF / PDB: .cif, .cif.gz, .mmcif, .pdb,
    .pdb.gz, .ent, .ent.gz; any case); anything else is a density map (MRC, EM)."""
    return os.fspath(url).rstrip("/").lower().endswith(ATOMIC_MODEL_SUFFIXES)


def read_volume(url: str | os.PathLike, *, level: int = 0, storage_options: dict | None = None, chunks: Any = None,
                pixel_size: float | None = None) -> Tomogram:
    """Lazily read a tomogram (z, y, x): MRC (see `is_mrc`, voxel size in A from the header unless `pixel_size`
    overrides it), EM (`is_em`; it stores no voxel size: `pixel_size` (A) gives it) or OME-Zarr level `level`.

    An MRC or EM file has a single level: `level` > 0 raises StoreError; `chunks` applies to OME-Zarr only, and
    `pixel_size` to files only (an OME-Zarr image carries its own). A 2D image (one section) is a StoreError
    (see `require_volume`).
    """
    source = os.fspath(url)
    if not (is_mrc(url) or is_em(url)):
        if pixel_size is not None:
            raise StoreError(source, "an OME-Zarr image carries its voxel size; pixel_size applies to MRC and EM files", field="pixel_size")
        return require_volume(read_tomogram(source, level=level, storage_options=storage_options, chunks=chunks), url)
    if level != 0:
        kind = "an EM" if is_em(url) else "an MRC"
        raise StoreError(source, f"is {kind} file with one level; level {level} was asked for, expected 0", field="level")
    if is_mrc(url):
        return require_volume(read_mrc(url, pixel_size=pixel_size, storage_options=storage_options), url)
    if pixel_size is None:
        raise StoreError(source, "EM files store no voxel size; pass pixel_size (A)", field="voxel_size")
    data = da.from_array(read_em(url, storage_options=storage_options))
    return require_volume(Tomogram.from_array(data, pixel_size=pixel_size, name=PurePosixPath(source).name), url)


def require_volume(tomogram: Tomogram, url: str | os.PathLike) -> Tomogram:
    """`tomogram` (read from `url`) when it has more than one section; a StoreError for a 2D image."""
    if tomogram.shape[0] < 2:
        raise StoreError(os.fspath(url), f"is a 2D image (shape {tomogram.shape}); expected a volume (z, y, x) of more than one section",
                         field="shape")
    return tomogram


def require_contrast(data: np.ndarray | da.Array, url: str | os.PathLike, *, what: str = "the volume") -> None:
    """StoreError naming `url` when `data`, `what` was read from it, is constant (all zero, say). A lazy
    array reads its middle block first and is done when that has contrast (real data: one chunk read);
    only a constant block costs a pass over the whole array, on the current Dask client if any."""
    if isinstance(data, da.Array):
        middle = data.blocks[tuple(n // 2 for n in data.numblocks)]
        low, high = compute(middle.min(), middle.max(), quiet=True)
        if not low < high:
            low, high = compute(data.min(), data.max(), quiet=True)
    else:
        low, high = data.min(), data.max()
    if not low < high:
        raise StoreError(os.fspath(url), f"{what} is constant (every value {float(low):g}); expected contrast", field="data")
