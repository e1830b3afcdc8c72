"""Results of a run on CryoET Data Portal data, laid out as a copick overlay in the output itself.

When the input is a portal location (``portal://DATASET/RUN[...]``, a key in the portal bucket or a
portal client object), the output root is also a copick overlay root over the portal dataset
(`cryocloud.store.portal.copick.CopickOverlay` writes the layout):

- ``ExperimentRuns/{run}/Picks/cryocloud_0_{object}.json``: the peaks stage's picks (positions in A in
  the tomogram frame, voxel (0, 0, 0) at 0 A; rotation reference -> particle);
- ``ExperimentRuns/{run}/VoxelSpacing{vs:.3f}/cryocloud-{wbp|sirt|bp}.zarr`` (reconstruct) and
  ``.../cryocloud-{deconv|noise2noise}.zarr`` (denoise): the tomograms, at their voxel spacing (A);
- ``ExperimentRuns/{run}/Segmentations/{vs:.3f}_cryocloud_0_membrane.zarr``: the segment stage's labels
  (non-zero = membrane; the value numbers the membrane);
- ``copick_config.json`` (written last): the portal dataset as the static layer, the output as the overlay
  (objects and datasets already listed there are kept).

A batch of portal inputs shares one overlay at the batch's output root (each series' stage outputs stay
under output/<name>/), with one config listing every run's dataset, written after the series.

Images are copied object by object from the stages' outputs (server-side on S3, nothing decoded).

An image is copied when it is missing or when its stage was recomputed in this run (`--from`);
otherwise a resumed run leaves it as it is. The picks and the config (small) are rewritten every run.
Picks are in the frame of cryocloud's own tomogram (shown with it in copick / napari); they fall on the
portal's tomograms of the run where those share its geometry (same thickness and centre).
"""

from __future__ import annotations

from typing import Any

from cryocloud.errors import StoreError
from cryocloud.pipeline.config import PipelineConfig
from cryocloud.pipeline.context import RunContext

USER_ID, SESSION_ID = "cryocloud", "0"
CONFIG_FILE = "copick_config.json"
MEMBRANE = "membrane"
#: copick tomogram type of the reconstruction, by reconstruct.filter
RECONSTRUCTION_TYPES = {"radial": "wbp", "sirt": "sirt", "none": "bp"}


def portal_source(config: PipelineConfig) -> Any | None:
    """The portal address (`cryocloud.store.portal.PortalRef`) of the run's input, None when the input is
    not on the portal. StoreError when its dataset id is not a number (copick names portal datasets by id)."""
    from cryocloud.store.portal import PortalRef, is_portal_url, parse_portal_url, portal_address

    if not config.input or not is_portal_url(config.input):
        return None
    text = portal_address(config.input)
    if text.lower().endswith(".mdoc"):  # {dataset}/{run}/Frames/*.mdoc (parse_portal_url reads image addresses)
        parts = text[len("s3://"):].split("/")
        if len(parts) < 4:
            raise StoreError(config.input, "expected s3://BUCKET/DATASET/RUN/Frames/NAME.mdoc", field="input")
        ref = PortalRef(parts[1], parts[2])
    else:
        ref = parse_portal_url(text)
    if not ref.dataset.isdigit():
        raise StoreError(config.input, f"the portal dataset id must be a number (copick's dataset_ids), got {ref.dataset!r}", field="input")
    return ref


