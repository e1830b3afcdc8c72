"""s3-read: reading a chunked tomogram from an S3 endpoint (a local moto server).

Ours: ``read_tomogram(url).data.values`` (lazy Dask array, one task per zarr chunk, computed);
also reported: ``read_tomogram(url, chunks="auto")`` (several chunk objects per task).
Also ``portal``: the same image published in a CryoET Data Portal layout (bucket
cryoet-data-portal-public, public-read objects, ``tomogram_metadata.json`` naming its
``omezarr_dir``) and read as the portal is, anonymously through ``portal://DATASET/RUN`` (run
listing, metadata JSON, the tilt-series lookup, then the chunks).
Peer: the floor of what any reader can do: knowing the chunk keys already (no metadata
reads), open an s3fs filesystem from the URL (as ours does), fetch the chunk objects' bytes
in one concurrent ``fs.cat(list)``, decompress them with numcodecs and place them into a
numpy array. Every result is compared with the volume written. Times are the best of
interleaved repeats (the machine is shared); the ratio of medians is reported too. Throughput
(``*_mb_s``) is the volume's uncompressed MiB over the best time.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid

import numpy as np

ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}


def _volume(n: int) -> np.ndarray:
    """Smooth structure plus noise: compresses like a real tomogram (a little), float32 (z, y, x)."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32),) * 3, indexing="ij")
    return (np.sin(6 * x) * np.cos(5 * y) * np.sin(4 * z) + rng.normal(0, 0.5, (n, n, n))).astype(np.float32)


