"""NGFF 0.4 label images: integer (z, y, x) segmentations, inside an image or on their own.

Inside an image (the URL is ``<image>/labels/<name>``, e.g. ``tomo.zarr/labels/membranes``):
- the label image is a multiscale image with the image's pyramid (same level count, shapes, scale
  and translation) and ``"image-label": {"version": "0.4", "source": {"image": "../../"}}``;
- the ``labels`` group lists it: ``{"labels": [..., "<name>"]}``, updated LAST, after the label
  image is complete (data first, metadata last). Only the ``labels/`` group of the image is
  written; the image's own arrays and attributes are never touched.
Anywhere else, the same label image stands alone (no ``source``).

Levels are max-pooled (``"type": "max"``): a coarse voxel keeps a label of the voxels it covers
(the largest id) instead of an average of ids. Provenance goes in a ``"cryocloud_labels"`` block.
"""

from __future__ import annotations

import posixpath
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from cryocloud.errors import OutputExistsError, StoreError
from cryocloud.model import pixel_size_of
from cryocloud.store.arrays import spatial_array
from cryocloud.store.images import TOMOGRAM_AXES, source_locations
from cryocloud.store.location import Location, os_errors_as_store_errors, resolve
from cryocloud.store.ngff import open_image, write_multiscale

LABELS_GROUP = "labels"
LABEL_ATTRS_KEY = "cryocloud_labels"


def parent_image(loc: Location) -> Location | None:
    """The image a ``<image>/labels/<name>`` location belongs to, or None for any other location."""
    head, name = posixpath.split(loc.path.rstrip("/"))
    image, group = posixpath.split(head)
    if group != LABELS_GROUP or not name or not image:
        return None
    return Location(loc.protocol, image, loc.storage_options)


def _integer_array(labels: Any, url: str) -> da.Array:
    data = labels.data if isinstance(labels, xr.DataArray) else labels
    array = data if isinstance(data, da.Array) else da.from_array(np.asarray(data))
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise StoreError(url, f"label images hold integers, got dtype {array.dtype}", field="dtype")
    if array.ndim != 3:
        raise StoreError(url, f"expected a (z, y, x) label volume, got shape {array.shape}", field="dims")
    return array


def _add_to_labels_group(image_loc: Location, name: str) -> None:
    loc = image_loc.child(LABELS_GROUP)
    store = loc.zarr_store(read_only=False)
    with os_errors_as_store_errors(loc.url, "written"):
        group = zarr.open_group(store=store, mode="a", zarr_format=2, use_consolidated=False)
        names = group.attrs.get("labels", [])
        if not isinstance(names, list):
            raise StoreError(loc.url, f"attribute 'labels' is {names!r}; expected a list of label image names", field="labels")
        if name not in names:
            group.attrs["labels"] = names + [name]


def write_labels(
    labels: xr.DataArray | da.Array | np.ndarray,
    url: str,
    *,
    pixel_size: float | None = None,
    levels: int | None = None,
    chunks=None,
    overwrite: bool = False,
    storage_options: dict | None = None,
    metadata: dict | None = None,
) -> None:
    """Write an integer label volume (z, y, x) as an NGFF 0.4 label image (see the module docstring).

    Inside an image the shape must equal the image's level 0 and the pyramid follows the image
    (`levels` defaults to its level count); the pixel size (A) defaults to the image's, else to
    the DataArray's. Refuses existing label images unless `overwrite`.
    """
    loc = resolve(url, storage_options)
    array = _integer_array(labels, loc.url)
    image_loc = parent_image(loc)
    extra: dict[str, Any] = {"image-label": {"version": "0.4"}, LABEL_ATTRS_KEY: dict(metadata or {})}
    sources = source_locations(array)
    if image_loc is not None:
        image = open_image(image_loc)
        if image.ngff_version != "0.4":
            raise StoreError(image.url, f"is NGFF {image.ngff_version}; label images are written into NGFF 0.4 images only", field="ngff_version")
        if tuple(image.zarr_array(0).shape) != tuple(array.shape):
            raise StoreError(loc.url, f"labels of shape {array.shape} do not match the image's {image.zarr_array(0).shape}", field="shape")
        pixel_size = float(image.scale_translation(0)[0][-1])
        levels = image.n_levels if levels is None else levels
        extra["image-label"]["source"] = {"image": "../../"}
        sources = [s for s in sources if s.url != image.url]  # reading the image while writing its labels/ is fine
    if pixel_size is None:
        if not isinstance(labels, xr.DataArray):
            raise StoreError(loc.url, "the pixel size is unknown; pass pixel_size (A)", field="pixel_size")
        pixel_size = pixel_size_of(labels)
    write_multiscale(
        array, loc, axes=TOMOGRAM_AXES, binned=(True, True, True), pixel_size=float(pixel_size), ngff_version="0.4",
        chunks=chunks, levels=3 if levels is None else levels, overwrite=overwrite, extra_attrs=extra, sources=sources,
        name=loc.name, pooling="max",
    )
    if image_loc is not None:
        _add_to_labels_group(image_loc, loc.name)


def read_labels(url: str, *, level: int = 0, storage_options: dict | None = None) -> xr.DataArray:
    """Lazily read a label image (z, y, x) with coordinates in A; StoreError when it is not one."""
    image = open_image(resolve(url, storage_options))
    if "image-label" not in image.attrs:
        raise StoreError(image.url, "has no 'image-label' metadata: not an NGFF label image", field="image-label")
    if image.axis_names != ("z", "y", "x"):
        raise StoreError(image.url, f"has axes {image.axis_names}, expected ('z', 'y', 'x')", field="multiscales.axes")
    return spatial_array(image, level, ("z", "y", "x"), None)


def refuse_existing(url: str, storage_options: dict | None = None) -> None:
    """OutputExistsError when a complete label image exists at `url` (checked before long work)."""
    loc = resolve(url, storage_options)
    try:
        open_image(loc)
    except StoreError:
        return
    raise OutputExistsError(f"{loc.url}: a label image exists already; pass overwrite=True (--overwrite) to replace it")
