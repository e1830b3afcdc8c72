"""OME-Zarr reading and writing: round trips, pyramid placement, NGFF validity, write safety, lazy reads."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from cryocloud.errors import OutputExistsError, StoreError
from cryocloud.model import Microscope, TiltSeries, Tomogram
from cryocloud.store import read_tilt_series, read_tomogram, write_tilt_series, write_tomogram
from cryocloud.store.ngff import default_chunks, read_chunks


def _tomogram(shape=(20, 34, 45), seed=0, **kw) -> Tomogram:
    vol = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return Tomogram.from_array(vol, pixel_size=2.5, tilt_angles=[-30.0, 0.0, 30.0],
                               microscope=Microscope(voltage_kv=200, cs_mm=2.0), **kw)


def _tilt_series(seed=1) -> TiltSeries:
    rng = np.random.default_rng(seed)
    return TiltSeries.from_array(
        rng.normal(size=(5, 24, 30)).astype(np.float32),
        tilt_angles=[0.0, 3.0, -3.0, 6.0, -6.0], pixel_size=3.2, exposure=2.5,
        acquisition_order=[0, 1, 2, 3, 4], tilt_axis_angle=85.3,
        microscope=Microscope(voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.1),
        defocus_u=[2e4, 2.1e4, 2.2e4, 2.3e4, 2.4e4], shift_x=[0.5, -1, 2, 0, 3.5],
    )


def _pool(a: np.ndarray, f: int) -> np.ndarray:
    """Independent mean pooling by f along all axes (trimming)."""
    s = [n // f for n in a.shape]
    a = a[: s[0] * f, : s[1] * f, : s[2] * f]
    return a.reshape(s[0], f, s[1], f, s[2], f).mean(axis=(1, 3, 5))


def _chunk_files(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.name != "zarr.json"}


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_tomogram_round_trip_and_pyramid(tmp_path, version):
    tomo = _tomogram()
    url = str(tmp_path / "t.zarr")
    write_tomogram(tomo, url, ngff_version=version, chunks=(8, 16, 16),
                   metadata={"stage": "reconstruct", "parameters": {"filter": "ramp"}, "note": "test"})
    back = read_tomogram(url)
    assert isinstance(back.data.data, da.Array)
    np.testing.assert_array_equal(back.data.values, tomo.data.values)
    assert back.pixel_size == 2.5 and back.tilt_angles == (-30.0, 0.0, 30.0)
    assert back.microscope == tomo.microscope
    np.testing.assert_allclose(back.data.coords["x"].values, tomo.data.coords["x"].values)
    attrs = json.loads((tmp_path / "t.zarr" / (".zattrs" if version == "0.4" else "zarr.json")).read_text())
    attrs = attrs.get("attributes", attrs)
    block = attrs["cryocloud"]
    assert block["kind"] == "tomogram" and block["schema_version"] == 1
    assert block["provenance"]["stage"] == "reconstruct" and block["provenance"]["parameters"] == {"filter": "ramp"}
    assert block["metadata"] == {"note": "test"}
    import cryocloud

    assert block["provenance"]["software_version"] == cryocloud.__version__
    for level in (1, 2):
        f = 2**level
        lv = read_tomogram(url, level=level)
        np.testing.assert_allclose(lv.data.values, _pool(tomo.data.values, f), rtol=1e-5, atol=1e-6)
        assert lv.pixel_size == 2.5 * f
        # voxel centres of level n = mean position of the level-0 voxels they average
        x0 = tomo.data.coords["x"].values
        nx = lv.data.sizes["x"]
        np.testing.assert_allclose(lv.data.coords["x"].values, x0[: nx * f].reshape(nx, f).mean(axis=1))
    assert not (tmp_path / "t.zarr" / "3").exists()


def test_tilt_series_round_trip_keeps_per_tilt_coords_and_tilt_axis(tmp_path):
    ts = _tilt_series()
    url = str(tmp_path / "ts.zarr")
    write_tilt_series(ts, url, levels=2)
    back = read_tilt_series(url)
    np.testing.assert_array_equal(back.data.values, ts.data.values)
    for name in ("tilt_angle", "acquisition_order", "exposure", "pre_exposure", "defocus_u", "shift_x"):
        np.testing.assert_array_equal(back.per_tilt(name), ts.per_tilt(name))
    assert back.per_tilt("defocus_v") is None
    assert back.tilt_axis_angle == 85.3 and back.microscope == ts.microscope and back.pixel_size == 3.2
    lv1 = read_tilt_series(url, level=1)
    assert lv1.data.shape == (5, 12, 15)  # tilt is never binned
    np.testing.assert_allclose(lv1.data.values[2], ts.data.values[2].reshape(12, 2, 15, 2).mean(axis=(1, 3)), atol=1e-6)


def test_default_chunks_follow_the_documented_rules():
    assert default_chunks((512, 512, 512), 4, (True,) * 3) == (128, 128, 128)
    assert default_chunks((50, 512, 512), 1, (True,) * 3) == (50, 128, 128)
    assert default_chunks((512, 512, 512), 8, (True,) * 3) == (64, 64, 64)
    assert default_chunks((41, 4096, 4096), 4, (False, True, True)) == (1, 256, 4096)
    assert default_chunks((41, 1000, 16384), 4, (False, True, True)) == (1, 128, 16384)
    chunk = default_chunks((3, 10, 4 * 2**20), 4, (False, True, True))
    assert chunk[0] == 1 and chunk[1] * chunk[2] * 4 <= 8 * 2**20
    assert read_chunks((256, 256, 256), (64, 64, 64), 4) == (256, 256, 128)  # 32 MiB of whole zarr chunks
    assert read_chunks((41, 4096, 4096), (1, 256, 4096), 4) == (4, 512, 4096)
    assert read_chunks((20, 30, 40), (16, 16, 16), 4) == (20, 30, 40)


def test_auto_read_chunks_cover_whole_zarr_chunks(tmp_path):
    tomo = _tomogram(shape=(40, 34, 45))
    write_tomogram(tomo, str(tmp_path / "t.zarr"), chunks=(8, 16, 16), levels=1)
    back = read_tomogram(str(tmp_path / "t.zarr"), chunks="auto")
    assert back.data.data.chunks == ((40,), (34,), (45,))
    np.testing.assert_array_equal(back.data.values, tomo.data.values)
    assert read_tomogram(str(tmp_path / "t.zarr")).data.data.chunksize == (8, 16, 16)


@pytest.mark.slow
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_output_validates_with_ome_zarr_models_and_reads_with_ome_zarr(tmp_path, version):
    url = tmp_path / "t.zarr"
    write_tomogram(_tomogram(), str(url), ngff_version=version)
    tsurl = tmp_path / "ts.zarr"
    write_tilt_series(_tilt_series(), str(tsurl), ngff_version=version)
    if version == "0.4":
        from ome_zarr_models.v04 import Image
    else:
        from ome_zarr_models.v05 import Image
    for path in (url, tsurl):
        image = Image.from_zarr(zarr.open_group(str(path), mode="r"))
        (datasets,) = image.datasets
        assert [d.path for d in datasets] == ["0", "1", "2"]
        assert datasets[2].coordinateTransformations[1].translation[-1] == pytest.approx(1.5 * (2.5 if path == url else 3.2))

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    nodes = list(Reader(parse_url(str(url)))())
    node = next(n for n in nodes if Multiscales.matches(n.zarr))
    assert [tuple(level.shape) for level in node.data] == [(20, 34, 45), (10, 17, 22), (5, 8, 11)]
    np.testing.assert_array_equal(np.asarray(node.data[0]), read_tomogram(str(url)).data.values)
    transforms = node.metadata["coordinateTransformations"]
    assert transforms[1][0]["scale"] == [5.0, 5.0, 5.0] and transforms[1][1]["translation"] == [1.25, 1.25, 1.25]


def test_existing_output_and_input_are_protected(tmp_path):
    url = str(tmp_path / "t.zarr")
    write_tomogram(_tomogram(seed=0), url)
    with pytest.raises(OutputExistsError, match="complete image exists"):
        write_tomogram(_tomogram(seed=1), url)
    write_tomogram(_tomogram(seed=1), url, overwrite=True)
    np.testing.assert_array_equal(read_tomogram(url).data.values, _tomogram(seed=1).data.values)
    src = read_tomogram(url)
    for target in (url, url + "/sub.zarr"):
        with pytest.raises(OutputExistsError, match="input"):
            write_tomogram(src.with_data(src.data.data * 2), target, overwrite=True)
    np.testing.assert_array_equal(read_tomogram(url).data.values, _tomogram(seed=1).data.values)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not an OME-Zarr"):
        write_tomogram(_tomogram(), str(tmp_path / "plain"))


class _Counting:
    """Source whose blocks record their chunk location when computed; `fail_at` raises once."""

    def __init__(self, values: np.ndarray, chunks, fail_at=None):
        self.computed: list[tuple] = []
        self.fail_at = fail_at
        self.lock = threading.Lock()
        self.array = da.from_array(values, chunks=chunks).map_blocks(self._touch, dtype=values.dtype)

    def _touch(self, block, block_info=None):
        loc = tuple(block_info[0]["chunk-location"])
        with self.lock:
            self.computed.append(loc)
        if loc == self.fail_at:
            raise RuntimeError("simulated crash of a worker")
        return block


def test_interrupted_write_is_detected_and_resume_writes_only_missing_chunks(tmp_path):
    tomo = _tomogram(shape=(32, 32, 32))
    url = str(tmp_path / "t.zarr")
    crashing = _Counting(tomo.data.values, 16, fail_at=(1, 1, 0))
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_tomogram(tomo.with_data(crashing.array), url, chunks=(16, 16, 16))
    with pytest.raises(StoreError, match="incomplete.*interrupted.*rerun"):
        read_tomogram(url)
    level0 = tmp_path / "t.zarr" / "0"
    stored = {tuple(int(i) for i in k.split("/")) for k in _chunk_files(level0)}
    missing = {(i, j, k) for i in (0, 1) for j in (0, 1) for k in (0, 1)} - stored
    assert (1, 1, 0) in missing
    before = _chunk_files(level0)

    good = _Counting(tomo.data.values, 16)
    write_tomogram(tomo.with_data(good.array), url, chunks=(16, 16, 16))
    assert set(good.computed) == missing
    after = _chunk_files(level0)
    assert all(after[k] == t for k, t in before.items())  # stored chunks were not rewritten
    np.testing.assert_array_equal(read_tomogram(url).data.values, tomo.data.values)
    np.testing.assert_allclose(read_tomogram(url, level=1).data.values, _pool(tomo.data.values, 2), atol=1e-6)


def test_resume_rewrites_exactly_the_deleted_chunks(tmp_path):
    tomo = _tomogram(shape=(32, 32, 32), seed=3)
    url = str(tmp_path / "t.zarr")
    write_tomogram(tomo, url, chunks=(16, 16, 16), ngff_version="0.5")
    root = tmp_path / "t.zarr"
    meta = json.loads((root / "zarr.json").read_text())
    meta["attributes"].pop("ome")  # as if the run died before writing its metadata
    (root / "zarr.json").write_text(json.dumps(meta))
    for key in ("c/0/1/1", "c/1/0/0"):
        (root / "0" / key).unlink()
    (root / "1" / "c/0/0/0").unlink()
    good = _Counting(tomo.data.values, 16)
    write_tomogram(tomo.with_data(good.array), url, chunks=(16, 16, 16), ngff_version="0.5")
    assert sorted(good.computed) == [(0, 1, 1), (1, 0, 0)]
    np.testing.assert_array_equal(read_tomogram(url).data.values, tomo.data.values)
    np.testing.assert_allclose(read_tomogram(url, level=1).data.values, _pool(tomo.data.values, 2), atol=1e-6)


def test_lazy_read_touches_only_requested_chunks_and_names_corrupt_ones(tmp_path):
    tomo = _tomogram(shape=(32, 32, 32), seed=4)
    url = str(tmp_path / "t.zarr")
    write_tomogram(tomo, url, chunks=(16, 16, 16), levels=1)
    level0 = tmp_path / "t.zarr" / "0"
    for key in _chunk_files(level0):
        if key != "0/0/1":
            (level0 / key).write_bytes(b"garbage, not a blosc stream")
    back = read_tomogram(url)
    np.testing.assert_array_equal(back.data[:16, :16, 16:].values, tomo.data.values[:16, :16, 16:])
    with pytest.raises(StoreError, match=r"chunk\(s\) \[1/1/1\].*corrupt") as err:
        back.data[20:, 20:, 20:].values
    assert err.value.field == "chunk" and "t.zarr/0/1/1/1" in str(err.value)


def test_truncated_chunk_raises_store_error(tmp_path):
    url = str(tmp_path / "t.zarr")
    write_tomogram(_tomogram(shape=(16, 16, 16)), url, chunks=(16, 16, 16), levels=1)
    chunk = tmp_path / "t.zarr" / "0" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:40])
    with pytest.raises(StoreError, match="0/0/0"):
        read_tomogram(url).data.values


def test_bad_inputs_raise_store_errors_naming_url_and_field(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        read_tomogram(str(tmp_path / "nothing.zarr"))
    (tmp_path / "file.zarr").write_text("hello")
    with pytest.raises(StoreError, match="not a zarr group"):
        read_tomogram(str(tmp_path / "file.zarr"))
    g = zarr.create_group(str(tmp_path / "plain.zarr"))
    g.create_array("data", shape=(4, 4), dtype="f4")
    g.attrs["hello"] = 1
    with pytest.raises(StoreError, match="incomplete|not an OME-Zarr"):
        read_tomogram(str(tmp_path / "plain.zarr"))
    g2 = zarr.create_group(str(tmp_path / "empty.zarr"))
    g2.attrs["hello"] = 1
    with pytest.raises(StoreError, match="without NGFF multiscales"):
        read_tomogram(str(tmp_path / "empty.zarr"))

    ts_url = str(tmp_path / "ts.zarr")
    write_tilt_series(_tilt_series(), ts_url, levels=1)
    with pytest.raises(StoreError, match="axes") as err:
        read_tomogram(ts_url)
    assert err.value.field == "multiscales.axes" and "ts.zarr" in str(err.value)

    url = tmp_path / "nopx.zarr"
    write_tomogram(_tomogram(shape=(8, 8, 8)), str(url), levels=1)
    attrs = json.loads((url / ".zattrs").read_text())
    attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"] = [{"type": "translation", "translation": [0, 0, 0]}]
    (url / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(StoreError, match="pixel size is missing") as err:
        read_tomogram(str(url))
    assert err.value.field == "pixel_size"
    with pytest.raises(StoreError, match="levels 0..0"):
        read_tomogram(str(url), level=3)
    with pytest.raises(StoreError, match="NGFF version"):
        write_tomogram(_tomogram(), str(tmp_path / "v.zarr"), ngff_version="0.3")
    with pytest.raises(StoreError, match="scheme"):
        read_tomogram("ftp://host/x.zarr")
    frames = TiltSeries.from_array(np.zeros((3, 2, 4, 4), np.float32), tilt_angles=[-3, 0, 3], pixel_size=1.0)
    with pytest.raises(StoreError, match="movie frames") as err:
        write_tilt_series(frames, str(tmp_path / "frames.zarr"))
    assert err.value.field == "dims" and not (tmp_path / "frames.zarr").exists()


@pytest.mark.slow
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_s3_round_trip_through_moto(s3_bucket, version):
    url = f"{s3_bucket.url}/data/t.zarr"
    tomo = _tomogram(shape=(16, 20, 24))
    write_tomogram(tomo, url, ngff_version=version, storage_options=s3_bucket.storage_options, chunks=(8, 8, 8))
    back = read_tomogram(url, storage_options=s3_bucket.storage_options)
    np.testing.assert_array_equal(back.data.values, tomo.data.values)
    np.testing.assert_allclose(read_tomogram(url, level=1, storage_options=s3_bucket.storage_options).data.values,
                               _pool(tomo.data.values, 2), atol=1e-6)
    keys = s3_bucket.fs().find(url)
    assert any(k.endswith(("/0/1/1/2", "/0/c/1/1/2")) for k in keys)
    with pytest.raises(OutputExistsError):
        write_tomogram(tomo, url, ngff_version=version, storage_options=s3_bucket.storage_options)
    ts_url = f"{s3_bucket.url}/data/ts.zarr"
    write_tilt_series(_tilt_series(), ts_url, ngff_version=version, storage_options=s3_bucket.storage_options)
    ts = read_tilt_series(ts_url, storage_options=s3_bucket.storage_options)
    np.testing.assert_array_equal(ts.per_tilt("shift_x"), _tilt_series().per_tilt("shift_x"))


@pytest.mark.slow
def test_s3_endpoint_from_environment_and_missing_bucket(s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_bucket.storage_options["endpoint_url"])
    url = f"{s3_bucket.url}/t.zarr"
    write_tomogram(_tomogram(shape=(8, 8, 8)), url, levels=1)
    assert read_tomogram(url).data.shape == (8, 8, 8)
    with pytest.raises(StoreError, match="does not exist|cannot be"):
        read_tomogram("s3://no-such-bucket-xyz/t.zarr")


@pytest.mark.slow
def test_s3_resume_rewrites_only_deleted_chunk_objects(s3_bucket):
    url = f"{s3_bucket.url}/run/t.zarr"
    opts = s3_bucket.storage_options
    tomo = _tomogram(shape=(32, 32, 32), seed=6)
    write_tomogram(tomo, url, chunks=(16, 16, 16), levels=2, storage_options=opts)
    fs = s3_bucket.fs()
    root = url.removeprefix("s3://")
    attrs = json.loads(fs.cat_file(f"{root}/.zattrs"))
    del attrs["multiscales"]  # as if the run died before its metadata
    fs.pipe_file(f"{root}/.zattrs", json.dumps(attrs).encode())
    fs.rm_file(f"{root}/0/1/0/1")
    with pytest.raises(StoreError, match="incomplete"):
        read_tomogram(url, storage_options=opts)
    good = _Counting(tomo.data.values, 16)
    write_tomogram(tomo.with_data(good.array), url, chunks=(16, 16, 16), levels=2, storage_options=opts)
    assert good.computed == [(1, 0, 1)]
    np.testing.assert_array_equal(read_tomogram(url, storage_options=opts).data.values, tomo.data.values)


@pytest.mark.slow
def test_write_and_read_on_a_distributed_cluster(s3_bucket):
    from distributed import Client, LocalCluster

    url = f"{s3_bucket.url}/cluster/ts.zarr"
    ts = _tilt_series()
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0") as cluster, Client(cluster):
        write_tilt_series(ts.with_data(da.from_array(ts.data.values, chunks=(2, 12, 30))), url,
                          storage_options=s3_bucket.storage_options, chunks=(1, 8, 30))
        back = read_tilt_series(url, storage_options=s3_bucket.storage_options)
        assert float(back.data.sum().compute()) == pytest.approx(float(ts.data.values.sum(dtype=np.float64)), rel=1e-5)
        np.testing.assert_array_equal(back.data[3].values, ts.data.values[3])


def test_plain_ngff_written_by_ome_zarr_reads_as_tomogram_in_angstrom(tmp_path):
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    vol = np.random.default_rng(7).normal(size=(8, 12, 16)).astype(np.float32)
    group = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=2)
    write_image(vol, group, axes="zyx", fmt=FormatV04(), scale_factors=[], scale={"z": 0.8, "y": 0.8, "x": 0.8},
                axes_units={"z": "nanometer", "y": "nanometer", "x": "nanometer"})
    tomo = read_tomogram(str(tmp_path / "plain.zarr"))
    np.testing.assert_array_equal(tomo.data.values, vol)
    assert tomo.pixel_size == pytest.approx(8.0) and tomo.tilt_angles is None
    with pytest.raises(StoreError, match=r"axes \('z', 'y', 'x'\), expected \('tilt', 'y', 'x'\)"):
        read_tilt_series(str(tmp_path / "plain.zarr"))