def write_overlay(ctx: RunContext, ref: Any, recomputed: set[str], *, root: str | None = None) -> dict:
    """Write the copick overlay of this run's results (see the module docstring) under `root` (default:
    the output root), then its copick config unless `root` is given (a batch writes one config for all
    its runs: `write_batch_config`); returns what was written (URLs, pickable objects) for the summary.
    `recomputed`: the stages forced to recompute."""
    from cryocloud.store import read_labels
    from cryocloud.store.portal.copick import CopickOverlay

    overlay = CopickOverlay(root or ctx.root.url, ctx.storage_options)
    record: dict[str, Any] = {"overlay_root": overlay.location.url, "run": ref.run, "dataset_id": int(ref.dataset)}
    objects: list[dict] = []
    particles = ctx.results.get("particles")
    if particles is not None:
        name = str(particles.class_name[0]) if len(particles) else "particle"
        objects.append({"name": name, "is_particle": True, "radius": round(float(ctx.results["particle_radius_a"]), 1)})
        tomo = ctx.results.get("tomogram")
        record["picks"] = overlay.write_picks(particles, ref.run, name, user_id=USER_ID, session_id=SESSION_ID,
                                              voxel_spacing=None if tomo is None else tomo.pixel_size, overwrite=True)
        record["n_picks"] = len(particles)
    tomograms = {}
    for stage, key, tomo_type in (("reconstruct", "tomogram", RECONSTRUCTION_TYPES[ctx.config.reconstruct.filter]),
                                  ("denoise", "denoised", ctx.config.denoise.method)):
        if stage in ctx.summary and ctx.results.get(key) is not None:  # made by this run (a portal input tomogram is not)
            name = f"cryocloud-{tomo_type}"
            url = overlay.tomogram_url(ref.run, ctx.results[key].pixel_size, name)
            if _wanted(ctx, url, stage in recomputed):
                overlay.copy_tomogram(ctx.url(stage, "tomogram.zarr"), ref.run, ctx.results[key].pixel_size, name, overwrite=True)
            tomograms[name] = url
    if tomograms:
        record["tomograms"] = tomograms
    segment = ctx.summary.get("segment", {})
    if "n_membranes" in segment:
        objects.append({"name": MEMBRANE, "is_particle": False})
        vs = read_labels(ctx.url("segment", "membranes.zarr"), storage_options=ctx.storage_options).attrs["pixel_size"]
        url = overlay.segmentation_url(ref.run, vs, MEMBRANE, user_id=USER_ID, session_id=SESSION_ID)
        if _wanted(ctx, url, "segment" in recomputed):
            overlay.copy_segmentation(ctx.url("segment", "membranes.zarr"), ref.run, vs, MEMBRANE, user_id=USER_ID, session_id=SESSION_ID,
                                      overwrite=True)
        record["segmentations"] = {MEMBRANE: url}
    record["pickable_objects"] = objects
    if root is None:
        record["config"] = _config(overlay, objects, [int(ref.dataset)], f"cryocloud results for portal://{ref.dataset}/{ref.run}")
    return record


def write_batch_config(root: str, storage_options: dict | None, records: list[dict]) -> str:
    """The copick config of a batch's shared overlay `root`: every run's datasets and pickable objects
    (`write_overlay` records, in order; the first object of a name wins); its URL."""
    from cryocloud.store.portal.copick import CopickOverlay

    objects = {}
    for record in records:
        for obj in record["pickable_objects"]:
            objects.setdefault(obj["name"], obj)
    datasets = sorted({int(r["dataset_id"]) for r in records})
    runs = ", ".join(sorted(r["run"] for r in records))
    return _config(CopickOverlay(root, storage_options), list(objects.values()), datasets, f"cryocloud results for portal runs {runs}")


def _config(overlay: Any, objects: list[dict], datasets: list[int], description: str) -> str:
    """Write the overlay's copick config (portal datasets static, the overlay root, its S3 endpoint); its URL.
    Objects and datasets of an existing config are kept (a run of fewer stages leaves the others' results
    listed); this run's objects replace theirs of the same name."""
    import json

    from cryocloud.store.textfiles import read_text

    location = overlay.location
    existing = location.child(CONFIG_FILE)
    if existing.exists():
        old = json.loads(read_text(existing.url, storage_options=overlay.storage_options)[1])
        names = {o["name"] for o in objects}
        kept = [{k: v for k, v in o.items() if k not in ("label", "color")} for o in old.get("pickable_objects", []) if o.get("name") not in names]
        objects = kept + objects
        datasets = sorted(set(datasets) | {int(d) for d in old.get("dataset_ids", [])})
    endpoint = {k: v for k, v in (overlay.storage_options or {}).items() if k == "endpoint_url" and location.protocol == "s3"}
    return overlay.write_config(objects, dataset_ids=datasets, overlay_fs_args=endpoint, overwrite=True, description=description,
                                filename=CONFIG_FILE)


def _wanted(ctx: RunContext, url: str, recomputed: bool) -> bool:
    """Whether an overlay image must be (re)written: its stage was recomputed, or it is missing or
    incomplete (the copy writes the group's metadata last)."""
    from cryocloud.store import resolve

    return recomputed or not resolve(url, ctx.storage_options).child(".zattrs").exists()
