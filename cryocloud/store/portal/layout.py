"""The portal bucket's layout: which tomograms, tilt series, annotations and alignments a run holds, found
from the metadata JSONs (paths taken from ``omezarr_dir``, never composed blindly), and an address resolved
to one OME-Zarr image. Layouts and fields are listed in `cryocloud.store.portal` (the package docstring).
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import numpy as np

from cryocloud.errors import StoreError
from cryocloud.store.location import PORTAL_BUCKET, Location, describe_os_error, transport_errors
from cryocloud.store.ngff import open_image
from cryocloud.store.portal.address import PortalRef, parse_portal_url, portal_address, portal_options


@dataclass(frozen=True)
class PortalImage:
    """A tomogram or tilt series of a run: its OME-Zarr URL and its metadata JSON."""

    kind: str
    url: str
    ident: str
    voxel_spacing: float
    metadata: dict = field(compare=False)
    metadata_url: str = ""

    @property
    def size_zyx(self) -> tuple[int, ...] | None:
        size = self.metadata.get("size")
        return tuple(int(size[k]) for k in "zyx") if isinstance(size, dict) and all(k in size for k in "zyx") else None


@dataclass(frozen=True)
class PortalAnnotation:
    """One annotation of a run: object name, version and its files [{"format", "shape", "url"}]."""

    object_name: str
    version: str
    voxel_spacing: float
    files: list[dict]
    metadata_url: str


@dataclass(frozen=True)
class PortalRun:
    """What a run holds; `alignments` are the URLs (``s3://...``) of its ``alignment_metadata.json`` files."""

    dataset: str
    run: str
    tomograms: list[PortalImage]
    tilt_series: list[PortalImage]
    annotations: list[PortalAnnotation]
    alignments: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------- listing
@overload
def read_json(fs, path: str, *, missing_ok: Literal[False] = False) -> dict: ...
@overload
def read_json(fs, path: str, *, missing_ok: bool) -> dict | None: ...
def read_json(fs, path: str, *, missing_ok: bool = False) -> dict | None:
    """A metadata JSON object ("bucket/key"), one GET; None when missing and `missing_ok`."""
    try:
        content = fs.cat_file(path)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise StoreError(f"s3://{path}", "does not exist") from None
    except transport_errors() as exc:  # the endpoint unreachable, access denied (after the retries)
        raise StoreError(f"s3://{path}", f"cannot be read: {describe_os_error(exc)}") from exc
    return _parse_json(path, content)


def _parse_json(path: str, content: bytes) -> dict:
    try:
        document = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"s3://{path}", f"is not valid JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise StoreError(f"s3://{path}", f"expected a JSON object, got {type(document).__name__}")
    return document


def read_jsons(fs, paths: list[str]) -> dict[str, dict]:
    """Metadata JSON objects ("bucket/key" -> object), fetched concurrently (s3fs runs the GETs together)."""
    if not paths:
        return {}
    try:
        contents = fs.cat(list(paths), on_error="return")
    except transport_errors() as exc:
        raise StoreError(f"s3://{paths[0]}", f"cannot be read: {describe_os_error(exc)}") from exc
    out = {}
    for path in paths:
        content = contents.get(path)
        if isinstance(content, FileNotFoundError):
            raise StoreError(f"s3://{path}", "does not exist")
        if isinstance(content, Exception) or content is None:
            raise StoreError(f"s3://{path}", f"cannot be read: {content}")
        out[path] = _parse_json(path, content)
    return out


def _bucket_path(bucket: str, path: str, where: str, fieldname: str) -> str:
    """A metadata path as "bucket/key": an s3:// URL as it is, a path starting with the bucket's name
    as it is, any other path relative to the bucket (it may name another dataset's key)."""
    if not isinstance(path, str) or not path:
        raise StoreError(where, f"expected a path inside the bucket, got {path!r}", field=fieldname)
    if path.startswith("s3://"):
        return path[5:]
    path = path.lstrip("/")
    return path if path.split("/", 1)[0] == bucket else f"{bucket}/{path}"


def _voxel_spacing(where: str, value: Any, fieldname: str) -> float:
    try:
        vs = float(value)
    except (TypeError, ValueError):
        raise StoreError(where, f"expected a positive number of Angstrom, got {value!r}", field=fieldname) from None
    if not np.isfinite(vs) or vs <= 0:
        raise StoreError(where, f"expected a positive number of Angstrom, got {value!r}", field=fieldname)
    return vs


def _image(meta: dict, where: str, kind: str, ident: str, zarr_url: str) -> PortalImage:
    spacing_field = "voxel_spacing" if kind == "tomogram" else "pixel_spacing"
    return PortalImage(kind, zarr_url, ident, _voxel_spacing(where, meta.get(spacing_field), spacing_field), meta, where)


def _listed_image(meta: dict, bucket: str, meta_path: str, kind: str, ident: str) -> PortalImage:
    """The image a metadata JSON describes, at its ``omezarr_dir``."""
    where = f"s3://{meta_path}"
    zarr_dir = meta.get("omezarr_dir")
    if zarr_dir is None:
        raise StoreError(where, "is missing; expected the path of the OME-Zarr image", field="omezarr_dir")
    return _image(meta, where, kind, ident, f"s3://{_bucket_path(bucket, zarr_dir, where, 'omezarr_dir')}")


def _annotation(meta: dict, bucket: str, meta_path: str, voxel_spacing: float) -> PortalAnnotation:
    where = f"s3://{meta_path}"
    obj = meta.get("annotation_object")
    if not isinstance(obj, dict) or "name" not in obj:
        raise StoreError(where, "expected an object with a 'name'", field="annotation_object")
    files = []
    for i, entry in enumerate(meta.get("files") or []):
        if not isinstance(entry, dict) or "path" not in entry:
            raise StoreError(where, "expected {format, shape, path}", field=f"files[{i}]")
        name = entry["path"]  # a bucket key, or a file name beside the metadata (as cryocloud writes them)
        relative = isinstance(name, str) and "/" not in name
        path = posixpath.join(posixpath.dirname(meta_path), name) if relative else _bucket_path(bucket, name, where, f"files[{i}].path")
        files.append({"format": entry.get("format"), "shape": entry.get("shape"), "url": f"s3://{path}"})
    return PortalAnnotation(str(obj["name"]), str(meta.get("version", "")), voxel_spacing, files, where)


def _spacing_of(path: str) -> float:
    m = re.search(r"/VoxelSpacing([0-9.]+)/", path)
    return float(m.group(1)) if m else float("nan")


KINDS = ("tomogram", "tilt_series", "annotation", "alignment")


def list_runs(dataset: str, *, storage_options: dict | None = None, bucket: str = PORTAL_BUCKET) -> list[str]:
    """Run names of a dataset (the folders under ``bucket/dataset``)."""
    loc = Location("s3", f"{bucket}/{dataset}", portal_options(storage_options))
    fs = loc.filesystem()
    try:
        entries = fs.ls(loc.path, detail=True)
    except FileNotFoundError:
        raise StoreError(loc.url, f"dataset '{dataset}' does not exist in the portal bucket", field="dataset") from None
    except transport_errors() as exc:
        raise StoreError(loc.url, f"cannot be listed: {describe_os_error(exc)}") from exc
    runs = sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory")
    if not runs:
        raise StoreError(loc.url, f"dataset '{dataset}' has no runs (or does not exist)", field="dataset")
    return runs


def _kind_of(rel: list[str]) -> str | None:
    """What a metadata JSON (path relative to the run) describes, by the layout."""
    name = rel[-1]
    if name == "tomogram_metadata.json":
        return "tomogram"
    if name == "tiltseries_metadata.json":
        return "tilt_series"
    if name == "alignment_metadata.json":
        return "alignment"
    return "annotation" if "Annotations" in rel else None


def portal_run(dataset: str, run: str, *, storage_options: dict | None = None, bucket: str = PORTAL_BUCKET,
               kinds: tuple[str, ...] = KINDS) -> PortalRun:
    """What a run holds, found by listing its prefix and reading (concurrently) the metadata JSONs of `kinds`."""
    root = Location("s3", f"{bucket}/{dataset}/{run}", portal_options(storage_options))
    fs = root.filesystem()
    try:
        found = sorted(p for p in fs.find(root.path) if p.endswith(".json"))
    except transport_errors() as exc:
        raise StoreError(root.url, f"cannot be listed: {describe_os_error(exc)}") from exc
    if not found:
        raise StoreError(root.url, f"run '{run}' of dataset '{dataset}' does not exist (nothing under this prefix)", field="run")
    prefix = root.path + "/"
    listed = [(path, path[len(prefix):].split("/")) for path in found]
    wanted = [(path, rel, kind) for path, rel in listed if (kind := _kind_of(rel)) in kinds]
    documents = read_jsons(fs, [path for path, _, kind in wanted if kind != "alignment"])
    tomograms, tilt_series, annotations, alignments = [], [], [], []
    for path, rel, kind in wanted:
        if kind == "tomogram":
            ident = rel[-2] if rel[0] == "Reconstructions" else "canonical"
            tomograms.append(_listed_image(documents[path], bucket, path, "tomogram", ident))
        elif kind == "tilt_series":
            tilt_series.append(_listed_image(documents[path], bucket, path, "tilt_series", rel[-2] if len(rel) > 2 else "0"))
        elif kind == "alignment":
            alignments.append(f"s3://{path}")
        else:
            annotations.append(_annotation(documents[path], bucket, path, _spacing_of(path)))
    return PortalRun(dataset, run, tomograms, tilt_series, annotations, alignments)


def _choose(ref: PortalRef, images: list[PortalImage], kind: str, where: str) -> PortalImage:
    chosen = [im for im in images if ref.voxel_spacing is None or abs(im.voxel_spacing - ref.voxel_spacing) < 5e-4]
    if ref.ident is not None:
        chosen = [im for im in chosen if im.ident == ref.ident]
    if not chosen:
        have = ", ".join(f"{im.ident} ({im.voxel_spacing:.3f} A)" for im in images) or "none"
        raise StoreError(where, f"no {kind.replace('_', ' ')} matches (voxel spacing {ref.voxel_spacing}, id {ref.ident}); the run has: {have}", field=kind)
    default = [im for im in chosen if im.metadata.get("is_visualization_default")]
    return (default or chosen)[0]


def _image_by_key(image_key: str, kind: str, storage_options: dict | None) -> PortalImage:
    """An image named by its .zarr key ("bucket/key.zarr"), with the metadata JSON next to it when there is one."""
    loc = Location("s3", image_key, portal_options(storage_options))
    meta_path = f"{posixpath.dirname(image_key)}/{'tomogram' if kind == 'tomogram' else 'tiltseries'}_metadata.json"
    meta = read_json(loc.filesystem(), meta_path, missing_ok=True)
    ident = posixpath.basename(posixpath.dirname(image_key))
    if meta is not None:
        return _image(meta, f"s3://{meta_path}", kind, ident, loc.url)
    spacing = float(open_image(loc).scale_translation(0)[0][-1])
    return PortalImage(kind, loc.url, ident, spacing, {}, "")


def resolve_portal(url: Any, kind: str, *, storage_options: dict | None = None, run: PortalRun | None = None) -> PortalImage:
    """The portal tomogram or tilt series (`kind`) an address names (see the module docstring);
    `run`: the address's run, already listed with `kind` (saves listing it again)."""
    url = portal_address(url)
    ref = parse_portal_url(url)
    if ref.kind is not None and ref.kind != kind:
        raise StoreError(url, f"names a {ref.kind.replace('_', ' ')}, expected a {kind.replace('_', ' ')}", field="url")
    if ref.image_key is not None:
        return _image_by_key(ref.image_key, kind, storage_options)
    run = run or portal_run(ref.dataset, ref.run, storage_options=storage_options, bucket=ref.bucket, kinds=(kind,))
    return _choose(ref, run.tomograms if kind == "tomogram" else run.tilt_series, kind, str(url))
