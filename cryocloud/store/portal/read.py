"""Reading what a portal address names: tomograms, tilt series (angles from ``.rawtlt`` / metadata,
per-tilt defocus and dose), annotation masks and points, lazily from the bucket.

Portal pyramids are mean-pooled with scale transforms only: level n is read with its voxel centres
shifted by (2**n - 1) / 2 level-0 voxels (`cryocloud.store.arrays.spatial_array`).
"""

from __future__ import annotations

import logging
import posixpath
from typing import Any

import numpy as np

from cryocloud.errors import ModelError, StoreError
from cryocloud.model import Microscope, TiltSeries, Tomogram, accumulated_pre_exposure
from cryocloud.store.arrays import spatial_array
from cryocloud.store.location import Location
from cryocloud.store.ngff import open_image
from cryocloud.store.portal.address import parse_portal_url, portal_address, portal_options
from cryocloud.store.portal.annotations import from_ndjson
from cryocloud.store.portal.layout import PortalAnnotation, PortalImage, portal_run, resolve_portal

log = logging.getLogger(__name__)


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
