"""Class probabilities of a tomogram from a trained picker, through Dask tiles with overlap.

The tomogram is padded at its far ends by reflection to a multiple of the network's 2**depth, cut
into tiles of `tile` voxels (a multiple of 2**depth), each tile extended by `overlap` voxels of its
neighbours (not beyond the volume: there the network's own zero padding applies, as in a
whole-volume pass), standardised (intensity_stats), run through the network and cropped back to
its core. With `overlap` >= the network's receptive radius (the default) every output voxel sees
exactly the input it would see in one whole-volume pass: the map has no seams. The weights enter
the graph once (one key).
"""

from __future__ import annotations

import functools

import dask
import dask.array as da
import numpy as np
import xarray as xr

from cryocloud.errors import ModelError
from cryocloud.learn.intensity import intensity_stats
from cryocloud.learn.model_io import Picker, PickerConfig, model_from_bytes, state_bytes
from cryocloud.learn.torch_import import device_for, import_torch
from cryocloud.model import Tomogram


@functools.lru_cache(maxsize=4)
def _cached_model(config_json: str, weights: bytes, device: str):
    return model_from_bytes(PickerConfig.model_validate_json(config_json), weights, device)


def _predict_block(block: np.ndarray, weights: bytes, config_json: str, mean: float, std: float, device: str) -> np.ndarray:
    torch = import_torch()
    model = _cached_model(config_json, weights, device)
    x = torch.from_numpy(((np.asarray(block, dtype=np.float32) - mean) / std)[None, None]).to(device)
    with torch.no_grad():
        prob = torch.softmax(model(x), dim=1)[0]
    return prob.cpu().numpy().astype(np.float32)


def _axis_chunks(n: int, tile: int, depth: int) -> tuple[int, ...]:
    """Tiles of `tile` voxels; a last remainder thinner than the overlap joins the tile before it."""
    chunks = [tile] * (n // tile) + ([n % tile] if n % tile else [])
    if len(chunks) > 1 and chunks[-1] < depth:
        chunks[-2:] = [chunks[-2] + chunks[-1]]
    return tuple(chunks)


def predict(tomogram: Tomogram, picker: Picker, *, tile: int = 64, overlap: int | None = None, device: str = "auto") -> xr.DataArray:
    """Lazy class probabilities, dims ("class", "z", "y", "x"), float32, coordinate `class` = class names."""
    cfg = picker.config
    m = cfg.unet.multiple
    px = tomogram.pixel_size
    if abs(px - cfg.pixel_size_a) > 0.05 * cfg.pixel_size_a:
        raise ModelError("pixel_size", f"tomogram voxels are {px} A, the picker was trained at {cfg.pixel_size_a} A; rebin the tomogram")
    if tile % m or tile < m:
        raise ModelError("tile", f"must be a positive multiple of 2**depth = {m}, got {tile}")
    depth = cfg.unet.receptive_radius if overlap is None else int(overlap)
    depth = -(-depth // m) * m
    if tile < depth:
        raise ModelError("tile", f"must be at least the overlap ({depth} voxels) so that only neighbouring tiles overlap, got {tile}")
    mean, std = intensity_stats(tomogram)
    data = tomogram.data.data
    data = data if isinstance(data, da.Array) else da.from_array(np.asarray(data))
    shape = data.shape
    data = da.pad(data.astype(np.float32), [(0, -n % m) for n in shape], mode="reflect")
    data = data.rechunk(tuple(_axis_chunks(n, tile, depth) for n in data.shape))
    extended = da.overlap.overlap(data, depth={0: depth, 1: depth, 2: depth}, boundary="none")
    weights = dask.delayed(state_bytes(picker.model), pure=True)
    device = device_for(device)
    n_classes = cfg.unet.n_classes
    prob = extended.map_blocks(
        _predict_block, weights, cfg.model_dump_json(), mean, std, device,
        dtype=np.float32, new_axis=0, chunks=((n_classes,),) + extended.chunks,
    )
    prob = da.overlap.trim_internal(prob, {0: 0, 1: depth, 2: depth, 3: depth}, boundary="none")
    prob = prob[:, : shape[0], : shape[1], : shape[2]]
    coords = {"class": cfg.classes, **{d: tomogram.data.coords[d].values for d in ("z", "y", "x")}}
    return xr.DataArray(prob, dims=("class", "z", "y", "x"), coords=coords, name="probability", attrs={"pixel_size": px})


def class_map(probabilities: xr.DataArray, name: str = "particle") -> Tomogram:
    """One class's probability (z, y, x) as a Tomogram (lazy), e.g. to write with cryocloud.store."""
    if name not in list(probabilities.coords["class"].values):
        raise ModelError("class", f"expected one of {list(probabilities.coords['class'].values)}, got {name!r}")
    sel = probabilities.sel({"class": name}).drop_vars("class")
    return Tomogram.from_array(sel.data, pixel_size=float(probabilities.attrs["pixel_size"]), name=f"{name}_probability")
