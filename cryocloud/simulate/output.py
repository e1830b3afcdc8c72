"""`write_simulation` (and `read_simulated_frames`): a simulation's outputs and ground truth as OME-Zarr plus tables, via `cryocloud.store`.

Layout under `url`:
- ``tilt_series.zarr``: raw tilt series (tilt, y, x), counts, with the acquisition metadata;
- ``frames.zarr`` (with movies): (tilt, frame, y, x), one level, per-tilt metadata and the frame
  dose in the ``"cryocloud_frames"`` attribute block (the store's tilt-series block has no frame axis);
- ``ground_truth/volume.zarr``: the clean potential (z, y, x, volts);
- ``ground_truth/labels.zarr``: labels (z, y, x) uint8, 0 ice, 1 particle, 2 membrane, 3 gold;
- ``ground_truth/particles.csv``: positions (A), rotation matrices, class names;
- ``ground_truth/truth.json``: per-tilt truth (shifts, defocus, drift, counts), objects, config.
Images are written data first; ``truth.json`` is written last and marks the output complete.
"""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import xarray as xr

from cryocloud.errors import StoreError
from cryocloud.model import TiltSeries
from cryocloud.simulate.twin import SimulationResult
from cryocloud.store import resolve, write_tilt_series, write_tomogram
from cryocloud.store.ngff import open_image, write_multiscale
from cryocloud.store.particles_csv import write_particles_csv
from cryocloud.store.textfiles import write_text

FRAMES_ATTRS_KEY = "cryocloud_frames"
FRAME_AXES = [
    {"name": "tilt", "type": "other"},
    {"name": "frame", "type": "other"},
    {"name": "y", "type": "space", "unit": "angstrom"},
    {"name": "x", "type": "space", "unit": "angstrom"},
]


def _frames_attrs(result: SimulationResult) -> dict:
    fr = result.frames
    per_tilt = {name: [float(v) for v in np.asarray(fr.data.coords[name].values, dtype=np.float64)]
                for name in ("tilt_angle", "acquisition_order", "exposure", "pre_exposure")}
    return {
        FRAMES_ATTRS_KEY: {
            "schema_version": 1,
            "pixel_size": fr.pixel_size,
            "microscope": fr.microscope.model_dump(mode="json"),
            "tilt_axis_angle": fr.tilt_axis_angle,
            "per_tilt": per_tilt,
            "frames_per_tilt": int(fr.data.sizes["frame"]),
            "frame_exposure": [e / fr.data.sizes["frame"] for e in per_tilt["exposure"]],
        }
    }


def write_simulation(result: SimulationResult, url: str, *, overwrite: bool = False, storage_options: dict | None = None) -> None:
    """Write the simulation's images and ground truth under `url` (local path or s3://; see module docstring)."""
    root = resolve(url, storage_options)
    cfg = result.config
    meta = {"stage": "simulate", "parameters": cfg.model_dump(mode="json")}
    common = dict(overwrite=overwrite, storage_options=storage_options)
    write_tilt_series(result.tilt_series, root.child("tilt_series.zarr").url, metadata=meta, **common)
    if result.frames is not None:
        write_multiscale(
            result.frames.data.data, root.child("frames.zarr"), axes=FRAME_AXES, binned=(False, False, True, True),
            pixel_size=result.frames.pixel_size, levels=1, overwrite=overwrite, extra_attrs=_frames_attrs(result), name="frames",
        )
    truth_dir = root.child("ground_truth")
    write_tomogram(result.volume, truth_dir.child("volume.zarr").url, metadata=meta, **common)
    write_tomogram(result.truth.labels, truth_dir.child("labels.zarr").url, levels=1, metadata=meta, **common)
    write_particles_csv(result.particles, truth_dir.child("particles.csv").url, **common)
    truth = {"config": cfg.model_dump(mode="json"), **result.truth.to_json()}
    write_text(truth_dir.child("truth.json").url, json.dumps(truth, indent=1), **common)


def read_simulated_frames(url: str, summed: TiltSeries, storage_options: dict | None = None) -> TiltSeries:
    """The digital twin's movies (`<simulation>/frames.zarr`, (tilt, frame, y, x), as
    `write_simulation` wrote them) as a lazy frames TiltSeries with the per-tilt metadata of its summed
    tilt series `summed` (the same tilts in the same order)."""
    image = open_image(resolve(url, storage_options))
    array = image.zarr_array(0)
    if array.ndim != 4 or array.shape[0] != summed.n_tilts or array.shape[2:] != summed.data.shape[1:]:
        raise StoreError(url, f"holds {array.shape}; expected (tilt, frame, y, x) movies of the {summed.data.shape} tilt series")
    frames = da.from_zarr(array).rechunk((1, -1, -1, -1))
    coords = {k: v for k, v in summed.data.coords.items() if v.dims == ("tilt",)}
    data = xr.DataArray(frames, dims=("tilt", "frame", "y", "x"), coords=coords, attrs=dict(summed.data.attrs), name="frames")
    return TiltSeries(data, summed.microscope, summed.tilt_axis_angle)
