"""Detector calibration images at URLs: gain references and defect maps (MRC or TIFF), one image (y, x).

SerialEM's gain references are multiplicative normalisation images (frames x gain = corrected
frames); a defect map marks bad pixels with nonzero values. Both are read whole (one image), and
the last few are cached per process, since every movie of a session shares them (a task that
corrects a movie reads the gain once per worker, not once per movie). The arrays returned are
read-only.
"""

from __future__ import annotations

import functools
import posixpath

import numpy as np

from cryocloud.errors import StoreError
from cryocloud.store.location import open_url, resolve
from cryocloud.store.mrc import read_mrc

DETECTOR_IMAGE_SUFFIXES = (".mrc", ".tif", ".tiff")


def _read_tiff_image(url: str, storage_options: dict | None) -> np.ndarray:
    import tifffile

    with open_url(url, "rb", storage_options=storage_options) as f:
        try:
            return tifffile.imread(f)
        except Exception as exc:  # tifffile raises several types for corrupt files
            raise StoreError(url, f"is not a readable TIFF image: {exc}") from exc


@functools.lru_cache(maxsize=4)
def _cached(url: str, options_key: tuple, field: str) -> np.ndarray:
    storage_options = dict(options_key) or None
    loc = resolve(url, storage_options)
    suffix = posixpath.splitext(loc.path)[1].lower()
    try:
        if suffix in (".tif", ".tiff"):
            data = _read_tiff_image(loc.url, storage_options)
        elif suffix == ".mrc":
            data = np.asarray(read_mrc(loc.url, pixel_size=1.0, storage_options=storage_options).data.data.compute(scheduler="sync"))
        else:
            raise StoreError(loc.url, f"unknown image format '{suffix}'; expected one of {', '.join(DETECTOR_IMAGE_SUFFIXES)}")
    except StoreError as exc:  # name the setting the file was given as
        raise StoreError(exc.source, exc.problem, field=exc.field or field) from exc
    data = np.squeeze(np.asarray(data))
    if data.ndim != 2:
        raise StoreError(loc.url, f"holds an array of shape {data.shape}; expected one image (y, x)", field=field)
    image = data.astype(np.float32)
    image.setflags(write=False)
    return image


def read_detector_image(url: str, *, field: str, storage_options: dict | None = None) -> np.ndarray:
    """One detector image (y, x) float32, read-only, from an MRC or TIFF file at a URL.

    `field` names the setting it was given as (e.g. 'gain', 'defects') in error messages.
    """
    options_key = tuple(sorted((storage_options or {}).items(), key=lambda kv: kv[0]))
    try:
        hash(options_key)
    except TypeError:  # nested options (client_kwargs ...): not cacheable, read again
        return _cached.__wrapped__(str(url), options_key, field)
    return _cached(str(url), options_key, field)
