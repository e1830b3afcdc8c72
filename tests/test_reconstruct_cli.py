"""`cryocloud reconstruct` end to end: OME-Zarr in, OME-Zarr pyramid and slices PNG out."""

import numpy as np
import pytest
from recon_phantom import blob_projections, blob_volume, fully_seen, random_blobs

from cryocloud.cli import main
from cryocloud.model import TiltSeries
from cryocloud.store import image_info, read_tilt_series, read_tomogram, write_tilt_series

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end

ANGLES = np.arange(-60.0, 61.0, 3.0)


@pytest.fixture()
def stored_tilt_series(tmp_path, monkeypatch):
    monkeypatch.setenv("DASK_CRYOCLOUD__CLUSTER__N_WORKERS", "1")
    shape = (32, 24, 64)
    blobs = random_blobs(shape, 15, seed=8)
    ts = TiltSeries.from_array(blob_projections(blobs, shape[1:], ANGLES), tilt_angles=ANGLES, pixel_size=3.0)
    url = str(tmp_path / "ts.zarr")
    write_tilt_series(ts, url, levels=1)
    return url, blob_volume(blobs, shape), shape


@pytest.mark.slow
def test_cli_reconstruct_writes_pyramid_and_figure(stored_tilt_series, tmp_path):
    in_url, truth, shape = stored_tilt_series
    out = str(tmp_path / "tomo.zarr")
    assert main(["reconstruct", in_url, out, "--thickness", "32", "--filter", "sirt", "--sirt-iterations", "20"]) == 0
    tomo = read_tomogram(out)
    assert tomo.shape == shape and tomo.pixel_size == pytest.approx(3.0)
    mask = np.broadcast_to(fully_seen(shape, ANGLES), shape)
    rec = tomo.data.values
    assert np.corrcoef(rec[mask], truth[mask])[0, 1] > 0.8
    info = image_info(out)
    assert len(info["levels"]) == 3
    assert info["cryocloud"]["provenance"]["stage"] == "reconstruct"
    png = tmp_path / "tomo_slices.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the output exists: refused without --overwrite, replaced with it
    assert main(["reconstruct", in_url, out, "--thickness", "32"]) == 2
    assert main(["reconstruct", in_url, out, "--thickness", "16", "--binning", "2", "--overwrite"]) == 0
    assert read_tomogram(out).shape == (16, 12, 32)


def test_cli_reconstruct_bad_filter_is_a_user_error(stored_tilt_series, tmp_path):
    in_url, _, _ = stored_tilt_series
    assert main(["reconstruct", in_url, str(tmp_path / "t.zarr"), "--filter", "ramp"]) == 2
    assert not (tmp_path / "t.zarr").exists()


def test_cli_reconstruct_records_the_defocus_that_deconv_then_uses(stored_tilt_series, tmp_path):
    in_url, _, _ = stored_tilt_series
    with_defocus = str(tmp_path / "ts_df.zarr")
    ts = read_tilt_series(in_url)
    defocus = np.linspace(29000.0, 31000.0, ts.n_tilts)
    write_tilt_series(ts.with_per_tilt(defocus_u=defocus + 500, defocus_v=defocus - 500), with_defocus, levels=1)
    out, plain = str(tmp_path / "tomo.zarr"), str(tmp_path / "plain.zarr")
    assert main(["reconstruct", with_defocus, out, "--thickness", "32", "--levels", "1"]) == 0
    assert image_info(out)["cryocloud"]["metadata"]["defocus_a"] == pytest.approx(defocus.mean())
    assert main(["denoise", "deconv", out, str(tmp_path / "deconv.zarr"), "--tile", "32", "--overlap", "8"]) == 0
    assert main(["reconstruct", in_url, plain, "--thickness", "32", "--levels", "1"]) == 0
    assert main(["denoise", "deconv", plain, str(tmp_path / "deconv2.zarr")]) == 2  # no defocus known: asks for --defocus
