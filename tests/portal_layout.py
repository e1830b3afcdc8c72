"""Build CryoET Data Portal-layout buckets on the moto S3 server, from the documented layout.

Layout and metadata fields follow chanzuckerberg/cryoet-data-portal-backend (schema and
test_infra/test_files): zarr format 2, NGFF 0.4, levels "0", "1", "2" mean-pooled by 2 with scale
transforms only, Blosc lz4, "/" chunk separators, no consolidated metadata;
tomogram_metadata.json / tiltseries_metadata.json / annotation JSON / alignment_metadata.json with
the portal field names; .rawtlt, .xf/.tlt/.xtilt, Frames/*.mdoc.
"""

from __future__ import annotations

import functools
import json
import uuid

import boto3
import numpy as np
import requests
import zarr
from numcodecs import Blosc

from cryocloud.geometry import rotation_2d, xf_from_alignment
from cryocloud.store.location import Location
from cryocloud.store.portal import PORTAL_BUCKET


@functools.lru_cache(maxsize=4)
def s3_client(endpoint: str):
    """One boto3 client per endpoint (creating one costs about as much as a dozen requests)."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def create_portal_bucket(endpoint: str) -> dict:
    """The portal bucket (public read policy) on `endpoint`, reset first (nothing else left on the
    server); returns storage options for writing it. Tests that share it must not use `s3_bucket`
    (which resets the server): make output buckets with `output_bucket`."""
    requests.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
    s3 = s3_client(endpoint)
    s3.create_bucket(Bucket=PORTAL_BUCKET)
    public_read = {"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
                   "Resource": [f"arn:aws:s3:::{PORTAL_BUCKET}", f"arn:aws:s3:::{PORTAL_BUCKET}/*"]}
    s3.put_bucket_policy(Bucket=PORTAL_BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": [public_read]}))
    return {"endpoint_url": endpoint}


def portal_objects(endpoint: str) -> dict[str, str]:
    """Key -> ETag of every object in the portal bucket (equal before and after: the portal was only read)."""
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=PORTAL_BUCKET)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def output_bucket(endpoint: str) -> str:
    """A fresh, private bucket beside the portal bucket (no reset); its s3:// URL."""
    name = f"out-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


