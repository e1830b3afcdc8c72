"""Reading pick lists in the formats `cryocloud extract-peaks` writes (cryocloud.pick.formats):
portal ndjson (voxels), RELION 5 STAR (centred Angstrom, or rlnCoordinateX/Y/Z in voxels), copick
JSON (Angstrom) and CSV (Angstrom)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryocloud.errors import ModelError, StoreError
from cryocloud.geometry import centre_index, relion_euler_to_matrix
from cryocloud.model import Particles
from cryocloud.pick.formats import format_from_name, from_ndjson
from cryocloud.store import read_particles_csv
from cryocloud.store.textfiles import read_text

CENTRED = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
VOXELS = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")


def _from_star(text: str, pixel_size: float, shape_zyx: tuple[int, int, int], source: str) -> Particles:
    with tempfile.TemporaryDirectory() as tmp:  # starfile reads paths only
        path = Path(tmp) / "picks.star"
        path.write_text(text)
        try:
            blocks = starfile.read(path, always_dict=True)
        except Exception as exc:  # starfile raises several parser errors
            raise StoreError(source, f"is not a readable STAR file: {exc}") from exc
    table = blocks.get("particles", next((b for b in blocks.values() if isinstance(b, pd.DataFrame)), None))
    if table is None:
        raise StoreError(source, "holds no particle table", field="data_particles")
    if set(CENTRED) <= set(table.columns):
        centre = np.array([centre_index(n) for n in shape_zyx[::-1]], dtype=np.float64) * pixel_size
        positions = table[list(CENTRED)].to_numpy(np.float64) + centre
    elif set(VOXELS) <= set(table.columns):
        positions = table[list(VOXELS)].to_numpy(np.float64) * pixel_size
    else:
        raise StoreError(source, f"expected columns {CENTRED} (A) or {VOXELS} (voxels)", field="rlnCenteredCoordinateXAngst")
    euler = [table[c].to_numpy(np.float64) if c in table else np.zeros(len(table)) for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")]
    rotations = relion_euler_to_matrix(*euler).reshape(-1, 3, 3)
    score_col = next((c for c in ("rlnLCCmax", "rlnAutopickFigureOfMerit") if c in table), None)
    scores = table[score_col].to_numpy(np.float64) if score_col else None
    tomogram = table["rlnTomoName"].astype(str).to_numpy(dtype=object) if "rlnTomoName" in table else ""
    return Particles.create(positions, rotations, scores, tomogram)


def _from_copick(text: str, source: str) -> Particles:
    try:
        document = json.loads(text)
        points = document["points"] or []
        positions = [[float(p["location"][k]) for k in "xyz"] for p in points]
        rotations = [np.asarray(p.get("transformation_", np.eye(4)), dtype=np.float64)[:3, :3] for p in points]
        scores = [float(p.get("score", np.nan)) for p in points]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise StoreError(source, f"is not a copick picks file (points with location x, y, z in A): {exc}", field="points") from exc
    return Particles.create(positions, np.asarray(rotations).reshape(-1, 3, 3), scores, class_name=str(document.get("pickable_object_name", "")))


def read_picks(
    url: str, *, pixel_size: float | None = None, shape_zyx: tuple[int, int, int] | None = None, fmt: str | None = None, storage_options: dict | None = None
) -> Particles:
    """Particles (positions in A) from a pick list; ndjson and STAR need the tomogram's voxel size
    (and STAR its shape, for centred coordinates)."""
    fmt = fmt or format_from_name(url)
    if fmt == "csv":
        return read_particles_csv(url, storage_options=storage_options)
    loc, text = read_text(url, storage_options=storage_options)
    if fmt == "copick":
        return _from_copick(text, loc.url)
    if pixel_size is None or (fmt == "star" and shape_zyx is None):
        raise ModelError("pixel_size", f"reading {fmt} picks needs the tomogram's voxel size and shape", source=loc.url)
    if fmt == "ndjson":
        return from_ndjson(text, pixel_size, source=loc.url)
    if fmt == "star":
        return _from_star(text, pixel_size, shape_zyx, loc.url)
    raise ModelError("format", f"expected csv, ndjson, star or copick, got {fmt!r}", source=loc.url)
