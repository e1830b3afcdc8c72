"""Lazy xarray views of OME-Zarr levels with physical coordinates (A) at the voxel centres."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from cryocloud.errors import StoreError
from cryocloud.store.ngff import NgffImage


def _check_isotropic(url: str, dims: tuple[str, ...], scale: np.ndarray) -> None:
    """One pixel size for every spatial axis (within 0.1 %): cryocloud's model has a single one."""
    sizes = {d: float(scale[i]) for i, d in enumerate(dims) if d in ("z", "y", "x")}
    if max(sizes.values()) > min(sizes.values()) * 1.001:
        shown = ", ".join(f"{d} {v:g}" for d, v in sizes.items())
        raise StoreError(url, f"pixel sizes differ between axes ({shown} A); expected one isotropic pixel size", field="pixel_size")


def spatial_array(image: NgffImage, level: int, dims: tuple[str, ...], chunks: Any, *, pooled: bool = False) -> xr.DataArray:
    """Lazy DataArray of a level with x/y(/z) coordinates (A) at the voxel centres of that level.

    `pooled`: the pyramid is mean-pooled but its levels carry scale transforms only (the CryoET
    Data Portal): a level without a translation then gets (scale_n - scale_0) / 2 per axis, the
    centre of the level-0 voxels it averages.
    """
    data = image.dask_array(level, chunks)
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
        raise StoreError(image.url, f"dtype {data.dtype} is not supported; expected real numbers (integer or float)", field="dtype")
    scale, translation = image.scale_translation(level)
    _check_isotropic(image.url, dims, scale)
    if pooled and not any(t.get("type") == "translation" for t in image.transforms[level]):
        translation = (scale - image.scale_translation(0)[0]) / 2
    px0 = image.scale_translation(0)[0][-1]
    coords = {
        d: translation[i] + np.arange(data.shape[i]) * scale[i]
        for i, d in enumerate(dims)
        if d in ("z", "y", "x")
    }
    attrs = {"pixel_size": float(scale[-1]), "source": image.url, "level": level, "level0_pixel_size": float(px0)}
    return xr.DataArray(data, dims=dims, coords=coords, attrs=attrs, name=image.location.name)
