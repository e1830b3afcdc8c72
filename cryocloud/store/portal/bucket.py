"""CryoET Data Portal data read in place from its public S3 bucket (anonymous, read-only).

Addresses (all resolve to an OME-Zarr image in the bucket):

- ``portal://DATASET/RUN`` (the run's default tomogram, or its tilt series for
  `read_portal_tilt_series`), ``portal://DATASET/RUN/vs/10.012`` (a voxel spacing),
  ``portal://DATASET/RUN/tomogram/ID``, ``portal://DATASET/RUN/vs/10.012/tomogram/ID``,
  ``portal://DATASET/RUN/tiltseries[/ID]``;
- plain keys ``s3://cryoet-data-portal-public/DATASET/RUN[/...]``: a ``.zarr`` key is read as is,
  a key inside a run is narrowed by the layout folders it names;
- objects of the official ``cryoet_data_portal`` client (duck-typed: ``s3_omezarr_dir``).

Layouts (paths are taken from the metadata JSONs, ``omezarr_dir``, never composed blindly):

- current (since Oct 2024): ``RUN/TiltSeries/ID/tiltseries_metadata.json`` (+ ``RUN.rawtlt``),
  ``RUN/Reconstructions/VoxelSpacing{vs:.3f}/Tomograms/ID/tomogram_metadata.json``,
  ``RUN/Reconstructions/VoxelSpacing{vs:.3f}/Annotations/ID/{object}-{version}.json``;
- older: ``RUN/TiltSeries/tiltseries_metadata.json``,
  ``RUN/Tomograms/VoxelSpacing{vs}/CanonicalTomogram/tomogram_metadata.json``,
  ``RUN/Tomograms/VoxelSpacing{vs}/Annotations/*.json``.

Metadata fields used (as in chanzuckerberg/cryoet-data-portal-backend,
test_infra/test_files/30001/RUN1/...: tomogram_metadata.json, tiltseries_metadata.json,
Annotations/100/foo-1.0.json): tomograms ``omezarr_dir``, ``voxel_spacing`` (A), ``size``
{z, y, x}, ``reconstruction_method``, ``is_visualization_default``; tilt series ``omezarr_dir``,
``pixel_spacing`` (A), ``acceleration_voltage`` (V), ``spherical_aberration_constant`` (mm),
``tilt_axis`` (deg), ``is_aligned``, ``total_flux`` (e/A^2), ``per_section_parameter``
[{``z_index``, ``raw_angle`` (deg), ``frame_acquisition_order``, ``major_defocus`` /
``minor_defocus`` (A), ``astigmatic_angle`` (deg)}]; annotations ``annotation_object.name``,
``version``, ``files`` [{``format``, ``shape``, ``path``}].

Portal pyramids are mean-pooled with scale transforms only: level n is read with its voxel centres
shifted by (2**n - 1) / 2 level-0 voxels (`cryocloud.store.images.spatial_array`). The bucket is
read anonymously unless the storage options say otherwise; the endpoint comes from the storage
options or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (a local S3 server holding a copy).
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np

from cryocloud.errors import ModelError, StoreError
from cryocloud.model import Microscope, TiltSeries, Tomogram, accumulated_pre_exposure
from cryocloud.store.images import spatial_array
from cryocloud.store.location import PORTAL_BUCKET, Location, describe_os_error, transport_errors
from cryocloud.store.ngff import open_image
from cryocloud.store.portal.annotations import from_ndjson

log = logging.getLogger(__name__)

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
    return text.startswith(SCHEME) or text.startswith(f"s3://{PORTAL_BUCKET}/")


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


# ------------------------------------------------------------------------------------- listing
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


KINDS = ("tomogram", "tilt_series", "annotation", "alignment")


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
    wanted = [(path, path[len(prefix):].split("/")) for path in found]
    wanted = [(path, rel, kind) for path, rel in wanted if (kind := _kind_of(rel)) in kinds]
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


def _image_by_key(ref: PortalRef, kind: str, storage_options: dict | None) -> PortalImage:
    """An image named by its .zarr key, with the metadata JSON next to it when there is one."""
    loc = Location("s3", ref.image_key, portal_options(storage_options))
    meta_path = f"{posixpath.dirname(ref.image_key)}/{'tomogram' if kind == 'tomogram' else 'tiltseries'}_metadata.json"
    meta = read_json(loc.filesystem(), meta_path, missing_ok=True)
    ident = posixpath.basename(posixpath.dirname(ref.image_key))
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
        return _image_by_key(ref, kind, storage_options)
    run = run or portal_run(ref.dataset, ref.run, storage_options=storage_options, bucket=ref.bucket, kinds=(kind,))
    return _choose(ref, run.tomograms if kind == "tomogram" else run.tilt_series, kind, str(url))


# -------------------------------------------------------------------------------------- reading
def read_portal_tomogram(url: Any, *, level: int = 0, storage_options: dict | None = None, chunks: Any = None) -> Tomogram:
    """Lazily read a portal tomogram (z, y, x); coordinates (A) at the voxel centres of `level`.

    When the run holds one tilt series (or several with the same angles), the tomogram carries its
    tilt angles (deg; the missing wedge for matching and averaging) and microscope, and
    ``data.attrs["defocus_a"]`` its mean defocus (A), as a cryocloud reconstruction records them.
    One listing of the run finds both the tomogram and its tilt series' metadata.
    """
    address = portal_address(url)
    ref = parse_portal_url(address)
    run = portal_run(ref.dataset, ref.run, storage_options=storage_options, bucket=ref.bucket, kinds=("tomogram", "tilt_series"))
    found = resolve_portal(address, "tomogram", storage_options=storage_options, run=run)
    tomo = _read_volume(found.url, level, storage_options, chunks)
    try:
        acquisition = _acquisition(run.tilt_series, storage_options)
    except StoreError as exc:  # the tomogram itself is fine: read it without the wedge
        log.warning("%s: read without tilt angles and defocus, its run's tilt series metadata are unusable: %s", found.url, exc)
        return tomo
    if acquisition is None:
        return tomo
    angles, microscope, defocus = acquisition
    if defocus is not None:
        tomo.data.attrs["defocus_a"] = defocus
    return Tomogram(tomo.data, microscope, tuple(float(a) for a in angles))


def _acquisition(tilt_series: list[PortalImage], storage_options: dict | None) -> tuple[np.ndarray, Microscope, float | None] | None:
    """(tilt angles (deg), microscope, mean defocus (A) or None) of a run's tilt series, from their metadata
    and .rawtlt only, when unambiguous: one tilt series, or several with the same angles; else None."""
    if not tilt_series:
        return None
    fs = Location("s3", tilt_series[0].url[5:], portal_options(storage_options)).filesystem()
    found = []
    for t in tilt_series:
        rawtlt = _rawtlt(fs, t)
        n_tilts = len(rawtlt) if rawtlt is not None else len(t.metadata.get("per_section_parameter") or [])
        if n_tilts == 0:
            return None
        found.append(tilt_coordinates(t, n_tilts, rawtlt))
    angles = found[0]["tilt_angle"]
    if any(c["tilt_angle"].shape != angles.shape or not np.allclose(c["tilt_angle"], angles) for c in found[1:]):
        return None
    coords = found[0]
    defocus = float(np.mean(0.5 * (coords["defocus_u"] + coords["defocus_v"]))) if "defocus_u" in coords and "defocus_v" in coords else None
    return angles, _microscope(tilt_series[0]), defocus


def _microscope(found: PortalImage) -> Microscope:
    """The microscope of a tilt series' metadata (acceleration_voltage in V, spherical_aberration_constant in mm)."""
    meta = found.metadata
    try:
        return Microscope(voltage_kv=float(meta.get("acceleration_voltage", 300000)) / 1000.0, cs_mm=float(meta.get("spherical_aberration_constant", 2.7)))
    except (ModelError, ValueError, TypeError) as exc:
        raise StoreError(found.metadata_url, str(exc), field="acceleration_voltage") from exc


