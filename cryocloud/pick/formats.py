"""Particle lists from template matching in the formats other tools read.

- "ndjson": CryoET Data Portal annotations, one `orientedPoint` a line, `location` in voxels
  (x, y, z) and `xyz_rotation_matrix` (our rotation matrix, reference -> particle);
- "star": RELION 5 particles, `rlnCenteredCoordinate{X,Y,Z}Angst` relative to the tomogram centre
  (voxel n // 2 per axis, cryocloud.geometry.centre_index) and ZYZ Euler angles
  (rlnAngleRot, rlnAngleTilt, rlnAnglePsi; cryocloud.geometry.matrix_to_relion_euler);
- "copick": a copick picks JSON, `location` in Angstrom and a 4x4 `transformation_`;
- "csv": `Particles.to_dataframe()` (x, y, z in A, score, tomogram, class_name, r00..r22).
"""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import pandas as pd
import starfile

from cryocloud.errors import ModelError
from cryocloud.geometry import centre_index, matrix_to_relion_euler
from cryocloud.model import Particles
from cryocloud.store import open_url
from cryocloud.store.portal.annotations import from_ndjson, to_ndjson  # noqa: F401 (re-exported)
from cryocloud.store.portal.copick import from_copick, to_copick  # noqa: F401 (re-exported)

PickFormat = Literal["ndjson", "star", "copick", "csv"]
FORMATS: tuple[str, ...] = ("ndjson", "star", "copick", "csv")


def to_star(particles: Particles, pixel_size: float, shape_zyx: tuple[int, int, int]) -> str:
    centre = np.array([centre_index(n) for n in shape_zyx[::-1]], dtype=np.float64) * pixel_size  # x, y, z
    centred = particles.positions - centre
    euler = matrix_to_relion_euler(particles.rotations).reshape(-1, 3)
    table = pd.DataFrame(
        {
            "rlnTomoName": particles.tomogram.astype(str),
            "rlnCenteredCoordinateXAngst": centred[:, 0],
            "rlnCenteredCoordinateYAngst": centred[:, 1],
            "rlnCenteredCoordinateZAngst": centred[:, 2],
            "rlnAngleRot": euler[:, 0],
            "rlnAngleTilt": euler[:, 1],
            "rlnAnglePsi": euler[:, 2],
            "rlnLCCmax": particles.scores,
        }
    )
    return starfile.to_string({"particles": table})


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
