"""Shared pytest fixtures.

Real data: ``real_data`` (session) is the folder of real test data (tests/data/real, kept in
the repository, read-only); ``REAL_DATA`` is the same path for module-level use (``from conftest import REAL_DATA``).

S3 (a real HTTP endpoint, no mocks of the client side):

- ``s3_endpoint`` (session): starts ``moto.server.ThreadedMotoServer`` on 127.0.0.1 at a free port
  and returns its URL (``"http://127.0.0.1:PORT"``). For the whole test session it sets dummy
  credentials (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``) and
  ``AWS_REQUEST_CHECKSUM_CALCULATION=when_required``; the endpoint is NOT put in the environment,
  pass it through storage options.
- ``s3_bucket`` (function): resets the moto server (``POST /moto-api/reset``), creates a fresh bucket
  and returns an ``S3Bucket(url, storage_options)``: ``url`` is ``"s3://<bucket>"`` and
  ``storage_options`` is ``{"endpoint_url": <endpoint>}``, ready for ``cryocloud.store`` functions::

      def test_x(s3_bucket):
          write_tomogram(tomo, f"{s3_bucket.url}/t.zarr", storage_options=s3_bucket.storage_options)

  ``s3_bucket.fs()`` returns a fresh s3fs filesystem for direct inspection. The tuple unpacks as
  ``url, storage_options = s3_bucket``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import NamedTuple

import dask.config
import pytest

REAL_DATA = Path(__file__).resolve().parent / "data" / "real"

_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}


class S3Bucket(NamedTuple):
    url: str
    storage_options: dict

    def fs(self):
        """A fresh (uncached) s3fs filesystem on the test endpoint."""
        from cryocloud.store.location import resolve

        return resolve(self.url, self.storage_options).filesystem()


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Folder of the real test data (read-only)."""
    return REAL_DATA


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of a moto S3 server on 127.0.0.1, running for the whole session."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in _S3_ENV}
    os.environ.update(_S3_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint) -> S3Bucket:
    """A fresh, empty bucket on the moto server (the server is reset first)."""
    import boto3
    import requests

    requests.post(f"{s3_endpoint}/moto-api/reset", timeout=10).raise_for_status()
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return S3Bucket(f"s3://{name}", {"endpoint_url": s3_endpoint})


@pytest.fixture
def small_cluster():
    """One in-process worker: the CLI commands that start a cluster start a cheap one."""
    with dask.config.set({"cryocloud.cluster.n_workers": 1, "cryocloud.cluster.processes": False}):
        yield
