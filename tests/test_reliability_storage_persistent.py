"""Persistent storage faults (tests/faultproxy.py in front of the moto S3 server): a StoreError
naming the URL after a bounded number of attempts (CLI: exit 2), and no output that reads as complete.
The retry policy is botocore's standard mode, configured in cryocloud.store.location."""

from __future__ import annotations

import numpy as np
import pytest
from faultproxy import FaultPlan, FaultProxy

from cryocloud.cli import main
from cryocloud.errors import StoreError
from cryocloud.model import Tomogram
from cryocloud.store import read_tomogram, write_tomogram
from cryocloud.store.location import S3_RETRIES

pytestmark = pytest.mark.slow  # a real S3 endpoint (moto server) and the CLI

DATA = np.random.default_rng(5).normal(size=(16, 16, 16)).astype(np.float32)


def _write(url: str, options: dict) -> None:
    write_tomogram(Tomogram.from_array(DATA, pixel_size=2.0), url, chunks=(8, 8, 8), levels=1, storage_options=options)


def test_retry_configuration_is_botocore_standard_mode(s3_bucket):
    """The retry policy is botocore's (configured, not re-implemented), and a user override wins."""
    from cryocloud.store.location import resolve

    fs = resolve(s3_bucket.url, s3_bucket.storage_options).filesystem()
    assert fs.connect().meta.config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert S3_RETRIES == {"mode": "standard", "total_max_attempts": 4}  # botocore must not have rewritten our defaults
    custom = resolve(s3_bucket.url, {**s3_bucket.storage_options, "config_kwargs": {"retries": {"total_max_attempts": 7}}}).filesystem()
    assert custom.connect().meta.config.retries["total_max_attempts"] == 7


def test_persistent_write_fault_is_a_store_error_and_nothing_complete(s3_bucket):
    url = f"{s3_bucket.url}/t.zarr"
    plan = FaultPlan(kinds=("500",), methods=("PUT",), persistent=True, path_contains="/t.zarr/0/")
    with FaultProxy(s3_bucket.storage_options["endpoint_url"], plan) as proxy:
        with pytest.raises(StoreError, match="t.zarr") as err:
            _write(url, {"endpoint_url": proxy.url})
    attempts = proxy.counts["faults"]
    assert "internal error" in str(err.value).lower()
    # each chunk PUT was tried max_attempts times (botocore) before giving up: bounded, not forever
    assert S3_RETRIES["total_max_attempts"] <= attempts <= 8 * S3_RETRIES["total_max_attempts"] * 4, dict(proxy.counts)
    with pytest.raises(StoreError, match="multiscales"):  # the metadata that mark an image complete never came
        read_tomogram(url, storage_options=s3_bucket.storage_options)


def test_cli_persistent_read_fault_exits_2_and_writes_nothing(s3_bucket, tmp_path, capsys):
    url = f"{s3_bucket.url}/t.zarr"
    _write(url, s3_bucket.storage_options)
    plan = FaultPlan(kinds=("500",), methods=("GET",), persistent=True, path_contains="/t.zarr/0/0")
    out = tmp_path / "t.mrc"
    with FaultProxy(s3_bucket.storage_options["endpoint_url"], plan) as proxy:
        code = main(["convert", url, str(out), "--endpoint-url", proxy.url])
    err = capsys.readouterr().err
    assert code == 2, err
    line = next(line for line in err.splitlines() if line.startswith("error:"))
    assert "s3://" in line and "t.zarr/0" in line and "chunk" in line
    assert proxy.counts["faults"] >= S3_RETRIES["total_max_attempts"]
    assert not out.exists()
    assert not (tmp_path / "t.mrc.partial").exists()


def test_cli_persistent_write_fault_exits_2(s3_bucket, tmp_path, capsys):
    src = tmp_path / "t.zarr"
    _write(str(src), {})
    plan = FaultPlan(kinds=("500",), methods=("PUT",), persistent=True)
    with FaultProxy(s3_bucket.storage_options["endpoint_url"], plan) as proxy:
        code = main(["convert", str(src), f"{s3_bucket.url}/out.zarr", "--endpoint-url", proxy.url])
    err = capsys.readouterr().err
    assert code == 2, err
    assert any(line.startswith("error:") and f"{s3_bucket.url}/out.zarr" in line for line in err.splitlines()), err
    assert s3_bucket.fs().find(f"{s3_bucket.url}/out.zarr") == []