def _read_volume(url: str, level: int, storage_options: dict | None, chunks: Any) -> Tomogram:
    """A portal OME-Zarr volume (z, y, x) at `url` (s3://...), mean-pooled levels with their half-voxel shift."""
    image = open_image(Location("s3", url[5:], portal_options(storage_options)))
    if image.axis_names != ("z", "y", "x"):
        raise StoreError(image.url, f"has axes {image.axis_names}, expected ('z', 'y', 'x')", field="multiscales.axes")
    try:
        return Tomogram(spatial_array(image, level, ("z", "y", "x"), chunks, pooled=True), Microscope())
    except ModelError as exc:
        raise StoreError(image.url, exc.problem, field=exc.field) from exc


def _rawtlt(fs, found: PortalImage) -> np.ndarray | None:
    """Angles (deg) of the ``.rawtlt`` next to the tilt-series metadata, None when there is none."""
    folder = posixpath.dirname(found.metadata_url[5:])
    names = [p for p in fs.ls(folder, detail=False) if p.endswith(".rawtlt")]
    if not names:
        return None
    text = fs.cat_file(names[0]).decode("utf-8", errors="replace")
    try:
        return np.array([float(line) for line in text.split() if line.strip()])
    except ValueError as exc:
        raise StoreError(f"s3://{names[0]}", f"expected one tilt angle (deg) per line ({exc})", field="angles") from exc


