"""TiltSeries and Tomogram <-> OME-Zarr images with the ``"cryocloud"`` attribute block.

Axes: tomograms ("z", "y", "x"), all ``space`` in angstrom; tilt series ("tilt", "y", "x") with
"tilt" of type ``other`` (never binned in the pyramid). Reads are lazy (Dask) and rebuild the full
object: microscope, tilt-axis angle and every per-tilt coordinate. Plain NGFF images without a
cryocloud block (e.g. CryoET Data Portal tomograms) read as tomograms from the multiscales alone.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import pydantic
import xarray as xr

from cryocloud.errors import ModelError, StoreError
from cryocloud.model import OPTIONAL_TILT_COORDS, REQUIRED_TILT_COORDS, Microscope, TiltSeries, Tomogram, pixel_size_of
from cryocloud.store.location import Location, resolve
from cryocloud.store.metadata import ATTRS_KEY, CryocloudAttrs, split_caller_metadata, validation_problems
from cryocloud.store import portal
from cryocloud.store.arrays import spatial_array
from cryocloud.store.ngff import NgffImage, all_chunk_keys, missing_chunk_keys, open_image, write_multiscale

TOMOGRAM_AXES = [{"name": d, "type": "space", "unit": "angstrom"} for d in ("z", "y", "x")]
TILT_SERIES_AXES = [{"name": "tilt", "type": "other"}] + TOMOGRAM_AXES[1:]


def source_locations(data: Any) -> list[Location]:
    """Locations of stored images a lazy array reads from (found in its Dask graph)."""
    if not isinstance(data, da.Array):
        return []
    found = {}
    for name, layer in data.dask.layers.items():
        if name.startswith("original-"):
            for obj in dict(layer).values():
                loc = getattr(obj, "location", None)
                if isinstance(loc, Location):
                    found[loc.url] = loc
    return list(found.values())


def _write(
    kind: str, data: xr.DataArray, microscope: Microscope, url: str, *, axes: list[dict], binned: tuple[bool, ...],
    ngff_version: str, chunks, levels: int, overwrite: bool, storage_options: dict | None, metadata: dict | None, **fields: Any,
) -> None:
    """Write one image with its cryocloud block (provenance inputs found in the Dask graph)."""
    loc = resolve(url, storage_options)
    array = data.data if isinstance(data.data, da.Array) else da.from_array(np.asarray(data.data), chunks="auto")
    sources = source_locations(array)
    pixel_size = pixel_size_of(data)
    provenance, rest = split_caller_metadata(metadata)
    provenance.inputs = [s.url for s in sources]
    try:
        block = CryocloudAttrs(kind=kind, pixel_size=pixel_size, microscope=microscope, provenance=provenance, metadata=rest, **fields)
    except pydantic.ValidationError as exc:
        raise ModelError("metadata", f"cannot be stored: {validation_problems(exc)}") from exc
    write_multiscale(
        array, loc, axes=axes, binned=binned, pixel_size=pixel_size, ngff_version=ngff_version, chunks=chunks, levels=levels,
        overwrite=overwrite, extra_attrs={ATTRS_KEY: block.model_dump(mode="json")}, sources=sources, name=str(data.name or kind),
    )


def write_tilt_series(
    ts: TiltSeries,
    url: str,
    *,
    ngff_version: str = "0.4",
    chunks=None,
    levels: int = 3,
    overwrite: bool = False,
    storage_options: dict | None = None,
    metadata: dict | None = None,
) -> None:
    """Write a tilt series (tilt, y, x) as OME-Zarr; data first, metadata last; resumable.

    Default chunks (1, 256, full x) suit reconstruction, which reads the same Y rows of all tilts
    (see `cryocloud.store.ngff.default_chunks`). The pyramid bins y and x only.
    """
    if ts.has_frames:
        raise StoreError(url, "movie frames (tilt, frame, y, x) are not stored as OME-Zarr; store the motion-corrected tilt series", field="dims")
    per_tilt = {
        name: [float(v) for v in np.asarray(ts.data.coords[name].values, dtype=np.float64)]
        for name in REQUIRED_TILT_COORDS + OPTIONAL_TILT_COORDS
        if name in ts.data.coords
    }
    _write(
        "tilt_series", ts.data, ts.microscope, url, axes=TILT_SERIES_AXES, binned=(False, True, True), ngff_version=ngff_version,
        chunks=chunks, levels=levels, overwrite=overwrite, storage_options=storage_options, metadata=metadata,
        tilt_axis_angle=ts.tilt_axis_angle, per_tilt=per_tilt,
    )


def write_tomogram(
    tomo: Tomogram,
    url: str,
    *,
    ngff_version: str = "0.4",
    chunks=None,
    levels: int = 3,
    overwrite: bool = False,
    storage_options: dict | None = None,
    metadata: dict | None = None,
) -> None:
    """Write a tomogram (z, y, x) as OME-Zarr in cubic chunks; data first, metadata last; resumable."""
    angles = None if tomo.tilt_angles is None else [float(t) for t in tomo.tilt_angles]
    _write(
        "tomogram", tomo.data, tomo.microscope, url, axes=TOMOGRAM_AXES, binned=(True, True, True), ngff_version=ngff_version,
        chunks=chunks, levels=levels, overwrite=overwrite, storage_options=storage_options, metadata=metadata,
        tilt_angles=angles,
    )


def cryocloud_attrs(image: NgffImage) -> CryocloudAttrs | None:
    """The validated cryocloud block of an image, None when it has none."""
    raw = image.attrs.get(ATTRS_KEY)
    if raw is None:
        return None
    try:
        return CryocloudAttrs.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise StoreError(image.url, f"invalid attribute block: {validation_problems(exc)}", field=ATTRS_KEY) from exc


def _check_axes(image: NgffImage, expected: tuple[str, ...]) -> None:
    if image.axis_names != expected:
        raise StoreError(image.url, f"has axes {image.axis_names}, expected {expected}", field="multiscales.axes")


def read_tomogram(url: str, *, level: int = 0, storage_options: dict | None = None, chunks: Any = None) -> Tomogram:
    """Lazily read a tomogram (z, y, x) from OME-Zarr (NGFF 0.4 or 0.5, with or without cryocloud block).

    Coordinates x, y, z (A) are the voxel centres of the level read (level n is shifted by
    (2**n - 1) / 2 level-0 voxels); the pixel size is that level's. `chunks`: None = one Dask
    chunk per zarr chunk, "auto" = larger chunks for bulk reads (see `NgffImage.dask_array`).
    CryoET Data Portal addresses (portal://, its bucket, client objects) go to `cryocloud.store.portal`.
    """
    if portal.is_portal_url(url):
        return portal.read_portal_tomogram(url, level=level, storage_options=storage_options, chunks=chunks)
    image = open_image(resolve(url, storage_options))
    _check_axes(image, ("z", "y", "x"))
    block = cryocloud_attrs(image)
    if block is not None and block.kind != "tomogram":
        raise StoreError(image.url, f"holds a {block.kind}, expected a tomogram", field=f"{ATTRS_KEY}.kind")
    array = spatial_array(image, level, ("z", "y", "x"), chunks)
    try:
        return Tomogram(
            array,
            block.microscope if block else Microscope(),
            None if block is None or block.tilt_angles is None else tuple(block.tilt_angles),
        )
    except ModelError as exc:
        raise StoreError(image.url, exc.problem, field=exc.field) from exc


def read_tilt_series(url: str, *, level: int = 0, storage_options: dict | None = None, chunks: Any = None) -> TiltSeries:
    """Lazily read a tilt series (tilt, y, x) from OME-Zarr with all its per-tilt coordinates (`chunks` as in read_tomogram).

    CryoET Data Portal addresses go to `cryocloud.store.portal` (angles from .rawtlt / metadata).
    """
    if portal.is_portal_url(url):
        return portal.read_portal_tilt_series(url, level=level, storage_options=storage_options, chunks=chunks)
    image = open_image(resolve(url, storage_options))
    _check_axes(image, ("tilt", "y", "x"))
    block = cryocloud_attrs(image)
    if block is None:
        raise StoreError(image.url, "is missing: a tilt series needs the tilt angles stored in the cryocloud block", field=ATTRS_KEY)
    if block.kind != "tilt_series":
        raise StoreError(image.url, f"holds a {block.kind}, expected a tilt series", field=f"{ATTRS_KEY}.kind")
    array = spatial_array(image, level, ("tilt", "y", "x"), chunks)
    n = array.sizes["tilt"]
    try:
        coords = {}
        for name, values in (block.per_tilt or {}).items():
            if len(values) != n:
                raise ModelError(f"{ATTRS_KEY}.per_tilt.{name}", f"has {len(values)} values for {n} tilts")
            coords[name] = ("tilt", np.asarray(values, dtype=np.int64 if name == "acquisition_order" else np.float64))
        return TiltSeries(array.assign_coords(coords), block.microscope, float(block.tilt_axis_angle or 0.0))
    except ModelError as exc:
        raise StoreError(image.url, exc.problem, field=exc.field) from exc


def image_info(url: str, *, storage_options: dict | None = None) -> dict:
    """Summary of an OME-Zarr image: shape, dtype, chunks (grid size and how many are stored) and scale per
    level, whether every chunk must be stored (`every_chunk_stored`: written by cryocloud), and the cryocloud block."""
    image = open_image(resolve(url, storage_options))
    levels = []
    for n in range(image.n_levels):
        arr = image.zarr_array(n)
        scale, translation = image.scale_translation(n)
        n_chunks = len(all_chunk_keys(arr))
        lost = missing_chunk_keys(arr, image.location, image.dataset_paths[n])
        levels.append({"path": image.dataset_paths[n], "shape": list(arr.shape), "chunks": list(arr.chunks),
                       "scale": scale.tolist(), "translation": translation.tolist(),
                       "n_chunks": n_chunks, "stored_chunks": n_chunks - len(lost)})
    block = cryocloud_attrs(image)
    return {
        "url": image.url,
        "format": f"OME-Zarr (NGFF {image.ngff_version}, zarr format {image.group.metadata.zarr_format})",
        "axes": list(image.axis_names),
        "dtype": str(image.zarr_array(0).dtype),
        "pixel_size": float(image.scale_translation(0)[0][-1]),
        "levels": levels,
        "every_chunk_stored": image.is_strict,
        ATTRS_KEY: None if block is None else block.model_dump(mode="json"),
    }

