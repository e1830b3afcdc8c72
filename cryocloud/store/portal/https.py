"""The portal's HTTPS mirror as a read path for files that need no listing.

Every bucket key is also served at ``{base}/{key}`` (base ``https://files.cryoetdataportal.cziscience.com``,
or the Dask config key ``cryocloud.portal.https_url``). HTTP cannot list folders and the portal's
OME-Zarr has no consolidated metadata, so images and run listings go through S3
(`cryocloud.store.portal.read`); what HTTPS serves well are the small files whose keys are known:
metadata JSONs and the tilt angles of a tilt series (``{dataset}/{run}/TiltSeries/{id}/
tiltseries_metadata.json`` and ``{run}.rawtlt`` beside it, current layout).
"""

from __future__ import annotations

import json
from typing import Literal, overload

import dask
import fsspec
import numpy as np

from cryocloud.errors import StoreError
from cryocloud.store.portal.address import PORTAL_HTTPS
from cryocloud.store.portal.layout import PortalImage
from cryocloud.store.portal.read import tilt_coordinates


def https_base(base: str | None = None) -> str:
    """The mirror's base URL: `base`, else ``cryocloud.portal.https_url``, else the public mirror."""
    return (base or dask.config.get("cryocloud.portal.https_url", None) or PORTAL_HTTPS).rstrip("/")


@overload
def read_https_text(url: str, *, missing_ok: Literal[False] = False) -> str: ...
@overload
def read_https_text(url: str, *, missing_ok: bool) -> str | None: ...
def read_https_text(url: str, *, missing_ok: bool = False) -> str | None:
    """A small text file over HTTP(S); None when missing and `missing_ok`, else StoreError naming the URL."""
    fs = fsspec.filesystem("http", skip_instance_cache=True)
    try:
        return fs.cat_file(url).decode("utf-8")
    except FileNotFoundError:
        if missing_ok:
            return None
        raise StoreError(url, "does not exist on the HTTPS mirror") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(url, f"cannot be read over HTTP(S): {exc}") from exc


def read_https_json(url: str) -> dict:
    """A metadata JSON object over HTTP(S)."""
    try:
        document = json.loads(read_https_text(url))
    except json.JSONDecodeError as exc:
        raise StoreError(url, f"is not valid JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise StoreError(url, f"expected a JSON object, got {type(document).__name__}")
    return document


def tilt_series_coordinates_https(dataset: str, run: str, tilt_series_id: str, *, base: str | None = None) -> dict[str, np.ndarray]:
    """Per-tilt coordinates of a tilt series (angles, acquisition order, exposure, defocus) read over HTTPS.

    Reads ``tiltseries_metadata.json`` and ``{run}.rawtlt`` (if present) and interprets them as the
    S3 reader does (`cryocloud.store.portal.read.tilt_coordinates`); the number of images is
    ``size.z`` of the metadata.
    """
    folder = f"{https_base(base)}/{dataset}/{run}/TiltSeries/{tilt_series_id}"
    meta_url = f"{folder}/tiltseries_metadata.json"
    meta = read_https_json(meta_url)
    size = meta.get("size")
    if not isinstance(size, dict) or not isinstance(size.get("z"), int) or size["z"] < 1:
        raise StoreError(meta_url, f"expected {{z, y, x}} with the number of images in z, got {size!r}", field="size")
    rawtlt_url = f"{folder}/{run}.rawtlt"
    text = read_https_text(rawtlt_url, missing_ok=True)
    angles = None
    if text is not None:
        try:
            angles = np.array([float(v) for v in text.split()])
        except ValueError as exc:
            raise StoreError(rawtlt_url, f"expected one tilt angle (deg) per line ({exc})", field="angles") from exc
    found = PortalImage("tilt_series", f"{folder}/{run}.zarr", str(tilt_series_id), float(meta.get("pixel_spacing") or 1.0), meta, meta_url)
    return tilt_coordinates(found, int(size["z"]), angles)