def tilt_coordinates(found: PortalImage, n_tilts: int, rawtlt: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per-tilt coordinates from ``per_section_parameter`` (by ``z_index``) and the .rawtlt angles.

    Angles come from the .rawtlt when present, else ``raw_angle``; acquisition order from
    ``frame_acquisition_order`` (ranked), else image order; defocus (A) and astigmatism angle (deg)
    when every section has them; exposure = ``total_flux`` / n_tilts (e/A^2), 0 when unknown.
    """
    where = found.metadata_url
    sections = found.metadata.get("per_section_parameter") or []
    by_index: dict[int, dict] = {}
    for i, s in enumerate(sections):
        if not isinstance(s, dict) or "z_index" not in s:
            raise StoreError(where, "expected objects with a 'z_index'", field=f"per_section_parameter[{i}]")
        by_index[int(s["z_index"])] = s
    complete = sorted(by_index) == list(range(n_tilts))

    def column(name: str) -> np.ndarray | None:
        if not complete or any(by_index[k].get(name) is None for k in by_index):
            return None
        return np.array([float(by_index[k][name]) for k in range(n_tilts)])

    angles = rawtlt if rawtlt is not None else column("raw_angle")
    if angles is None:
        raise StoreError(where, f"no tilt angles: no .rawtlt and per_section_parameter lacks raw_angle for z_index 0..{n_tilts - 1}", field="per_section_parameter")
    if angles.size != n_tilts:
        raise StoreError(where, f".rawtlt has {angles.size} angles for {n_tilts} images", field="angles")
    order = column("frame_acquisition_order")
    coords = {
        "tilt_angle": angles,
        "acquisition_order": np.arange(n_tilts) if order is None else np.argsort(np.argsort(order, kind="stable")),
    }
    flux = found.metadata.get("total_flux")
    coords["exposure"] = np.full(n_tilts, float(flux) / n_tilts if flux else 0.0)
    for ours, theirs in (("defocus_u", "major_defocus"), ("defocus_v", "minor_defocus"), ("astigmatism_angle", "astigmatic_angle")):
        values = column(theirs)
        if values is not None:
            coords[ours] = values
    return coords


def read_portal_tilt_series(url: Any, *, level: int = 0, storage_options: dict | None = None, chunks: Any = None) -> TiltSeries:
    """Lazily read a portal tilt series (tilt, y, x) with angles, order, defocus and the microscope."""
    return _read_tilt_series(resolve_portal(url, "tilt_series", storage_options=storage_options), level, storage_options, chunks)


def _read_tilt_series(found: PortalImage, level: int, storage_options: dict | None, chunks: Any) -> TiltSeries:
    loc = Location("s3", found.url[5:], portal_options(storage_options))
    image = open_image(loc)
    if image.axis_names[1:] != ("y", "x") or len(image.axis_names) != 3:
        raise StoreError(image.url, f"has axes {image.axis_names}, expected (z or tilt, y, x)", field="multiscales.axes")
    array = spatial_array(image, level, ("tilt", "y", "x"), chunks, pooled=True)
    if not found.metadata_url:
        raise StoreError(image.url, "is a bare image key: read a tilt series by its run (portal://DATASET/RUN/tiltseries) for its angles", field="url")
    coords = tilt_coordinates(found, array.sizes["tilt"], _rawtlt(loc.filesystem(), found))
    meta = found.metadata
    microscope = _microscope(found)
    try:
        axis = 0.0 if meta.get("is_aligned") else float(meta.get("tilt_axis") or 0.0)
        pre = accumulated_pre_exposure(coords["acquisition_order"], coords["exposure"])
        array = array.assign_coords({k: ("tilt", v) for k, v in {**coords, "pre_exposure": pre}.items()})
        return TiltSeries(array, microscope, axis)
    except (ModelError, ValueError) as exc:
        raise StoreError(found.metadata_url, str(exc)) from exc


def read_annotation_mask(annotation: PortalAnnotation, *, level: int = 0, storage_options: dict | None = None, chunks: Any = None) -> Tomogram:
    """Lazily read a segmentation-mask annotation (its OME-Zarr file, shape ``SegmentationMask``) as a label
    volume (z, y, x) at the annotation's voxel spacing; level 0 holds the labels as annotated."""
    files = [f for f in annotation.files if f.get("format") == "zarr" and str(f.get("shape", "")).lower() == "segmentationmask"]
    if not files:
        have = ", ".join(f"{f.get('format')} {f.get('shape')}" for f in annotation.files) or "none"
        raise StoreError(annotation.metadata_url, f"has no OME-Zarr segmentation mask (it has: {have})", field="files")
    return _read_volume(files[0]["url"], level, storage_options, chunks)


def read_annotation_points(annotation: PortalAnnotation, *, storage_options: dict | None = None, tomogram: str = ""):
    """`Particles` (positions in A) of a point annotation's ndjson file (point, orientedPoint, instancePoint)."""
    files = [f for f in annotation.files if f.get("format") == "ndjson"]
    if not files:
        have = ", ".join(f"{f.get('format')} {f.get('shape')}" for f in annotation.files) or "none"
        raise StoreError(annotation.metadata_url, f"has no ndjson point file (it has: {have})", field="files")
    if not np.isfinite(annotation.voxel_spacing):
        raise StoreError(annotation.metadata_url, "lies in no VoxelSpacing folder: the voxel size of its coordinates is unknown", field="voxel_spacing")
    loc = Location("s3", files[0]["url"][5:], portal_options(storage_options))
    fs = loc.filesystem()
    try:
        text = fs.cat_file(loc.path).decode("utf-8")
    except FileNotFoundError:
        raise StoreError(loc.url, "does not exist (named in the annotation's files)", field="files") from None
    try:
        return from_ndjson(text, annotation.voxel_spacing, source=loc.url, tomogram=tomogram, class_name=annotation.object_name)
    except ModelError as exc:
        raise StoreError(exc.source or loc.url, exc.problem, field=exc.field) from exc
