"""MRC, .tlt/.rawtlt, .xf, SerialEM .mdoc and particle CSV I/O, on synthetic and real files."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from cryocloud.errors import OutputExistsError, StoreError
from cryocloud.geometry import random_rotations, xf_from_alignment
from cryocloud.model import Particles
from cryocloud.store import (
    alignments_from_xf, is_mrc, read_mdoc, read_mrc, read_particles_csv, read_tilt_series_mrc, read_tlt, read_tomogram,
    read_volume, read_xf, write_mrc, write_particles_csv, write_tlt, write_tomogram, write_xf, xf_from_alignments,
)

from conftest import REAL_DATA

EMD = REAL_DATA / "mrcfile_emd3197" / "EMD-3197.map"


def test_real_map_round_trips_mrc_to_ngff_to_mrc(tmp_path):
    vol = read_mrc(EMD)
    with mrcfile.open(EMD, permissive=True) as ref:
        expected = np.array(ref.data)
        assert vol.pixel_size == pytest.approx(float(ref.voxel_size.x))
    np.testing.assert_array_equal(vol.data.values, expected)
    write_tomogram(vol, str(tmp_path / "map.zarr"), levels=2)
    back = read_tomogram(str(tmp_path / "map.zarr"))
    write_mrc(back, tmp_path / "map.mrc")
    with mrcfile.open(tmp_path / "map.mrc") as out:
        np.testing.assert_array_equal(out.data, expected)
        assert float(out.voxel_size.x) == pytest.approx(11.4, rel=1e-6)
    assert not (tmp_path / "map.mrc.partial").exists()


@pytest.mark.slow
def test_mrc_reads_lazily_in_section_slabs_and_handles_s3(tmp_path, s3_bucket, monkeypatch):
    import cryocloud.store.mrc as mrc_module

    stack = np.random.default_rng(0).normal(size=(12, 16, 20)).astype(np.float32)
    write_mrc(stack, tmp_path / "s.mrc", pixel_size=4.0)
    monkeypatch.setattr(mrc_module, "SLAB_BYTES", 16 * 20 * 4 * 5)
    vol = read_mrc(tmp_path / "s.mrc")
    assert vol.data.data.chunks[0] == (5, 5, 2) and vol.pixel_size == 4.0
    np.testing.assert_array_equal(vol.data[7:9].values, stack[7:9])
    url = f"{s3_bucket.url}/maps/s.mrc"
    write_mrc(vol, url, storage_options=s3_bucket.storage_options)
    remote = read_mrc(url, storage_options=s3_bucket.storage_options)
    np.testing.assert_array_equal(remote.data.values, stack)
    assert remote.pixel_size == 4.0


@pytest.mark.slow
def test_read_volume_dispatches_on_the_suffix(tmp_path, s3_bucket):
    assert all(is_mrc(u) for u in ("a.mrc", "s3://b/k/A.MAP", tmp_path / "t.rec", "x.st", "y.mrcs", "z.ali", "w.preali"))
    assert not any(is_mrc(u) for u in ("t.zarr", "s3://b/t.zarr/", "mrc", "t.mrc.zarr", "portal://10445/TS_1"))
    vol = np.random.default_rng(1).normal(size=(6, 8, 10)).astype(np.float32)
    write_mrc(vol, tmp_path / "v.rec", pixel_size=5.0)
    url = f"{s3_bucket.url}/v.zarr"
    write_tomogram(read_mrc(tmp_path / "v.rec"), url, levels=2, storage_options=s3_bucket.storage_options)
    from_mrc, from_zarr = read_volume(tmp_path / "v.rec"), read_volume(url, storage_options=s3_bucket.storage_options)
    np.testing.assert_array_equal(from_mrc.data.values, vol)
    np.testing.assert_array_equal(from_zarr.data.values, vol)
    assert from_mrc.pixel_size == from_zarr.pixel_size == 5.0
    assert read_volume(url, level=1, storage_options=s3_bucket.storage_options).pixel_size == 10.0
    with pytest.raises(StoreError, match="one level") as err:
        read_volume(tmp_path / "v.rec", level=1)
    assert err.value.field == "level" and "v.rec" in str(err.value)


@pytest.mark.slow
def test_write_mrc_on_a_process_cluster_writes_every_block(tmp_path, s3_bucket):
    """Process workers write their blocks into the file itself (not into pickled copies of a memory map)."""
    import dask.array as da
    from distributed import Client, LocalCluster

    volume = da.random.RandomState(5).normal(size=(20, 18, 14), chunks=(6, 7, 14)).astype(np.float32) + 2.0
    expected = volume.compute()
    url = f"{s3_bucket.url}/v.mrc"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, Client(cluster) as client:
        write_mrc(volume, tmp_path / "v.mrc", pixel_size=3.5)
        write_mrc(volume, url, pixel_size=3.5, storage_options=s3_bucket.storage_options)
        assert len(client.scheduler_info()["workers"]) == 2
    with mrcfile.open(tmp_path / "v.mrc") as mrc:
        np.testing.assert_array_equal(mrc.data, expected)
        assert float(mrc.voxel_size.x) == pytest.approx(3.5)
        assert float(mrc.header.dmax) == pytest.approx(float(expected.max())) and float(mrc.header.dmin) == pytest.approx(float(expected.min()))
    np.testing.assert_array_equal(read_mrc(url, storage_options=s3_bucket.storage_options).data.values, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mrc"]


def test_mrc_bad_inputs_and_write_protection(tmp_path):
    with mrcfile.new(tmp_path / "nopx.mrc") as m:
        m.set_data(np.zeros((4, 4, 4), np.float32))
        m.voxel_size = 0
    with pytest.raises(StoreError, match="voxel size") as err:
        read_mrc(tmp_path / "nopx.mrc")
    assert err.value.field == "voxel_size" and "nopx.mrc" in str(err.value)
    assert read_mrc(tmp_path / "nopx.mrc", pixel_size=3.0).pixel_size == 3.0
    data = (tmp_path / "nopx.mrc").read_bytes()
    (tmp_path / "cut.mrc").write_bytes(data[: 1024 + 100])
    with pytest.raises(StoreError, match="cut.mrc.*not a readable MRC"):
        read_mrc(tmp_path / "cut.mrc")
    with pytest.raises(StoreError, match="does not exist"):
        read_mrc(tmp_path / "missing.mrc")
    with pytest.raises(OutputExistsError, match="exists already"):
        write_mrc(np.ones((2, 2, 2), np.float32), tmp_path / "nopx.mrc", pixel_size=1.0)
    vol = read_mrc(tmp_path / "nopx.mrc", pixel_size=3.0)
    with pytest.raises(OutputExistsError, match="input"):
        write_mrc(vol.with_data(vol.data.data + 1), tmp_path / "nopx.mrc", overwrite=True)
    write_mrc(np.ones((2, 2, 2), np.float64), tmp_path / "nopx.mrc", pixel_size=1.5, overwrite=True)
    back = read_mrc(tmp_path / "nopx.mrc")
    assert back.data.dtype == np.float32 and back.data.shape == (2, 2, 2) and back.pixel_size == 1.5
    with pytest.raises(StoreError, match="pixel size"):
        write_mrc(np.ones((2, 2, 2), np.float32), tmp_path / "x.mrc")


def test_tilt_stack_with_tlt_file(tmp_path):
    angles = np.array([-60.0, -30.5, 0.0, 30.25, 60.0])
    write_mrc(np.zeros((5, 8, 8), np.float32), tmp_path / "ts.mrc", pixel_size=2.0)
    write_tlt(tmp_path / "ts.rawtlt", angles)
    np.testing.assert_array_equal(read_tlt(tmp_path / "ts.rawtlt"), angles)
    ts = read_tilt_series_mrc(tmp_path / "ts.mrc", tilt_angles=tmp_path / "ts.rawtlt", exposure=3.0, tilt_axis_angle=84.0)
    np.testing.assert_array_equal(ts.tilt_angles, angles)
    np.testing.assert_array_equal(ts.per_tilt("pre_exposure"), [0, 3, 6, 9, 12])
    assert ts.pixel_size == 2.0 and ts.tilt_axis_angle == 84.0
    write_tlt(tmp_path / "short.tlt", angles[:4])
    with pytest.raises(StoreError, match="4 angles but 5 images"):
        read_tilt_series_mrc(tmp_path / "ts.mrc", tilt_angles=tmp_path / "short.tlt")
    (tmp_path / "bad.tlt").write_text("1.0\nabc\n")
    with pytest.raises(StoreError, match="line 2") as err:
        read_tlt(tmp_path / "bad.tlt")
    assert err.value.field == "tilt_angle"
    with pytest.raises(OutputExistsError):
        write_tlt(tmp_path / "ts.rawtlt", angles)


def test_xf_round_trip_recovers_axis_angles_and_shifts(tmp_path):
    axis = np.array([84.0, 85.5, 86.0])
    shifts = np.array([[1.5, -2.0], [0.0, 3.25], [-4.0, 0.5]])
    rows = xf_from_alignments(axis, shifts)
    np.testing.assert_allclose(rows[1], xf_from_alignment(85.5, shifts[1]))
    write_xf(tmp_path / "a.xf", rows)
    back = read_xf(tmp_path / "a.xf")
    np.testing.assert_allclose(back[:, :4], rows[:, :4], atol=1e-7)
    np.testing.assert_allclose(back[:, 4:], rows[:, 4:], atol=5e-4)  # IMOD writes shifts with 3 decimals
    got_axis, got_shift = alignments_from_xf(back)
    np.testing.assert_allclose(got_axis, axis, atol=1e-4)
    np.testing.assert_allclose(got_shift, shifts, atol=2e-3)
    (tmp_path / "b.xf").write_text("1 0 0 1 0\n")
    with pytest.raises(StoreError, match="6 finite"):
        read_xf(tmp_path / "b.xf")


def test_mdoc_ts01_real_file():
    m = read_mdoc(REAL_DATA / "tiltstack_ts01_mdoc" / "TS_01.mrc.mdoc")
    assert m.n_tilts == 41 and m.tilt_axis_angle == 85.3 and m.pixel_size == 5.4
    angles = m.tilt_angle
    assert angles[0] == pytest.approx(0.001, abs=1e-3) and angles[1] == pytest.approx(3.0, abs=0.01)
    np.testing.assert_allclose(np.sort(angles), np.linspace(-60, 60, 41), atol=0.02)
    np.testing.assert_array_equal(m.acquisition_order, np.arange(41))  # sections were written as acquired
    assert m.sub_frame_path[0].endswith("TS_01_000_0.0.mrc") and m.defocus_um[0] == pytest.approx(2.68083)
    assert m.date_time[0].isoformat() == "2015-11-30T15:21:38"
    stack = np.zeros((41, 4, 4), np.float32)
    with pytest.raises(StoreError, match="ExposureDose"):
        m.to_tilt_series(stack)  # this mdoc records no dose
    ts = m.to_tilt_series(stack, exposure=2.0)
    assert ts.tilt_axis_angle == 85.3 and ts.pixel_size == 5.4
    np.testing.assert_allclose(ts.per_tilt("pre_exposure"), 2.0 * np.arange(41))
    with pytest.raises(StoreError, match="41 images"):
        m.to_tilt_series(np.zeros((40, 4, 4), np.float32), exposure=2.0)


def test_mdoc_017_real_file_matches_tlt_and_dose_list():
    folder = REAL_DATA / "cryocat_ts017"
    m = read_mdoc(folder / "017.mdoc")
    assert m.n_tilts == 60 and m.tilt_axis_angle == 82.9 and m.pixel_size == 1.971 and m.voltage_kv == 300
    np.testing.assert_allclose(m.tilt_angle, read_tlt(folder / "017.tlt"), atol=0.006)
    cumulative = np.loadtxt(folder / "017_corrected_dose.txt")
    # sections are sorted by angle; the acquisition order (from DateTime) follows the accumulated dose
    np.testing.assert_array_equal(np.argsort(m.acquisition_order), np.argsort(cumulative))
    ts = m.to_tilt_series(np.zeros((60, 4, 4), np.float32))
    np.testing.assert_allclose(ts.per_tilt("pre_exposure") + ts.per_tilt("exposure"), cumulative, atol=0.01)
    assert ts.microscope.voltage_kv == 300
    first = int(np.flatnonzero(m.acquisition_order == 0)[0])
    assert abs(m.tilt_angle[first] - 8.0) < 0.1  # the dose-symmetric scheme started at +8 deg


def test_mdoc_without_sections_is_rejected(tmp_path):
    (tmp_path / "x.mdoc").write_text("PixelSpacing = 2\n[T = nothing]\n")
    with pytest.raises(StoreError, match="ZValue"):
        read_mdoc(tmp_path / "x.mdoc")


@pytest.mark.slow
def test_particles_csv_round_trip_and_errors(tmp_path, s3_bucket):
    rng = np.random.default_rng(5)
    p = Particles.create(rng.uniform(0, 3000, (20, 3)), random_rotations(20, rng), rng.uniform(0, 1, 20), "TS_01", "ribosome")
    url = f"{s3_bucket.url}/picks.csv"
    write_particles_csv(p, url, storage_options=s3_bucket.storage_options)
    back = read_particles_csv(url, storage_options=s3_bucket.storage_options)
    np.testing.assert_allclose(back.positions, p.positions, rtol=1e-9)
    np.testing.assert_allclose(back.rotations, p.rotations, atol=1e-9)
    np.testing.assert_allclose(back.scores, p.scores, rtol=1e-9)
    assert list(back.tomogram) == ["TS_01"] * 20 and list(back.class_name) == ["ribosome"] * 20
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(StoreError, match="bad.csv.*'x'"):
        read_particles_csv(tmp_path / "bad.csv")


def test_open_url_reads_and_writes_local_and_s3_and_names_missing_files(tmp_path, s3_bucket):
    from cryocloud.store import open_url

    for url, opts in ((str(tmp_path / "sub" / "note.txt"), None), (f"{s3_bucket.url}/notes/note.txt", s3_bucket.storage_options)):
        with open_url(url, "wt", storage_options=opts) as f:
            f.write("angstrom\n")
        with open_url(url, "rb", storage_options=opts) as f:
            assert f.read() == b"angstrom\n"
    with pytest.raises(StoreError, match="missing.txt.*does not exist"):
        open_url(tmp_path / "missing.txt")
    with pytest.raises(StoreError, match="does not exist|cannot be opened"):
        open_url(f"{s3_bucket.url}/missing.txt", storage_options=s3_bucket.storage_options)
