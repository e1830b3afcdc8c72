"""`cryocloud info` and `cryocloud convert` through cryocloud.cli.main."""

from __future__ import annotations

import json

import mrcfile
import numpy as np

from cryocloud.cli import main
from cryocloud.store import read_tilt_series, read_tlt, read_tomogram, write_mrc

from conftest import REAL_DATA
import pytest

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end


def test_convert_mrc_to_zarr_0_5_and_back_and_info(tmp_path, capsys):
    src = REAL_DATA / "mrcfile_emd3197" / "EMD-3197.map"
    out = tmp_path / "map.zarr"
    assert main(["convert", str(src), str(out), "--ngff-version", "0.5", "--levels", "2"]) == 0
    with mrcfile.open(src, permissive=True) as ref:
        np.testing.assert_array_equal(read_tomogram(str(out)).data.values, ref.data)
    assert (out / "zarr.json").exists()
    assert main(["convert", str(src), str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["convert", str(out), str(tmp_path / "back.mrc")]) == 0
    with mrcfile.open(tmp_path / "back.mrc") as back, mrcfile.open(src, permissive=True) as ref:
        np.testing.assert_array_equal(back.data, ref.data)
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["levels"][1]["shape"] == [10, 10, 10] and summary["pixel_size"] == 11.4
    assert summary["cryocloud"]["provenance"]["stage"] == "convert"
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "NGFF 0.5" in text and "level 1" in text and "11.4000 A" in text
    assert main(["info", str(src)]) == 0
    assert "(20, 20, 20)" in capsys.readouterr().out


def test_convert_tilt_stack_with_mdoc_and_back_to_mrc_with_tlt(tmp_path, capsys):
    stack = np.random.default_rng(2).normal(size=(41, 12, 10)).astype(np.float32)
    write_mrc(stack, tmp_path / "TS_01.mrc", pixel_size=5.4)
    mdoc = REAL_DATA / "tiltstack_ts01_mdoc" / "TS_01.mrc.mdoc"
    out = tmp_path / "ts.zarr"
    assert main(["convert", str(tmp_path / "TS_01.mrc"), str(out), "--mdoc", str(mdoc), "--exposure", "3"]) == 0
    ts = read_tilt_series(str(out))
    assert ts.tilt_axis_angle == 85.3 and ts.n_tilts == 41
    np.testing.assert_allclose(ts.per_tilt("pre_exposure"), 3.0 * np.arange(41))
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "41 tilts, -60.00 .. 60.00 deg" in text and "tilt axis   85.3" in text
    assert main(["convert", str(out), str(tmp_path / "ts.st")]) == 0
    np.testing.assert_allclose(read_tlt(tmp_path / "ts.tlt"), ts.tilt_angles, atol=1e-4)
    with mrcfile.open(tmp_path / "ts.st") as back:
        np.testing.assert_array_equal(back.data, stack)
    assert main(["convert", str(tmp_path / "TS_01.mrc"), str(tmp_path / "t2.zarr"), "--mdoc", str(mdoc)]) == 2
    assert "ExposureDose" in capsys.readouterr().err


def test_convert_stack_as_volume_only_when_asked(tmp_path, capsys):
    """A .st stack (or an MRC with a .tlt beside it) is not silently turned into a tomogram: without angles it
    is refused, with --as-volume it is written as a tomogram and the output line says so."""
    data = np.random.default_rng(3).normal(size=(6, 12, 10)).astype(np.float32)
    write_mrc(data, tmp_path / "ts.st", pixel_size=5.0)
    assert main(["convert", str(tmp_path / "ts.st"), str(tmp_path / "a.zarr")]) == 2
    assert "--as-volume" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "ts.st"), str(tmp_path / "a.zarr"), "--as-volume"]) == 0
    assert "a tomogram" in " ".join(capsys.readouterr().out.split())
    assert read_tomogram(str(tmp_path / "a.zarr")).shape == (6, 12, 10)
    write_mrc(data, tmp_path / "vol.mrc", pixel_size=5.0)
    assert main(["convert", str(tmp_path / "vol.mrc"), str(tmp_path / "b.zarr")]) == 0  # nothing beside it: a volume
    (tmp_path / "vol.tlt").write_text("\n".join(str(a) for a in range(-15, 16, 6)))
    assert main(["convert", str(tmp_path / "vol.mrc"), str(tmp_path / "c.zarr")]) == 2
    assert "vol.tlt" in capsys.readouterr().err


def test_cli_user_errors_exit_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.zarr")]) == 2
    assert "missing.zarr" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc")]) == 2
    assert "both MRC" in capsys.readouterr().err


def test_convert_to_s3_with_endpoint_option(s3_bucket, capsys):
    src = REAL_DATA / "mrcfile_emd3197" / "EMD-3197.map"
    endpoint = s3_bucket.storage_options["endpoint_url"]
    url = f"{s3_bucket.url}/emd.zarr"
    assert main(["convert", str(src), url, "--endpoint-url", endpoint, "--levels", "1"]) == 0
    assert read_tomogram(url, storage_options=s3_bucket.storage_options).data.shape == (20, 20, 20)
    capsys.readouterr()
    assert main(["info", url, "--endpoint-url", endpoint, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["url"] == url


def test_convert_anonymous_s3_read_to_local_writes(s3_bucket, tmp_path):
    """--anon reads a public bucket without credentials; the outputs are written with the ordinary options."""
    import boto3

    from cryocloud.model import Tomogram
    from cryocloud.store import write_tomogram

    endpoint = s3_bucket.storage_options["endpoint_url"]
    bucket = s3_bucket.url.removeprefix("s3://")
    volume = np.random.default_rng(4).normal(size=(6, 10, 12)).astype(np.float32)
    write_tomogram(Tomogram.from_array(volume, pixel_size=7.0), f"{s3_bucket.url}/pub.zarr", levels=1, storage_options=s3_bucket.storage_options)
    public = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
                                                      "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").put_bucket_policy(Bucket=bucket, Policy=json.dumps(public))
    for target in (tmp_path / "pub.mrc", tmp_path / "pub.zarr"):
        assert main(["convert", f"{s3_bucket.url}/pub.zarr", str(target), "--anon", "--endpoint-url", endpoint, "--levels", "1"]) == 0
        np.testing.assert_array_equal(read_tomogram(str(target)).data.values if target.suffix == ".zarr" else mrcfile.read(target), volume)
