"""Particle lists from template matching in the formats other tools read.

- "ndjson": CryoET Data Portal annotations, one `orientedPoint` a line, `location` in voxels
  (x, y, z) and `xyz_rotation_matrix` (our rotation matrix, reference -> particle);
- "star": RELION 5 particles, `rlnCenteredCoordinate{X,Y,Z}Angst` relative to the tomogram centre
  (voxel n // 2 per axis, cryocloud.geometry.centre_index) and ZYZ Euler angles
  (rlnAngleRot, rlnAngleTilt, rlnAnglePsi; cryocloud.geometry.matrix_to_relion_euler);
- "copick": a copick picks JSON, `location` in Angstrom and a 4x4 `transformation_`;
- "csv": `Particles.to_dataframe()` (x, y, z in A, score, tomogram, class_name, r00..r22).

`read_picks` reads all four back (STAR also with rlnCoordinateX/Y/Z in voxels).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import starfile

from cryocloud.errors import ModelError, StoreError
from cryocloud.geometry import centre_index, relion_euler_to_matrix
from cryocloud.model import Particles
from cryocloud.store import open_url, read_particles_csv
from cryocloud.store.relion5 import particles_tables
from cryocloud.store.textfiles import read_text
from cryocloud.store.portal.annotations import from_ndjson, to_ndjson  # noqa: F401 (re-exported)
from cryocloud.store.portal.copick import from_copick, to_copick  # noqa: F401 (re-exported)

PickFormat = Literal["ndjson", "star", "copick", "csv"]
FORMATS: tuple[str, ...] = ("ndjson", "star", "copick", "csv")
CENTRED = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
VOXELS = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")


def to_star(particles: Particles, pixel_size: float, shape_zyx: tuple[int, int, int]) -> str:
    """RELION 5 particles (data_particles only; `cryocloud.store.relion5` writes the whole set with its tilt series)."""
    centre = np.array([centre_index(n) for n in shape_zyx[::-1]], dtype=np.float64) * pixel_size  # x, y, z
    return starfile.to_string(particles_tables(particles, centre, tomo_names=particles.tomogram))


def from_star(text: str, pixel_size: float, shape_zyx: tuple[int, int, int], *, source: str = "star") -> Particles:
    """`Particles` (positions in A) from a RELION STAR particle table: `rlnCenteredCoordinate{X,Y,Z}Angst`
    (relative to the centre voxel of a tomogram of `shape_zyx`) or `rlnCoordinate{X,Y,Z}` (voxels of
    `pixel_size` A); ZYZ Euler angles (deg, zero when absent) and rlnLCCmax / rlnAutopickFigureOfMerit scores."""
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


def picks_text(particles: Particles, fmt: str, *, pixel_size: float, shape_zyx: tuple[int, int, int], object_name: str = "particle", run_name: str = "") -> str:
    """The particle list serialised in `fmt` (one of FORMATS)."""
    if fmt == "ndjson":
        return to_ndjson(particles, pixel_size)
    if fmt == "star":
        return to_star(particles, pixel_size, shape_zyx)
    if fmt == "copick":
        return to_copick(particles, object_name=object_name, run_name=run_name)
    if fmt == "csv":
        return particles.to_dataframe().to_csv(index=False)
    raise ModelError("format", f"expected one of {FORMATS}, got {fmt!r}")


def format_from_name(url: str) -> str:
    """Format implied by a file name: .ndjson, .star, .json (copick) or .csv."""
    suffixes = {".ndjson": "ndjson", ".star": "star", ".json": "copick", ".csv": "csv"}
    for suffix, fmt in suffixes.items():
        if str(url).lower().endswith(suffix):
            return fmt
    raise ModelError("format", f"cannot tell the format of {url!r}: use .ndjson, .star, .json (copick) or .csv, or give --format")


def write_picks(particles: Particles, url: str, fmt: str, *, storage_options: dict | None = None, **options) -> None:
    """Write a particle list (see `picks_text` for the options)."""
    text = picks_text(particles, fmt, **options)
    with open_url(url, "w", storage_options=storage_options) as f:
        f.write(text)


def read_picks(
    url: str, *, pixel_size: float | None = None, shape_zyx: tuple[int, int, int] | None = None, fmt: str | None = None,
    storage_options: dict | None = None,
) -> Particles:
    """Particles (positions in A) from a pick list in one of FORMATS (`fmt`, else from the file name).

    ndjson and STAR need the tomogram's voxel size `pixel_size` (A), STAR also its shape (z, y, x)
    for centred coordinates; ModelError when missing.
    """
    fmt = fmt or format_from_name(url)
    if fmt == "csv":
        return read_particles_csv(url, storage_options=storage_options)
    loc, text = read_text(url, storage_options=storage_options)
    if fmt == "copick":
        return from_copick(text, source=loc.url)
    if fmt not in FORMATS:
        raise ModelError("format", f"expected one of {FORMATS}, got {fmt!r}", source=loc.url)
    if pixel_size is None or (fmt == "star" and shape_zyx is None):
        raise ModelError("pixel_size", f"reading {fmt} picks needs the tomogram's voxel size and shape", source=loc.url)
    if fmt == "ndjson":
        return from_ndjson(text, pixel_size, source=loc.url)
    return from_star(text, pixel_size, shape_zyx, source=loc.url)
