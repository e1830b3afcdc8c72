"""CryoET Data Portal addresses: ``portal://DATASET/RUN[...]``, keys in its bucket and client objects, parsed
into a `PortalRef`; the storage options for reading the bucket (anonymous unless told otherwise).

The address forms are listed in `cryocloud.store.portal` (the package docstring).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import dask

from cryocloud.errors import StoreError
from cryocloud.store.location import PORTAL_BUCKET


PORTAL_HTTPS = "https://files.cryoetdataportal.cziscience.com"


SCHEME = "portal://"


@dataclass(frozen=True)
class PortalRef:
    """A parsed portal address: a run, optionally narrowed to a kind, a voxel spacing (A) and an id."""

    dataset: str
    run: str
    kind: str | None = None  # "tomogram" | "tilt_series"
    voxel_spacing: float | None = None
    ident: str | None = None
    image_key: str | None = None  # "bucket/key.zarr" given directly
    bucket: str = PORTAL_BUCKET


def portal_options(storage_options: dict | None) -> dict:
    """Storage options for the portal bucket: anonymous unless credentials or `anon` are given.

    The endpoint, unless the options name one, comes from the Dask config key
    ``cryocloud.portal.endpoint_url`` (e.g. ``DASK_CRYOCLOUD__PORTAL__ENDPOINT_URL``), then from
    ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (see `cryocloud.store.location`).
    """
    options = dict(storage_options or {})
    configured = dask.config.get("cryocloud.portal.endpoint_url", None)
    if configured and "endpoint_url" not in options and "endpoint_url" not in (options.get("client_kwargs") or {}):
        options["endpoint_url"] = configured
    if not any(k in options for k in ("anon", "key", "secret", "profile", "token")):
        options["anon"] = True
    return options


def portal_address(obj: Any) -> str:
    """The address of a portal client object (``s3_omezarr_dir`` of a tomogram / tilt series,
    ``s3_prefix`` of a run), or `obj` as text."""
    for attr in ("s3_omezarr_dir", "s3_prefix"):
        value = getattr(obj, attr, None)
        if isinstance(value, str) and value:
            return value
    return str(obj)


def is_portal_url(url: Any) -> bool:
    """True for ``portal://`` addresses, portal-bucket ``s3://`` keys and portal client objects."""
    text = portal_address(url)
    return text.startswith((SCHEME, f"s3://{PORTAL_BUCKET}/"))


def _parse_tail(text: str, parts: list[str], ref: dict) -> None:
    """Fill kind / voxel_spacing / ident from the address segments after DATASET/RUN."""
    i = 0
    while i < len(parts):
        word = parts[i]
        nxt = parts[i + 1] if i + 1 < len(parts) else None
        if word == "vs" and nxt is not None:
            try:
                ref["voxel_spacing"] = float(nxt)
            except ValueError:
                raise StoreError(text, f"voxel spacing '{nxt}' is not a number of Angstrom", field="url") from None
            i += 2
        elif word in ("tomogram", "tiltseries"):
            ref["kind"] = "tomogram" if word == "tomogram" else "tilt_series"
            ref["ident"] = nxt
            i += 2
        else:
            raise StoreError(
                text, f"unexpected segment '{word}'; expected portal://DATASET/RUN[/vs/SPACING][/tomogram/ID | /tiltseries[/ID]]", field="url"
            )


def _parse_layout_key(text: str, parts: list[str], ref: dict) -> None:
    """Narrow an s3 key inside a run by the layout folders it names (current and older layouts)."""
    for part in parts:
        m = re.fullmatch(r"VoxelSpacing([0-9.]+)", part)
        if m:
            ref["voxel_spacing"] = float(m.group(1))
    if "TiltSeries" in parts:
        ref["kind"] = "tilt_series"
        i = parts.index("TiltSeries")
        if i + 1 < len(parts) and not parts[i + 1].endswith(".json"):
            ref["ident"] = parts[i + 1]
    elif "Tomograms" in parts:
        ref["kind"] = "tomogram"
        i = parts.index("Tomograms")
        if parts[0] == "Reconstructions" and i + 1 < len(parts) and not parts[i + 1].endswith(".json"):
            ref["ident"] = parts[i + 1]
    elif parts and parts[0] not in ("Reconstructions",):
        raise StoreError(text, f"'{parts[0]}' is not a portal image folder (TiltSeries, Reconstructions, Tomograms)", field="url")


def names_tomogram(url: Any) -> bool:
    """True when a portal address names a tomogram (``.../tomogram/ID``, ``.../vs/SPACING``, a key under
    Reconstructions/ or Tomograms/), False for a tilt series or a run alone."""
    ref = parse_portal_url(portal_address(url))
    if ref.image_key is not None:
        parts = ref.image_key.split("/")
        return "TiltSeries" not in parts and ("Tomograms" in parts or "Reconstructions" in parts)
    return ref.kind == "tomogram" or (ref.kind is None and ref.voxel_spacing is not None)


def parse_portal_url(url: str) -> PortalRef:
    """Parse a ``portal://`` address or an ``s3://cryoet-data-portal-public/...`` key."""
    text = str(url)
    if text.startswith(SCHEME):
        parts = [p for p in text[len(SCHEME):].split("/") if p]
        if len(parts) < 2:
            raise StoreError(text, "expected portal://DATASET/RUN (a dataset id and a run name)", field="url")
        ref: dict = {"dataset": parts[0], "run": parts[1]}
        _parse_tail(text, parts[2:], ref)
        return PortalRef(**ref)
    if text.startswith("s3://"):
        bucket, _, key = text[5:].partition("/")
        parts = [p for p in key.split("/") if p]
        if len(parts) < 2:
            raise StoreError(text, "expected s3://BUCKET/DATASET/RUN[/...] (a dataset id and a run name)", field="url")
        if parts[-1].endswith(".zarr"):
            return PortalRef(parts[0], parts[1], image_key=f"{bucket}/{key.strip('/')}", bucket=bucket)
        ref = {"dataset": parts[0], "run": parts[1], "bucket": bucket}
        _parse_layout_key(text, parts[2:], ref)
        return PortalRef(**ref)
    raise StoreError(text, "is not a portal address; expected portal://DATASET/RUN or s3://cryoet-data-portal-public/DATASET/RUN", field="url")
