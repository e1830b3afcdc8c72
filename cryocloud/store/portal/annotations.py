"""Portal point annotations: ndjson records and annotation folders (``{object}-{version}.json`` + files).

ndjson (one JSON object a line, ``location`` {x, y, z} in voxels of the annotation's voxel
spacing, i.e. position_A / voxel_spacing_A):

- ``{"type": "point", "location": {...}}``;
- ``{"type": "orientedPoint", "location": {...}, "xyz_rotation_matrix": [[...], [...], [...]]}``
  (the rotation reference -> particle, cryocloud's rotation matrix as is);
- ``{"type": "instancePoint", "location": {...}, "instance_id": N}``.

An optional ``score`` is kept. An annotation folder holds the ndjson files and, written last, the
metadata JSON whose ``files`` list names them (``format``, ``shape``, ``path``), as the portal's
own annotation folders do; `cryocloud.store.portal.read` reads them back.
"""

from __future__ import annotations

import json
from typing import Literal

import numpy as np

from cryocloud.errors import ModelError, StoreError
from cryocloud.model import Particles
from cryocloud.store.location import PORTAL_BUCKET, resolve
from cryocloud.store.textfiles import write_text

NdjsonShape = Literal["point", "orientedPoint", "instancePoint"]
NDJSON_TYPES: tuple[str, ...] = ("point", "orientedPoint", "instancePoint")
SHAPE_NAMES = {"point": "Point", "orientedPoint": "OrientedPoint", "instancePoint": "InstancePoint"}


def to_ndjson(particles: Particles, voxel_spacing: float, *, shape: str = "orientedPoint", instance_ids=None) -> str:
    """Portal ndjson of `particles` (positions in A) at `voxel_spacing` (A): one record of `shape` a line.

    `instance_ids` (N integers) is required for ``instancePoint``.
    """
    if shape not in NDJSON_TYPES:
        raise ModelError("shape", f"expected one of {NDJSON_TYPES}, got {shape!r}")
    if not np.isfinite(voxel_spacing) or voxel_spacing <= 0:
        raise ModelError("voxel_spacing", f"expected a positive number of Angstrom, got {voxel_spacing!r}")
    if shape == "instancePoint":
        if instance_ids is None or len(instance_ids) != len(particles):
            raise ModelError("instance_ids", f"instancePoint records need one instance id per particle ({len(particles)})")
    lines = []
    for i, (pos, rot, score) in enumerate(zip(particles.positions, particles.rotations, particles.scores)):
        x, y, z = (float(v) for v in pos / voxel_spacing)
        record: dict = {"type": shape, "location": {"x": x, "y": y, "z": z}}
        if shape == "orientedPoint":
            record["xyz_rotation_matrix"] = rot.tolist()
        elif shape == "instancePoint":
            record["instance_id"] = int(instance_ids[i])
        if np.isfinite(score):
            record["score"] = float(score)
        lines.append(json.dumps(record))
    return "".join(line + "\n" for line in lines)


def parse_ndjson(text: str, voxel_spacing: float, *, source: str = "ndjson", tomogram: str = "", class_name: str = "") -> tuple[Particles, np.ndarray]:
    """(`Particles` in A, instance ids (-1 where a record has none)) from portal ndjson.

    `xyz_rotation_matrix` (orientedPoint) is the rotation reference -> particle; other types get the
    identity. Record types other than point, orientedPoint and instancePoint are refused, naming the line.
    """
    positions, rotations, scores, instances = [], [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            record = json.loads(line)
            kind = record.get("type")
            if kind not in NDJSON_TYPES:
                raise ModelError("type", f"expected one of {NDJSON_TYPES}, got {kind!r}", source=where)
            loc = record["location"]
            positions.append([float(loc["x"]), float(loc["y"]), float(loc["z"])])
            rot = np.asarray(record.get("xyz_rotation_matrix", np.eye(3)), dtype=np.float64).reshape(3, 3)
            scores.append(float(record.get("score", np.nan)))
            instances.append(int(record.get("instance_id", -1)))
        except ModelError:
            raise
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError("location", f"expected a JSON object with location {{x, y, z}} ({type(exc).__name__}: {exc})", source=where) from exc
        if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-4) or np.linalg.det(rot) < 0:
            raise ModelError("xyz_rotation_matrix", f"expected a 3x3 rotation matrix, got {rot.tolist()}", source=where)
        rotations.append(rot)
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3) * float(voxel_spacing)
    rotation_stack = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    return Particles.create(pos, rotation_stack, scores, tomogram=tomogram, class_name=class_name), np.asarray(instances, dtype=np.int64)


def from_ndjson(text: str, voxel_spacing: float, *, source: str = "ndjson", tomogram: str = "", class_name: str = "") -> Particles:
    """`Particles` (positions in A) from portal ndjson (see `parse_ndjson`)."""
    return parse_ndjson(text, voxel_spacing, source=source, tomogram=tomogram, class_name=class_name)[0]


def write_portal_annotation(
    particles: Particles,
    folder_url: str,
    *,
    object_name: str,
    voxel_spacing: float,
    shape: str = "orientedPoint",
    version: str = "1.0",
    instance_ids=None,
    metadata: dict | None = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> str:
    """Write an annotation folder: ``{object}-{version}_{shape}.ndjson`` then ``{object}-{version}.json``.

    `folder_url` is e.g. ``OUTPUT/DATASET/RUN/Reconstructions/VoxelSpacing10.012/Annotations/1``;
    `metadata` adds fields to the JSON (authors, method, ...). Never writes into the portal bucket.
    Returns the metadata JSON's URL.
    """

    folder = resolve(folder_url, storage_options)
    if folder.protocol == "s3" and folder.path.split("/", 1)[0] == PORTAL_BUCKET:
        raise StoreError(folder.url, "is in the public portal bucket, which is read-only: write results to your own URL", field="url")
    stem = f"{object_name}-{version}"
    data_name = f"{stem}_{shape.lower()}.ndjson"
    text = to_ndjson(particles, voxel_spacing, shape=shape, instance_ids=instance_ids)
    write_text(folder.child(data_name).url, text, overwrite=overwrite, storage_options=storage_options)
    document = {
        **(metadata or {}),
        "annotation_object": {**((metadata or {}).get("annotation_object") or {}), "name": object_name},
        "version": version,
        "voxel_spacing": float(voxel_spacing),
        "files": [{"format": "ndjson", "shape": SHAPE_NAMES[shape], "path": data_name, "is_visualization_default": True}],
    }
    meta = folder.child(f"{stem}.json")
    write_text(meta.url, json.dumps(document, indent=1), overwrite=overwrite, storage_options=storage_options)
    return meta.url