def pool(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Mean-pool by 2 along `axes` (the portal's pyramid levels)."""
    shape = []
    for i, n in enumerate(a.shape):
        shape.extend([n // 2, 2] if i in axes else [n, 1])
    return a.reshape(shape).mean(axis=tuple(range(1, 2 * a.ndim, 2))).astype(a.dtype)


def write_portal_zarr(opts: dict, key: str, data: np.ndarray, px: float, binned: tuple[int, ...], chunks: tuple[int, ...]) -> list[np.ndarray]:
    """A portal-style OME-Zarr at bucket/key: 3 mean-pooled levels, scale transforms only (no translation)."""
    group = zarr.create_group(store=Location("s3", key, opts).zarr_store(read_only=False), zarr_format=2)
    levels, datasets = [data], []
    for n in range(3):
        if n:
            levels.append(pool(levels[-1], binned))
        arr = group.create_array(
            str(n), shape=levels[n].shape, chunks=tuple(min(c, s) for c, s in zip(chunks, levels[n].shape)), dtype=data.dtype,
            compressors=Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE), chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        arr[...] = levels[n]
        scale = [px * (2**n if i in binned else 1) for i in range(3)]
        datasets.append({"path": str(n), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    axes = [{"name": a, "type": "space", "unit": "angstrom"} for a in "zyx"]
    group.attrs.update({"multiscales": [{"version": "0.4", "axes": axes, "datasets": datasets, "name": "/"}]})
    return levels


def put(opts: dict, key: str, content) -> None:
    """Write a text object (a dict is written as JSON) at bucket/key, public-read like the portal's objects
    (moto refuses anonymous HEAD requests on objects without a public-read ACL, whatever the bucket policy)."""
    text = content if isinstance(content, str) else json.dumps(content)
    bucket, _, name = key.partition("/")
    s3_client(opts["endpoint_url"]).put_object(Bucket=bucket, Key=name, Body=text.encode("utf-8"), ACL="public-read")


def put_alignment(opts: dict, folder: str, run: str, axis_deg: np.ndarray, shifts_px: np.ndarray, tilt_angles: np.ndarray,
                  *, sections: bool = True, x_tilt: float = 0.0) -> None:
    """An Alignments/ID folder: alignment_metadata.json (+ per-section parameters when `sections`) and .xf/.tlt/.xtilt.

    `folder` is "bucket/DATASET/RUN/Alignments/ID"; the portal's in_plane_rotation is R(axis) and the
    offsets the raw-image shift in pixels (AreTomo convention).
    """
    xf = np.array([xf_from_alignment(a, s) for a, s in zip(axis_deg, shifts_px)])
    put(opts, f"{folder}/{run}.xf", "".join("%12.7f%12.7f%12.7f%12.7f%12.3f%12.3f\n" % tuple(r) for r in xf))
    put(opts, f"{folder}/{run}.tlt", "".join(f"{a:.3f}\n" for a in tilt_angles))
    put(opts, f"{folder}/{run}.xtilt", "".join(f"{x_tilt:.3f}\n" for _ in tilt_angles))
    per_section = [
        {"z_index": z, "tilt_angle": float(tilt_angles[z]), "volume_x_rotation": x_tilt,
         "in_plane_rotation": rotation_2d(float(axis_deg[z])).tolist(), "x_offset": float(shifts_px[z, 0]), "y_offset": float(shifts_px[z, 1])}
        for z in range(len(tilt_angles))
    ]
    put(opts, f"{folder}/alignment_metadata.json", {
        "alignment_type": "GLOBAL", "format": "IMOD", "is_portal_standard": True, "tilt_offset": 0.0, "x_rotation_offset": x_tilt,
        "volume_offset": {"x": 0.0, "y": 0.0, "z": 12.5}, "volume_dimension": {"x": 0.0, "y": 0.0, "z": 0.0},
        "affine_transformation_matrix": np.eye(4).tolist(),
        "per_section_alignment_parameters": per_section if sections else [],
    })


def tiltseries_metadata(ts_dir: str, run: str, px: float, angles, order, defocus_u, defocus_v, astig, *, axis: float, flux: float, shape) -> dict:
    """tiltseries_metadata.json with per_section_parameter (z_index, raw_angle, order, defocus in A)."""
    sections = [
        {"z_index": z, "raw_angle": float(angles[z]), "frame_acquisition_order": int(order[z]),
         "major_defocus": float(defocus_u[z]), "minor_defocus": float(defocus_v[z]), "astigmatic_angle": float(astig[z])}
        for z in range(len(angles))
    ]
    return {
        "pixel_spacing": px, "acceleration_voltage": 300000, "spherical_aberration_constant": 2.7, "tilt_axis": axis,
        "is_aligned": False, "total_flux": flux, "omezarr_dir": f"{ts_dir}/{run}.zarr", "per_section_parameter": sections,
        "size": {"z": int(shape[0]), "y": int(shape[1]), "x": int(shape[2])},
    }


def annotation(opts: dict, ann_dir: str, name: str, records: list[dict], shape: str) -> None:
    """An annotation folder: {name}-1.0.json and its {name}-1.0_{shape}.ndjson (bucket-prefixed ann_dir)."""
    key_dir = ann_dir.split("/", 1)[1]
    stem = f"{name}-1.0_{shape.lower()}.ndjson"
    put(opts, f"{ann_dir}/{stem}", "".join(json.dumps(r) + "\n" for r in records))
    put(opts, f"{ann_dir}/{name}-1.0.json", {
        "annotation_object": {"id": "GO:0005840", "name": name}, "version": "1.0",
        "files": [{"format": "ndjson", "shape": shape, "path": f"{key_dir}/{stem}"}],
    })


def publish_tilt_series(opts: dict, ts, truth: dict, dataset: str, run: str) -> str:
    """Publish a raw tilt series (tilt, y, x) as the run's TiltSeries/1 (portal OME-Zarr, .rawtlt,
    tiltseries_metadata.json with per-section order and the true defocus of `truth`: GroundTruth.to_json()
    keys defocus_u_a, defocus_v_a, astigmatism_angle_deg); returns the folder's key."""
    ts_dir = f"{dataset}/{run}/TiltSeries/1"
    write_portal_zarr(opts, f"{PORTAL_BUCKET}/{ts_dir}/{run}.zarr", np.asarray(ts.data.values, dtype=np.float32), ts.pixel_size, (1, 2), (1, 1024, 1024))
    order = ts.data.acquisition_order.values
    exposure = float(np.sum(ts.data.exposure.values))
    put(opts, f"{PORTAL_BUCKET}/{ts_dir}/tiltseries_metadata.json", tiltseries_metadata(
        ts_dir, run, ts.pixel_size, ts.tilt_angles, order, truth["defocus_u_a"], truth["defocus_v_a"], [truth["astigmatism_angle_deg"]] * ts.n_tilts,
        axis=ts.tilt_axis_angle, flux=exposure, shape=ts.data.shape))
    put(opts, f"{PORTAL_BUCKET}/{ts_dir}/{run}.rawtlt", "".join(f"{a:.2f}\n" for a in ts.tilt_angles))
    return ts_dir


def publish_tomogram(opts: dict, tomo, dataset: str, run: str) -> None:
    """Publish a tomogram (z, y, x) as the run's default WBP tomogram Reconstructions/VoxelSpacing{vs:.3f}/Tomograms/1."""
    vs = tomo.pixel_size
    tomo_dir = f"{dataset}/{run}/Reconstructions/VoxelSpacing{vs:.3f}/Tomograms/1"
    write_portal_zarr(opts, f"{PORTAL_BUCKET}/{tomo_dir}/{run}.zarr", np.asarray(tomo.data.values, dtype=np.float32), vs, (0, 1, 2), (256, 256, 256))
    nz, ny, nx = tomo.data.shape
    put(opts, f"{PORTAL_BUCKET}/{tomo_dir}/tomogram_metadata.json", {
        "voxel_spacing": vs, "reconstruction_method": "WBP", "is_visualization_default": True, "run_name": run,
        "size": {"z": nz, "y": ny, "x": nx}, "omezarr_dir": f"{tomo_dir}/{run}.zarr",
    })


def publish_particles(opts: dict, particles, voxel_spacing: float, dataset: str, run: str) -> None:
    """Publish particles (positions in A) as the run's ribosome orientedPoint annotation (Annotations/1 at `voxel_spacing`)."""
    records = [{"type": "orientedPoint", "location": dict(zip("xyz", (float(v) for v in p / voxel_spacing))), "xyz_rotation_matrix": r.tolist()}
               for p, r in zip(particles.positions, particles.rotations)]
    folder = f"{PORTAL_BUCKET}/{dataset}/{run}/Reconstructions/VoxelSpacing{voxel_spacing:.3f}/Annotations/1"
    annotation(opts, folder, "ribosome", records, "OrientedPoint")


def portal_run_from_simulation(opts: dict, result, dataset: str, run: str) -> None:
    """Publish a `cryocloud.simulate` result as a portal run: its raw tilt series (TiltSeries/1) and the
    true particles as the ribosome annotation at the tilt series' pixel size (no tomogram)."""
    publish_tilt_series(opts, result.tilt_series, result.truth.to_json(), dataset, run)
    publish_particles(opts, result.particles, result.tilt_series.pixel_size, dataset, run)


def portal_run_from_pipeline(opts: dict, run_dir: str, dataset: str, run: str) -> dict:
    """Publish a `cryocloud run` output (simulation -> align -> reconstruct) as a portal run in the bucket:
    the raw tilt series (TiltSeries/1, with .rawtlt and per-section order and defocus), its alignment
    (Alignments/1: the .xf/.tlt and per-section parameters), the tomogram
    (Reconstructions/VoxelSpacing{vs:.3f}/Tomograms/1) and the true particles as a ribosome
    orientedPoint annotation (Annotations/1). Returns what was published (positions in A, voxel spacing)."""
    from cryocloud.store import read_particles_csv, read_tilt_series, read_tlt, read_tomogram, read_xf
    from cryocloud.store.tiltfiles import alignments_from_xf

    prefix = f"{PORTAL_BUCKET}/{dataset}/{run}"
    ts = read_tilt_series(f"{run_dir}/simulation/tilt_series.zarr")
    truth = json.loads(open(f"{run_dir}/simulation/ground_truth/truth.json").read())
    publish_tilt_series(opts, ts, truth, dataset, run)
    axis, shifts = alignments_from_xf(read_xf(f"{run_dir}/align/tilt_series.xf"))
    put_alignment(opts, f"{prefix}/Alignments/1", run, axis, shifts, read_tlt(f"{run_dir}/align/tilt_series.tlt"))
    tomo = read_tomogram(f"{run_dir}/reconstruct/tomogram.zarr")
    vs = tomo.pixel_size
    publish_tomogram(opts, tomo, dataset, run)
    particles = read_particles_csv(f"{run_dir}/simulation/ground_truth/particles.csv")
    publish_particles(opts, particles, vs, dataset, run)
    return {"positions": particles.positions, "voxel_spacing": vs, "shape": tomo.data.shape}


#: the toy twin of `publish_toy_run`: 8 ribosomes and one vesicle in 64^3 voxels of 10 A, 21 tilts
TOY_TWIN = {"n_particles": 8, "seed": 1, "membranes": {"vesicles": 1, "vesicle_radius_a": [180.0, 220.0]}}


def publish_toy_run(endpoint: str, dataset: str, run: str):
    """A fresh portal bucket on `endpoint` holding one run made from the toy twin (`TOY_TWIN`): its raw tilt
    series, a WBP tomogram of it (Tomograms/1) and the true particles as the ribosome annotation; returns
    the simulation (`cryocloud.simulate.SimulationResult`)."""
    from cryocloud.reconstruct import reconstruct
    from cryocloud.simulate import preset, simulate

    opts = create_portal_bucket(endpoint)
    result = simulate(preset("toy", **TOY_TWIN))
    portal_run_from_simulation(opts, result, dataset, run)
    publish_tomogram(opts, reconstruct(result.tilt_series, thickness_px=result.config.shape_zyx[0]), dataset, run)
    return result
