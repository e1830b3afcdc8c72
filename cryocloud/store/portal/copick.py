"""Results next to portal data, in a copick overlay: picks, tomograms and segmentations under an
output URL, and a copick config that puts them over the portal's own data.

copick overlay layout (copick's fsspec implementation, copick.impl.filesystem):

- picks: ``ROOT/ExperimentRuns/{run}/Picks/{user_id}_{session_id}_{object}.json``, a
  CopickPicksFile: ``pickable_object_name``, ``user_id``, ``session_id``, ``run_name``,
  ``voxel_spacing``, ``unit`` ("angstrom"), ``trust_orientation``, ``points`` [{``location`` {x, y, z}
  in A, ``transformation_`` 4x4 (rotation reference -> particle in the 3x3 block), ``instance_id``,
  ``score``}];
- tomograms: ``ROOT/ExperimentRuns/{run}/VoxelSpacing{vs:.3f}/{tomo_type}.zarr`` (OME-Zarr, zarr format 2);
- segmentations: ``ROOT/ExperimentRuns/{run}/Segmentations/{vs:.3f}_{user_id}_{session_id}_{name}.zarr``
  (``..._{name}-multilabel.zarr`` for multi-label masks);
- config: ``config_type`` "cryoet_data_portal" with ``overlay_root`` (this URL), ``overlay_fs_args``
  and ``dataset_ids`` (the portal datasets as the static, read-only layer), or "filesystem" with
  ``static_root`` for a non-portal static root; ``pickable_objects`` [{``name``, ``is_particle``,
  ``label``, ``color`` RGBA, ``radius`` (A), ``identifier``, ``pdb_id``, ``emdb_id``}].

Run names are those of the portal (copick's portal layer names runs by their portal name). Checked
by hand with copick 1.31.0 in a separate environment (it pins zarr 2, so it is not a test
dependency): `copick.from_file` on a "filesystem" config finds the picks (positions and rotations
equal), the tomogram and the segmentation written here, and `CopickConfigCDP` parses the portal config.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cryocloud.errors import ModelError, OutputExistsError, StoreError
from cryocloud.model import Particles, Tomogram
from cryocloud.store.images import write_tomogram
from cryocloud.store.location import PORTAL_BUCKET, Location, os_errors_as_store_errors, resolve
from cryocloud.store.portal.address import SCHEME
from cryocloud.store.textfiles import write_text

def to_copick(particles: Particles, *, object_name: str, user_id: str = "cryocloud", session_id: str = "0", run_name: str = "",
              voxel_spacing: float | None = None) -> str:
    """A copick picks file (CopickPicksFile): points with `location` in Angstrom and a 4x4
    `transformation_` whose 3x3 block is the rotation reference -> particle."""
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
        "voxel_spacing": voxel_spacing,
        "unit": "angstrom",
        "trust_orientation": True,
        "points": points,
    }
    return json.dumps(document, indent=1)



def from_copick(text: str, *, source: str = "copick") -> Particles:
    """`Particles` from a copick picks JSON (Angstrom; rotation from `transformation_`, identity when absent).

    The run name becomes the tomogram and the object name the class.
    """
    try:
        document = json.loads(text)
        if document.get("unit", "angstrom") != "angstrom":
            raise ModelError("unit", f"expected 'angstrom', got {document.get('unit')!r}", source=source)
        points = document.get("points") or []
        positions = [[float(p["location"][k]) for k in "xyz"] for p in points]
        rotations = [np.asarray(p.get("transformation_", np.eye(4)), dtype=np.float64).reshape(4, 4)[:3, :3] for p in points]
        scores = [float(p["score"]) if p.get("score") is not None else np.nan for p in points]
    except ModelError:
        raise
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError("points", f"expected a copick picks object with points [{{location: {{x, y, z}}}}] ({type(exc).__name__}: {exc})", source=source) from exc
    return Particles.create(
        np.asarray(positions, dtype=np.float64).reshape(-1, 3), np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3), scores,
        tomogram=str(document.get("run_name") or ""), class_name=str(document.get("pickable_object_name") or ""),
    )



#: RGB colours of the pickable objects in config order (matplotlib's tab10)
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127))


def _name(value: str, what: str) -> str:
    """A copick name segment: no '/', '\\' or '..' (keys stay inside the overlay root); user and
    session ids also without '_' (copick splits file names on it)."""
    text = str(value)
    forbidden = ("/", "\\", "_") if what in ("user_id", "session_id") else ("/", "\\")
    if not text or text in (".", "..") or any(c in text for c in forbidden):
        raise ModelError(what, f"expected a plain name without {' or '.join(repr(c) for c in forbidden)}, got {value!r}")
    return text


@dataclass(frozen=True)
class CopickOverlay:
    """A copick overlay root at `root` (any URL cryocloud writes: local, s3://...)."""

    root: str
    storage_options: dict | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:

        loc = resolve(self.root, self.storage_options)
        if self.root.startswith(SCHEME) or (loc.protocol == "s3" and loc.path.split("/", 1)[0] == PORTAL_BUCKET):
            raise StoreError(self.root, "is the public portal (read-only): the overlay root must be your own output URL", field="overlay_root")

    @property
    def location(self) -> Location:
        return resolve(self.root, self.storage_options)

    def run(self, run: str) -> Location:
        return self.location.child("ExperimentRuns", _name(run, "run"))

    def picks_url(self, run: str, object_name: str, *, user_id: str = "cryocloud", session_id: str = "0") -> str:
        name = f"{_name(user_id, 'user_id')}_{_name(session_id, 'session_id')}_{_name(object_name, 'object_name')}.json"
        return self.run(run).child("Picks", name).url

    def tomogram_url(self, run: str, voxel_spacing: float, tomo_type: str) -> str:
        return self.run(run).child(f"VoxelSpacing{voxel_spacing:.3f}", f"{_name(tomo_type, 'tomo_type')}.zarr").url

    def segmentation_url(self, run: str, voxel_spacing: float, name: str, *, user_id: str = "cryocloud", session_id: str = "0",
                         multilabel: bool = False) -> str:
        stem = f"{voxel_spacing:.3f}_{_name(user_id, 'user_id')}_{_name(session_id, 'session_id')}_{_name(name, 'name')}"
        return self.run(run).child("Segmentations", f"{stem}{'-multilabel' if multilabel else ''}.zarr").url

    def write_picks(self, particles: Particles, run: str, object_name: str, *, user_id: str = "cryocloud", session_id: str = "0",
                    voxel_spacing: float | None = None, overwrite: bool = False) -> str:
        """Write a picks file (positions in A); returns its URL."""
        url = self.picks_url(run, object_name, user_id=user_id, session_id=session_id)
        text = to_copick(particles, object_name=object_name, user_id=user_id, session_id=session_id, run_name=run, voxel_spacing=voxel_spacing)
        write_text(url, text, overwrite=overwrite, storage_options=self.storage_options)
        return url

    def write_tomogram(self, tomogram: Tomogram, run: str, tomo_type: str, *, overwrite: bool = False, metadata: dict | None = None) -> str:
        """Write a tomogram (pyramid, NGFF 0.4) at its voxel spacing; returns its URL."""
        url = self.tomogram_url(run, tomogram.pixel_size, tomo_type)
        write_tomogram(tomogram, url, overwrite=overwrite, storage_options=self.storage_options, metadata=metadata)
        return url

    def write_segmentation(self, labels: Tomogram, run: str, name: str, *, user_id: str = "cryocloud", session_id: str = "0",
                           multilabel: bool = False, overwrite: bool = False, metadata: dict | None = None) -> str:
        """Write an integer label volume (one level: labels are not averaged); returns its URL."""
        if not np.issubdtype(labels.data.dtype, np.integer):
            raise ModelError("dtype", f"a segmentation holds integer labels, got {labels.data.dtype}")
        url = self.segmentation_url(run, labels.pixel_size, name, user_id=user_id, session_id=session_id, multilabel=multilabel)
        write_tomogram(labels, url, levels=1, overwrite=overwrite, storage_options=self.storage_options, metadata=metadata)
        return url

    def copy_tomogram(self, source: str, run: str, voxel_spacing: float, tomo_type: str, *, overwrite: bool = False) -> str:
        """Copy a stored tomogram (NGFF 0.4, zarr format 2, as cryocloud writes it) at `voxel_spacing` (A)
        into the overlay object by object (server-side on S3: nothing is decoded); returns its URL."""
        url = self.tomogram_url(run, voxel_spacing, tomo_type)
        copy_image(resolve(source, self.storage_options), resolve(url, self.storage_options), overwrite=overwrite)
        return url

    def copy_segmentation(self, source: str, run: str, voxel_spacing: float, name: str, *, user_id: str = "cryocloud",
                          session_id: str = "0", multilabel: bool = False, overwrite: bool = False) -> str:
        """Copy a stored label image (NGFF 0.4, zarr format 2) into the overlay as a segmentation; returns its URL."""
        url = self.segmentation_url(run, voxel_spacing, name, user_id=user_id, session_id=session_id, multilabel=multilabel)
        copy_image(resolve(source, self.storage_options), resolve(url, self.storage_options), overwrite=overwrite)
        return url

    def write_config(
        self,
        pickable_objects: list[dict],
        *,
        dataset_ids: list[int] | None = None,
        static_root: str | None = None,
        name: str = "cryocloud results",
        description: str = "",
        overlay_fs_args: dict | None = None,
        filename: str = "copick_config.json",
        overwrite: bool = False,
    ) -> str:
        """Write the copick config at ROOT/`filename`: the portal `dataset_ids` (or a `static_root`) as
        the static layer, this root as the overlay. `overlay_fs_args` are what copick users need to
        reach the root (e.g. an endpoint; never credentials: copick takes them from the environment)."""
        if (dataset_ids is None) == (static_root is None):
            raise ModelError("static", "give either the portal dataset_ids or a static_root")
        objects = []
        for i, obj in enumerate(pickable_objects):
            if "name" not in obj:
                raise ModelError(f"pickable_objects[{i}]", "expected a 'name'")
            colour = [*PALETTE[i % len(PALETTE)], 255]
            entry = {"name": _name(obj["name"], "object_name"), "is_particle": True, "label": i + 1, "color": colour, **obj}
            objects.append(entry)
        args = {k: v for k, v in (overlay_fs_args or {}).items() if k not in ("key", "secret", "token", "password", "aws_secret_access_key")}
        config: dict[str, Any] = {"name": name, "description": description, "version": "0.2.0", "pickable_objects": objects,
                  "overlay_root": self.location.url if self.location.protocol != "file" else f"local://{self.location.path}",
                  "overlay_fs_args": args}
        if dataset_ids is not None:
            config.update({"config_type": "cryoet_data_portal", "dataset_ids": [int(d) for d in dataset_ids]})
        else:
            config.update({"config_type": "filesystem", "static_root": static_root, "static_fs_args": {}})
        url = self.location.child(filename).url
        write_text(url, json.dumps(config, indent=1), overwrite=overwrite, storage_options=self.storage_options)
        return url


ZARR2_METADATA = (".zarray", ".zattrs", ".zgroup")


def copy_image(source: Location, target: Location, *, overwrite: bool = False) -> None:
    """Copy a zarr format 2 image (copick reads zarr 2) from `source` to `target` on the same
    filesystem: chunks first, then the arrays' metadata, the group's `.zattrs` / `.zgroup` last (an
    interrupted copy does not read as an image). OutputExistsError when `target` holds an image and
    not `overwrite` (then it is removed first)."""
    target.require_writable()
    if source.protocol != target.protocol:
        raise StoreError(target.url, f"a copy stays on one filesystem; the source is {source.url}", field="url")
    fs = source.filesystem()
    with os_errors_as_store_errors(source.url, "listed"):
        files = sorted(fs.find(source.path))
    if source.path + "/.zgroup" not in files:
        raise StoreError(source.url, "is not a zarr format 2 image (no .zgroup); copick reads zarr format 2 (NGFF 0.4)", field="zarr_format")
    with os_errors_as_store_errors(target.url, "written"):
        if fs.exists(target.path):
            if not overwrite and fs.exists(target.path + "/.zattrs"):
                raise OutputExistsError(f"{target.url}: exists; pass overwrite=True to replace it")
            fs.rm(target.path, recursive=True)
        chunks = [f for f in files if posixpath.basename(f) not in ZARR2_METADATA]
        root = [source.path + "/.zgroup", source.path + "/.zattrs"]
        arrays = [f for f in files if f not in chunks and f not in root]
        for batch in (chunks, arrays, [f for f in root if f in files]):
            targets = [target.path + f[len(source.path):] for f in batch]
            if target.is_local:
                for folder in sorted({posixpath.dirname(t) for t in targets}):
                    fs.makedirs(folder, exist_ok=True)
            if batch:
                fs.copy(batch, targets)
