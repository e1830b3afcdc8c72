"""Storage faults: S3 errors (500, 503 SlowDown), dropped connections, cut-off bodies and stalls
between cryocloud and the moto S3 server, injected by tests/faultproxy.py.

Transient faults (each request fails at most twice in a row) are retried (botocore's standard
retry mode plus s3fs's own attempt, configured in cryocloud.store.location) and the data read back
are identical; test_reliability_storage_persistent.py covers faults that do not go away.
"""

from __future__ import annotations

import numpy as np
import pytest
from faultproxy import FaultPlan, FaultProxy

from cryocloud.model import Tomogram
from cryocloud.store import read_tomogram, write_tomogram

pytestmark = pytest.mark.slow  # a real S3 endpoint (moto server) and the CLI

DATA = np.random.default_rng(5).normal(size=(16, 16, 16)).astype(np.float32)


def _write(url: str, options: dict) -> None:
    write_tomogram(Tomogram.from_array(DATA, pixel_size=2.0), url, chunks=(8, 8, 8), levels=1, storage_options=options)


def _round_trip(s3_bucket, plan: FaultPlan, extra: dict | None = None) -> tuple[dict, np.ndarray]:
    """Write then read DATA through the proxy; (fault counts, data read back)."""
    url = f"{s3_bucket.url}/t.zarr"
    with FaultProxy(s3_bucket.storage_options["endpoint_url"], plan) as proxy:
        options = {"endpoint_url": proxy.url, **(extra or {})}
        _write(url, options)
        written = proxy.counts["faults"]
        back = read_tomogram(url, storage_options=options).data.values
    assert written > 0 and proxy.counts["faults"] > written, dict(proxy.counts)  # both the writes and the reads met faults
    # what landed in the bucket, read without the proxy, is the same
    np.testing.assert_array_equal(read_tomogram(url, storage_options=s3_bucket.storage_options).data.values, DATA)
    return dict(proxy.counts), back


@pytest.mark.parametrize("kinds", [("500", "503"), ("drop",), ("truncate",), ("timeout",)], ids="+".join)
def test_transient_chunk_faults_are_retried_and_data_identical(s3_bucket, kinds):
    """Chunk requests fail 0 or 1 times (a cut-off answer: up to twice) in a row with these faults."""
    plan = FaultPlan(kinds=kinds, max_consecutive=2 if kinds == ("truncate",) else 1, stall_s=1.0, path_contains="/t.zarr/0/")
    # a stalled answer must end in a timeout the client retries: read timeout below the stall
    extra = {"config_kwargs": {"read_timeout": 0.5, "connect_timeout": 0.5}} if kinds == ("timeout",) else {}
    counts, back = _round_trip(s3_bucket, plan, extra)
    assert sum(counts[f"fault_{k}"] for k in kinds) == counts["faults"] and all(counts[f"fault_{k}"] for k in kinds), counts
    np.testing.assert_array_equal(back, DATA)


def test_transient_faults_on_every_request_are_retried(s3_bucket):
    """Metadata, listing and chunk requests alike meet 500, 503, dropped and cut-off answers."""
    counts, back = _round_trip(s3_bucket, FaultPlan(kinds=("500", "503", "drop", "truncate"), max_consecutive=1))
    assert all(counts[f"fault_{k}"] > 0 for k in ("500", "503", "drop", "truncate")), counts
    np.testing.assert_array_equal(back, DATA)
