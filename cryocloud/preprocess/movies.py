"""Lazy reading of movie files (MRC or TIFF stacks of frames) at URLs, for tilt-series assembly.

Each movie becomes a Dask array (frame, y, x) read by one task. MRC files go through
`cryocloud.store.mrc.read_mrc`; TIFF files through tifffile on an fsspec file object (local or
s3://). Listing a folder/bucket and matching movie names to mdoc SubFramePath entries also
live here.
"""

from __future__ import annotations

import os
import posixpath

import dask
import dask.array as da
import numpy as np

from cryocloud.errors import StoreError
from cryocloud.store.location import open_url, resolve
from cryocloud.store.mrc import read_mrc

MOVIE_SUFFIXES = (".mrc", ".mrcs", ".tif", ".tiff")


def _read_tiff(url: str, storage_options: dict | None) -> np.ndarray:
    import tifffile

    with open_url(url, "rb", storage_options=storage_options) as f:
        try:
            data = tifffile.imread(f)
        except Exception as exc:  # tifffile raises several types for corrupt files
            raise StoreError(url, f"is not a readable TIFF movie: {exc}") from exc
    return data.reshape((-1,) + data.shape[-2:])


def _tiff_shape(url: str, storage_options: dict | None) -> tuple[tuple[int, int, int], np.dtype]:
    import tifffile

    with open_url(url, "rb", storage_options=storage_options) as f:
        try:
            with tifffile.TiffFile(f) as tif:
                pages = len(tif.pages)
                page = tif.pages[0]
                return (pages,) + tuple(page.shape[-2:]), np.dtype(page.dtype)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(url, f"is not a readable TIFF movie: {exc}") from exc


def read_movie(url: str, *, pixel_size: float | None = None, storage_options: dict | None = None) -> da.Array:
    """Lazy frames (frame, y, x) of one movie (MRC or TIFF). MRC movies need a pixel size in
    their header unless `pixel_size` (A) is given (the value itself is not used here)."""
    suffix = posixpath.splitext(str(url))[1].lower()
    if suffix in (".tif", ".tiff"):
        shape, dtype = _tiff_shape(url, storage_options)
        return da.from_delayed(dask.delayed(_read_tiff, pure=True)(url, storage_options), shape=shape, dtype=dtype)
    if suffix in (".mrc", ".mrcs"):
        return read_mrc(url, pixel_size=pixel_size, storage_options=storage_options).data.data
    raise StoreError(str(url), f"unknown movie format '{suffix}'; expected one of {', '.join(MOVIE_SUFFIXES)}", field="suffix")


def movie_url(folder: str, sub_frame_path: str) -> str:
    """URL of a movie in `folder` named by an mdoc SubFramePath (its Windows or POSIX base name)."""
    name = sub_frame_path.replace("\\", "/").rsplit("/", 1)[-1]
    if not name:
        raise StoreError(folder, "an mdoc section has no SubFramePath; cannot find its movie", field="SubFramePath")
    return f"{str(folder).rstrip('/')}/{name}"


def list_movies(folder: str, *, storage_options: dict | None = None) -> list[str]:
    """Sorted URLs of the movie files (by suffix) in a folder or bucket prefix."""
    loc = resolve(folder, storage_options)
    fs = loc.filesystem()
    if not fs.isdir(loc.path):
        raise StoreError(loc.url, "is not a folder (expected a folder or bucket prefix of movies)")
    names = sorted(p for p in fs.ls(loc.path, detail=False) if os.path.splitext(p)[1].lower() in MOVIE_SUFFIXES)
    base = loc.url.rstrip("/")
    return [f"{base}/{posixpath.basename(p)}" for p in names]