def _peer_read(url: str, options: dict, shape: tuple[int, ...], chunk: int) -> np.ndarray:
    from numcodecs import Blosc

    from cryocloud.store import resolve

    fs = resolve(url, options).filesystem()  # like ours, start from the URL (a new S3 client)
    root = url.removeprefix("s3://") + "/0"
    grid = [range(-(-n // chunk)) for n in shape]
    keys = [f"{root}/{i}/{j}/{k}" for i in grid[0] for j in grid[1] for k in grid[2]]
    blobs = fs.cat(keys)
    codec = Blosc()
    out = np.empty(shape, dtype=np.float32)
    for key, blob in blobs.items():
        i, j, k = (int(v) for v in key[len(root) + 1:].split("/"))
        block = np.frombuffer(codec.decode(blob), dtype=np.float32)
        sl = tuple(slice(c * chunk, min((c + 1) * chunk, n)) for c, n in zip((i, j, k), shape))
        out[sl] = block.reshape(tuple(s.stop - s.start for s in sl))
    return out


PORTAL_RUN = ("10000", "TS_bench")
PORTAL_BUCKET_NOTE = "same chunks, copied into the portal layout on the same endpoint"


def _publish_as_portal(s3, bucket: str, voxel_spacing: float, shape: tuple[int, ...]) -> str:
    """Copy the image at `bucket`/tomo.zarr into a portal-layout bucket (server-side copies, public-read
    like the portal's objects, bucket readable anonymously) with its tomogram_metadata.json; its portal:// address."""
    import json

    from cryocloud.store.portal import PORTAL_BUCKET

    s3.create_bucket(Bucket=PORTAL_BUCKET)
    public = {"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
              "Resource": [f"arn:aws:s3:::{PORTAL_BUCKET}", f"arn:aws:s3:::{PORTAL_BUCKET}/*"]}
    s3.put_bucket_policy(Bucket=PORTAL_BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": [public]}))
    dataset, run = PORTAL_RUN
    folder = f"{dataset}/{run}/Reconstructions/VoxelSpacing{voxel_spacing:.3f}/Tomograms/1"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="tomo.zarr/"):
        for obj in page.get("Contents", []):
            key = f"{folder}/{run}.zarr/{obj['Key'][len('tomo.zarr/'):]}"
            s3.copy_object(Bucket=PORTAL_BUCKET, Key=key, CopySource={"Bucket": bucket, "Key": obj["Key"]}, ACL="public-read")
    metadata = {"voxel_spacing": voxel_spacing, "reconstruction_method": "WBP", "is_visualization_default": True, "run_name": run,
                "size": dict(zip("zyx", (int(n) for n in shape))), "omezarr_dir": f"{folder}/{run}.zarr"}
    s3.put_object(Bucket=PORTAL_BUCKET, Key=f"{folder}/tomogram_metadata.json", Body=json.dumps(metadata).encode(), ACL="public-read")
    return f"portal://{dataset}/{run}"


def _interleaved_times(contenders: dict, repeats: int) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Run the contenders in turn, `repeats` rounds (so background load hits all alike)."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    results: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return times, results


def run(quick: bool = False) -> dict:
    import boto3
    from moto.server import ThreadedMotoServer

    from cryocloud.model import Tomogram
    from cryocloud.store import read_tomogram, write_tomogram

    os.environ.update(ENV)
    n, chunk, repeats = (128, 64, 3) if quick else (256, 64, 9)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=bucket)
        options = {"endpoint_url": endpoint}
        url = f"s3://{bucket}/tomo.zarr"
        volume = _volume(n)
        print(f"s3-read: writing {n}^3 float32 in {chunk}^3 chunks to {url}", file=sys.stderr)
        write_tomogram(Tomogram.from_array(volume, pixel_size=10.0), url, chunks=(chunk,) * 3, levels=1, storage_options=options)
        portal = _publish_as_portal(s3, bucket, 10.0, volume.shape)

        times, results = _interleaved_times(
            {
                "ours": lambda: read_tomogram(url, storage_options=options).data.values,
                "ours_auto": lambda: read_tomogram(url, storage_options=options, chunks="auto").data.values,
                "peer": lambda: _peer_read(url, options, volume.shape, chunk),
                "portal": lambda: read_tomogram(portal, storage_options=options).data.values,  # anonymous, as the portal is read
            },
            repeats,
        )
    finally:
        server.stop()
    return {
        "name": "s3-read",
        "ours_s": round(min(times["ours"]), 4),
        "peer": "s3fs concurrent cat of all chunk objects + numcodecs Blosc decode",
        "peer_s": round(min(times["peer"]), 4),
        "ratio": round(min(times["peer"]) / min(times["ours"]), 3),
        "ratio_of_medians": round(statistics.median(times["peer"]) / statistics.median(times["ours"]), 3),
        "ours_auto_chunks_s": round(min(times["ours_auto"]), 4),
        "ratio_auto_chunks": round(min(times["peer"]) / min(times["ours_auto"]), 3),
        "shape": [n, n, n],
        "chunks": [chunk] * 3,
        "megabytes": round(volume.nbytes / 2**20, 1),
        "ours_mb_s": round(volume.nbytes / 2**20 / min(times["ours"]), 1),
        "ours_auto_chunks_mb_s": round(volume.nbytes / 2**20 / min(times["ours_auto"]), 1),
        "peer_mb_s": round(volume.nbytes / 2**20 / min(times["peer"]), 1),
        "portal": f"{portal} (anonymous; {PORTAL_BUCKET_NOTE})",
        "portal_s": round(min(times["portal"]), 4),
        "portal_mb_s": round(volume.nbytes / 2**20 / min(times["portal"]), 1),
        "ratio_portal": round(min(times["peer"]) / min(times["portal"]), 3),
        "portal_max_abs_error": float(np.max(np.abs(results["portal"] - volume))),
        "ours_max_abs_error": float(np.max(np.abs(results["ours"] - volume))),
        "ours_auto_max_abs_error": float(np.max(np.abs(results["ours_auto"] - volume))),
        "peer_max_abs_error": float(np.max(np.abs(results["peer"] - volume))),
        "ours_equals_peer": bool(np.array_equal(results["ours"], results["peer"])),
        "repeats": repeats,
        "quick": quick,
    }
