"""Credentials given in the environment or in storage options never appear in stdout, stderr, log
records (INFO and above; the secret at no level) or any file written, local or S3: zarr metadata,
figures, the converted MRC, summary.json and the report of a pipeline run whose config holds them."""

from __future__ import annotations

import logging
from pathlib import Path

import dask.config
import numpy as np

from cryocloud.cli import main
from cryocloud.model import TiltSeries
from cryocloud.store import write_tilt_series
import pytest

pytestmark = pytest.mark.slow  # a real S3 endpoint (moto server) and the CLI

ACCESS_KEY = "AKIACRYOCLOUDLEAKTEST"
SECRET_KEY = "s3cr3t-DoNotLeak-7f3a9c2e"


def _all_bytes(s3_bucket, local_root: Path) -> list[tuple[str, bytes]]:
    fs = s3_bucket.fs()
    found = [(f"s3://{k}", fs.cat_file(k)) for k in fs.find(s3_bucket.url)]
    found += [(str(p), p.read_bytes()) for p in local_root.rglob("*") if p.is_file()]
    return found


def test_credentials_never_leak_into_output_logs_or_files(s3_bucket, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    endpoint = s3_bucket.storage_options["endpoint_url"]
    angles = np.arange(-45.0, 46.0, 15.0)
    ts = TiltSeries.from_array(np.random.default_rng(1).normal(size=(angles.size, 32, 32)).astype(np.float32), tilt_angles=angles, pixel_size=5.0)
    secret_options = {"endpoint_url": endpoint, "key": ACCESS_KEY, "secret": SECRET_KEY}
    write_tilt_series(ts, f"{s3_bucket.url}/in/ts.zarr", levels=1, storage_options=secret_options)
    caplog.set_level(logging.DEBUG)
    with dask.config.set({"cryocloud.cluster.n_workers": 1, "cryocloud.cluster.processes": False}):
        assert main(["reconstruct", f"{s3_bucket.url}/in/ts.zarr", f"{s3_bucket.url}/out/tomo.zarr", "--thickness", "16",
                     "--endpoint-url", endpoint]) == 0
        assert main(["info", f"{s3_bucket.url}/out/tomo.zarr", "--endpoint-url", endpoint, "--json"]) == 0
        assert main(["convert", f"{s3_bucket.url}/out/tomo.zarr", str(tmp_path / "tomo.mrc"), "--endpoint-url", endpoint]) == 0
        # a pipeline run whose config carries the secrets in its storage options: summary.json and report
        config = tmp_path / "run.yaml"
        config.write_text(
            f"input: {s3_bucket.url}/in/ts.zarr\noutput: {s3_bucket.url}/run\nstages: [reconstruct]\n"
            f"storage_options: {{endpoint_url: '{endpoint}', key: '{ACCESS_KEY}', secret: '{SECRET_KEY}'}}\n"
        )
        assert main(["run", str(config)]) == 0
        # and a failure: the error message names the URL, not the credentials
        assert main(["info", f"{s3_bucket.url}/missing.zarr", "--endpoint-url", endpoint]) == 2
    out = capsys.readouterr()
    records = caplog.records
    texts = {"stdout": out.out, "stderr": out.err, "log": "\n".join(r.getMessage() for r in records if r.levelno >= logging.INFO)}
    files = _all_bytes(s3_bucket, tmp_path)
    assert any(name.endswith("summary.json") for name, _ in files)
    assert any(name.endswith(".png") for name, _ in files)
    # even botocore's DEBUG request dumps carry only the key id (in the signed Authorization header), never the secret
    assert SECRET_KEY not in "\n".join(r.getMessage() for r in records)
    for secret in (ACCESS_KEY, SECRET_KEY):
        for name, text in texts.items():
            assert secret not in text, f"{name} shows a credential"
        for name, data in files:
            if name.endswith("run.yaml"):  # the user's own config, an input
                continue
            assert secret.encode() not in data, f"{name} stores a credential"
