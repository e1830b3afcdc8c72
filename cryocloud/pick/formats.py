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

PickFormat = Literal["ndjson", "star", "copick", "csv"]
FORMATS: tuple[str, ...] = ("ndjson", "star", "copick", "csv")


def to_ndjson(particles: Particles, pixel_size: float) -> str:
    lines = []
    for pos, rot, score in zip(particles.positions, particles.rotations, particles.scores):
        x, y, z = (float(v) for v in pos / pixel_size)
        record = {"type": "orientedPoint", "location": {"x": x, "y": y, "z": z}, "xyz_rotation_matrix": rot.tolist()}
        if np.isfinite(score):
            record["score"] = float(score)
        lines.append(json.dumps(record))
    return "".join(line + "\n" for line in lines)


NDJSON_TYPES = ("point", "orientedPoint", "instancePoint")


def from_ndjson(text: str, pixel_size: float, *, source: str = "ndjson", tomogram: str = "", class_name: str = "") -> Particles:
    """Particles from portal ndjson (`point`, `orientedPoint`, `instancePoint`; `location` in voxels of `pixel_size` A).

    `xyz_rotation_matrix` (orientedPoint) is the rotation reference -> particle; other types get the
    identity. Other record types (e.g. segmentation masks' metadata) are refused.
    """
    positions, rotations, scores = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            kind = record.get("type")
            if kind not in NDJSON_TYPES:
                raise ModelError("type", f"expected one of {NDJSON_TYPES}, got {kind!r}", source=f"{source} line {number}")
            loc = record["location"]
            positions.append([float(loc["x"]), float(loc["y"]), float(loc["z"])])
            rotations.append(np.asarray(record.get("xyz_rotation_matrix", np.eye(3)), dtype=np.float64).reshape(3, 3))
            scores.append(float(record.get("score", np.nan)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, ModelError):
                raise
            raise ModelError("location", f"expected a JSON object with location {{x, y, z}} ({type(exc).__name__}: {exc})", source=f"{source} line {number}") from exc
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3) * float(pixel_size)
    rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    return Particles.create(pos, rot, scores, tomogram=tomogram, class_name=class_name)


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


def to_copick(particles: Particles, *, object_name: str, user_id: str = "cryocloud", session_id: str = "0", run_name: str = "") -> str:
    points = []
    for i, (pos, rot, score) in enumerate(zip(particles.positions, particles.rotations, particles.scores)):
        transform = np.eye(4)
        transform[:3, :3] = rot
        point = {"location": {"x": float(pos[0]), "y": float(pos[1]), "z": float(pos[2])}, "transformation_": transform.tolist(), "instance_id": i}
        if np.isfinite(score):
            point["score"] = float(score)
        points.append(point)
    document = {
        "pickable_object_name": object_name,
        "user_id": user_id,
        "session_id": session_id,
        "run_name": run_name,
        "unit": "angstrom",
        "trust_orientation": True,
        "points": points,
    }
    return json.dumps(document, indent=1)


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
