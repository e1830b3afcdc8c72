"""Security guarantees, tested by behaviour:

- public data are read anonymously and never written: anonymous writes and writes into the portal
  bucket are refused before any request, through the API and the CLI;
- credentials: see test_reliability_credentials.py;
- YAML configs are loaded safely: python tags are refused and never run;
- no pickle of user data: a pickled angles file planted in a match folder is refused, its payload never runs;
- keys with `..` or absolute paths cannot leave the output prefix (local folder and S3).
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from cryocloud.cli import main
from cryocloud.errors import CryocloudError, StoreError
from cryocloud.model import Tomogram
from cryocloud.store import open_url, resolve, write_mrc, write_tomogram

pytestmark = pytest.mark.slow  # a real S3 endpoint (moto server) and the CLI

def _tomo() -> Tomogram:
    return Tomogram.from_array(np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32), pixel_size=4.0)


@pytest.mark.parametrize("url", ["s3://my-bucket/t.zarr", "s3://cryoet-data-portal-public/10000/x.zarr"])
def test_public_or_anonymous_locations_are_never_written(url, tmp_path):
    options = {"anon": True} if "my-bucket" in url else None
    for write in (
        lambda: write_tomogram(_tomo(), url, storage_options=options),
        lambda: write_mrc(_tomo(), url.replace(".zarr", ".mrc"), storage_options=options),
        lambda: open_url(url.replace(".zarr", ".txt"), "w", storage_options=options),
    ):
        with pytest.raises(StoreError, match="read-only") as err:
            write()
        assert err.value.field in ("anon", "url")


def test_cli_anonymous_write_is_refused_and_nothing_written(s3_bucket, tmp_path, capsys):
    """--anon is read access only (outputs go with credentials), and the portal bucket is never written."""
    src = str(tmp_path / "t.zarr")
    write_tomogram(_tomo(), src, levels=1)
    portal = "s3://cryoet-data-portal-public/10000/t.zarr"
    code = main(["convert", src, portal, "--anon", "--endpoint-url", s3_bucket.storage_options["endpoint_url"]])
    err = capsys.readouterr().err
    assert code == 2
    assert "public read-only bucket" in err
    assert not s3_bucket.fs().exists("cryoet-data-portal-public")


def test_anonymous_reads_work(s3_bucket):
    """Reads with anon=True send no credentials and still read a public (here: moto) bucket."""
    from cryocloud.store import read_tomogram

    import json

    url = f"{s3_bucket.url}/t.zarr"
    write_tomogram(_tomo(), url, levels=1, storage_options=s3_bucket.storage_options)
    bucket = s3_bucket.url.removeprefix("s3://")
    public = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
         "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}
    import boto3

    boto3.client("s3", endpoint_url=s3_bucket.storage_options["endpoint_url"], region_name="us-east-1").put_bucket_policy(
        Bucket=bucket, Policy=json.dumps(public))
    got = read_tomogram(url, storage_options={**s3_bucket.storage_options, "anon": True}).data.values
    np.testing.assert_array_equal(got, _tomo().data.values)


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['touch {marker}']", "!!python/name:os.system", "!!python/object/new:os.system ['touch {marker}']"])
def test_yaml_python_tags_are_refused(tmp_path, tag):
    from cryocloud.pipeline import load_config

    marker = tmp_path / "ran"
    config = tmp_path / "c.yaml"
    config.write_text("output: " + tag.format(marker=marker) + "\n")
    with pytest.raises(CryocloudError, match="YAML"):
        load_config(config)
    assert not marker.exists()


def test_pickled_user_data_is_not_unpickled(tmp_path):
    """A match folder whose angles.npy is a pickle: reading it fails, the payload never runs."""
    from cryocloud.pick.results import read_match

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "match"
    folder.mkdir()
    (folder / "match.json").write_text("{}")
    buffer = io.BytesIO()
    np.save(buffer, np.array([Payload()], dtype=object), allow_pickle=True)
    (folder / "angles.npy").write_bytes(buffer.getvalue())
    with pytest.raises((ValueError, CryocloudError), match="pickle"):
        read_match(str(folder))
    assert not marker.exists()


@pytest.mark.parametrize("key", ["../escape.txt", "a/../../escape.txt", "/etc/escape.txt", "..", "a/..\\..\\escape.txt"])
@pytest.mark.parametrize("where", ["local", "s3"])
def test_keys_cannot_escape_the_output_prefix(key, where, tmp_path, request):
    if where == "local":
        root = resolve(str(tmp_path / "out"))
    else:
        bucket = request.getfixturevalue("s3_bucket")
        root = resolve(f"{bucket.url}/out", bucket.storage_options)
    with pytest.raises(StoreError, match="relative path inside this prefix") as err:
        root.child(key)
    assert err.value.field == "key"
    inside = root.child("a", "b.txt")
    assert root.contains(inside)
    with open_url(inside.url, "w", storage_options=root.storage_options) as fh:
        fh.write("ok")
    assert not (tmp_path / "escape.txt").exists()
