"""A template-matching job's output folder (local or s3://), resumable.

    <out>/blocks/<search id>/*.npz   finished sub-volumes (the resume cache)
    <out>/scores.zarr                OME-Zarr score map (z, y, x) float32
    <out>/orientation.zarr           OME-Zarr orientation-index map (z, y, x) int32
    <out>/angles.npy                 the rotations (N, 3, 3) the indices refer to
    <out>/match.json                 search summary (written last: the job is complete); with
                                     `block_moments` (nz, ny, nx, 3) and `block_edges_zyx`, the score
                                     moments per sub-volume block (results before them: absent),
                                     `origin_xyz_a` the searched volume's first voxel (A), `job`

`run_match` runs a `MatchJob` (cryocloud.pick.job): it first searches every sub-volume missing from
the cache (only the score moments come back to the client), then streams the maps from the cache
into OME-Zarr through cryocloud.store; `read_search` gives them back for a `PeaksJob`. Rerunning an interrupted job searches only the missing sub-volumes.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import xarray as xr

from cryocloud.errors import ModelError, OutputExistsError, StoreError
from cryocloud.model import Tomogram
from cryocloud.pick.job import MatchJob, ScoreMaps
from cryocloud.pick.match import BlockCache, fingerprint
from cryocloud.pick.peaks import BlockMoments
from cryocloud.pick.spectrum import RadialSpectrum
from cryocloud.pick.template import Template
from cryocloud.pick.weighting import TiltWeighting
from cryocloud.progress import compute
from cryocloud.store import open_url, read_tomogram, resolve, write_tomogram


def run_match(
    tomogram: Tomogram,
    template: Template,
    rotations: np.ndarray | None,
    url: str,
    *,
    job: MatchJob = MatchJob(),
    tilts: TiltWeighting | None = None,
    noise: RadialSpectrum | None = None,
    tomogram_mask=None,
    overwrite: bool = False,
    storage_options: dict | None = None,
    description: dict | None = None,
) -> dict:
    """Run `job` (the arguments of `MatchJob.run`; `rotations` None: the job's), persisting finished
    sub-volumes, and write its results to `url`; returns the summary."""
    out = resolve(url, storage_options)
    summary_loc = out.child("match.json")
    if summary_loc.exists():
        if not overwrite:
            raise OutputExistsError(f"{summary_loc.url}: a finished template-matching result exists; use overwrite=True (--overwrite)")
        out.require_writable()
        out.filesystem().rm(out.path, recursive=True)
    rotations = job.rotations(template) if rotations is None else rotations
    settings = job.settings(tomogram.pixel_size, noise)
    search_id = fingerprint(template, rotations, tilts, settings, tomogram.shape)
    cache = BlockCache(out.child("blocks", search_id).url, out.storage_options)
    search = dict(tilts=tilts, rotations=rotations, noise=noise, mask=tomogram_mask, cache=cache)
    searched = job.run(tomogram, template, **search)
    (blocks,) = compute(searched.block_moments, description=f"template matching: {len(rotations):,} orientations")
    sigma, count = blocks.total()
    stored = job.run(tomogram, template, **search)
    summary = {
        "n_orientations": int(len(rotations)),
        "score_std": sigma,
        "n_search": count,
        "block_moments": blocks.moments.tolist(),
        "block_edges_zyx": [e.tolist() for e in blocks.edges],
        "voxel_size": tomogram.pixel_size,
        "origin_xyz_a": [float(tomogram.data.coords[d].values[0]) for d in "xyz"],
        "template_radius_voxels": float(template.radius),
        "particle_radius_voxels": float(template.particle_radius),
        "shape_zyx": list(tomogram.shape),
        "search_id": search_id,
        "job": job.model_dump(mode="json"),
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        **(description or {}),
    }
    for name, data in (("scores", stored.scores), ("orientation", stored.orientation)):
        write_tomogram(
            replace(tomogram, data=data), out.child(f"{name}.zarr").url, overwrite=overwrite, storage_options=storage_options, metadata={"template_matching": summary}
        )
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(rotations, dtype=np.float64))
    with open_url(out.child("angles.npy").url, "wb", storage_options=storage_options) as f:
        f.write(buffer.getvalue())
    with open_url(summary_loc.url, "w", storage_options=storage_options) as f:
        json.dump(summary, f, indent=1)
    return summary


def read_search(url: str, *, storage_options: dict | None = None) -> tuple[ScoreMaps, dict]:
    """A finished job's score maps for peak extraction and its summary (see `read_match`)."""
    scores, orientation, rotations, summary = read_match(url, storage_options=storage_options)
    particle_radius = float(summary.get("particle_radius_voxels", summary["template_radius_voxels"] / 2)) * float(summary["voxel_size"])
    maps = ScoreMaps(scores, orientation, rotations, summary["score_std"], summary["n_search"], particle_radius,
                     block_moments_of(summary, f"{url}/match.json"), summary.get("search_id"))
    return maps, summary


def read_match(url: str, *, storage_options: dict | None = None) -> tuple[xr.DataArray, xr.DataArray, np.ndarray, dict]:
    """A finished job's lazy score and orientation maps, its rotations and summary (StoreError when
    it is not finished). The maps' coordinates (A) are the searched tomogram's: its first voxel at
    `origin_xyz_a` (a binned pyramid level's is half a level-0 voxel per binning; 0 for searches
    stored before it was recorded)."""
    out = resolve(url, storage_options)
    summary_url = out.child("match.json").url
    try:
        with open_url(summary_url, "r", storage_options=storage_options) as f:
            summary = json.load(f)
    except StoreError as exc:
        raise StoreError(out.url, "is not a finished template-matching result (no match.json); rerun `cryocloud match` to resume it") from exc
    except ValueError as exc:
        raise StoreError(summary_url, f"is not JSON ({exc}); expected the summary `cryocloud match` writes") from exc
    if not isinstance(summary, dict):
        raise StoreError(summary_url, f"holds a {type(summary).__name__}, expected a JSON object (the match summary)")
    for key in ("score_std", "n_search"):  # zero or NaN: the search scored nothing (a constant tomogram, an empty mask)
        value = summary.get(key)
        if not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
            raise StoreError(summary_url, f"is {value!r}; expected a positive number: the search found no score variation to pick from", field=key)
    rotations = _read_rotations(out.child("angles.npy").url, summary.get("n_orientations"), storage_options)
    origin = summary.get("origin_xyz_a", [0.0, 0.0, 0.0])
    if not (isinstance(origin, list) and len(origin) == 3 and all(isinstance(v, (int, float)) and np.isfinite(v) for v in origin)):
        raise StoreError(summary_url, f"is {origin!r}; expected the searched tomogram's first voxel (x, y, z) in A", field="origin_xyz_a")
    origin = dict(zip("xyz", origin))
    scores, orientation = (_shifted(read_tomogram(out.child(f"{name}.zarr").url, storage_options=storage_options).data, origin)
                           for name in ("scores", "orientation"))
    return scores, orientation, rotations, summary


def _shifted(data: xr.DataArray, origin: dict[str, float]) -> xr.DataArray:
    """`data` with its first voxel at `origin` (A per axis): the stored maps start at 0."""
    return data.assign_coords({d: data.coords[d].values - data.coords[d].values[0] + float(origin[d]) for d in "zyx"})


def block_moments_of(summary: dict, source: str = "match.json") -> BlockMoments | None:
    """The per-block score moments of a match summary; None for results written before them."""
    if "block_moments" not in summary:
        return None
    try:
        moments = np.asarray(summary["block_moments"], dtype=np.float64)
        edges = tuple(np.asarray(e, dtype=np.int64) for e in summary["block_edges_zyx"])
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(source, f"block_moments / block_edges_zyx unreadable ({exc}); expected a (nz, ny, nx, 3) list and three lists of block edges", field="block_moments") from exc
    if len(edges) != 3:
        raise StoreError(source, f"block_edges_zyx has {len(edges)} axes, expected 3 (z, y, x)", field="block_edges_zyx")
    try:
        return BlockMoments(moments, edges)
    except ModelError as exc:
        raise StoreError(source, str(exc), field="block_moments") from exc


def _read_rotations(url: str, count: int | None, storage_options: dict | None) -> np.ndarray:
    """The rotation matrices (N, 3, 3) of a match folder's angles.npy (never unpickled); StoreError
    naming the file when it is not a finite float array of that shape (N = `count` when known)."""
    with open_url(url, "rb", storage_options=storage_options) as f:
        raw = f.read()
    expected = f"a .npy array of {count if count is not None else 'N'} rotation matrices (N, 3, 3), as `cryocloud match` writes"
    try:
        rotations = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # pickled object arrays, truncated or foreign files
        raise StoreError(url, f"is not readable ({exc}); expected {expected}", field="rotations") from exc
    if not isinstance(rotations, np.ndarray) or rotations.dtype.kind not in "fiu" or rotations.ndim != 3 or rotations.shape[1:] != (3, 3):
        found = f"{rotations.dtype} array of shape {rotations.shape}" if isinstance(rotations, np.ndarray) else type(rotations).__name__
        raise StoreError(url, f"holds a {found}; expected {expected}", field="rotations")
    if (count is not None and rotations.shape[0] != count) or not np.isfinite(rotations).all():
        problem = "non-finite values" if count is None or rotations.shape[0] == count else f"{rotations.shape[0]} rotations"
        raise StoreError(url, f"holds {problem}; expected {expected}", field="rotations")
    return rotations.astype(np.float64, copy=False)
