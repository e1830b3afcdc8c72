"""Assembly (dark tilts, sorting), movie reading, figures and the preprocessing CLI commands."""

import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import tifffile

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_preprocess_ctf import ctf_image  # noqa: E402
from test_preprocess_motion import movie  # noqa: E402

from cryocloud.cli import main  # noqa: E402
from cryocloud.errors import ModelError  # noqa: E402
from cryocloud.model import TiltSeries  # noqa: E402
from cryocloud.preprocess.assemble import assemble, stack_movies  # noqa: E402
from cryocloud.preprocess.ctffind_io import parse_ctffind  # noqa: E402
from cryocloud.preprocess.figures import defocus_figure, drift_figure, png_bytes, spectrum_figure  # noqa: E402
from cryocloud.preprocess.ctf_estimate import fit_ctf  # noqa: E402
from cryocloud.preprocess.motion import motion_correct  # noqa: E402
from cryocloud.preprocess.movies import read_movie  # noqa: E402
from cryocloud.store import read_tilt_series, write_tilt_series  # noqa: E402

PX = 2.0
ANGLES = [0.0, 3.0, -3.0, 6.0]  # dose-symmetric acquisition order


def write_movies(folder: Path, *, dark: int | None = None):
    """Four MRC/TIFF movies (6 frames of 96^2) with known drift and an mdoc naming them."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    sections, truths = [], []
    for z, angle in enumerate(ANGLES):
        frames, truth, _ = movie(rng, n=6, dose_per_frame=1.0, shape=(96, 96))
        if z == dark:
            frames = frames * 0.05
        truths.append(truth)
        name = f"ts_{z:02d}.tif" if z == 1 else f"ts_{z:02d}.mrc"
        if name.endswith(".tif"):
            tifffile.imwrite(folder / name, frames.astype(np.float32))
        else:
            with mrcfile.new(folder / name) as m:
                m.set_data(frames.astype(np.float32))
                m.voxel_size = PX
        sections.append(
            f"[ZValue = {z}]\nTiltAngle = {angle}\nExposureDose = 3.0\nPixelSpacing = {PX}\n"
            f"SubFramePath = X:\\frames\\{name}\nDateTime = 01-Jan-24  10:0{z}:00\n"
        )
    mdoc = folder / "ts.mdoc"
    mdoc.write_text(f"PixelSpacing = {PX}\nVoltage = 300\n\n[T = Tilt axis angle = 85.0, binning = 1]\n\n" + "\n".join(sections))
    return mdoc, truths


def test_read_movie_mrc_and_tiff(tmp_path):
    write_movies(tmp_path)
    a = read_movie(str(tmp_path / "ts_00.mrc"))
    b = read_movie(str(tmp_path / "ts_01.tif"))
    assert a.shape == b.shape == (6, 96, 96)
    assert float(b.sum().compute()) > 0
    from cryocloud.errors import StoreError

    with pytest.raises(StoreError, match="unknown movie format"):
        read_movie(str(tmp_path / "ts.mdoc"))


def test_assemble_sorts_by_angle_and_drops_dark_and_empty_tilts(caplog):
    rng = np.random.default_rng(1)
    data = rng.poisson(10.0, (5, 2, 32, 32)).astype(np.float32)
    data[1] *= 0.1  # dark
    data[3] = 7.0  # empty (constant)
    ts = stack_movies(list(data), tilt_angles=[0, 3, -3, 6, -6], pixel_size=PX, exposure=3.0)
    with caplog.at_level("WARNING"):
        result = assemble(ts)
    assert [d.index for d in result.dropped] == [1, 3]
    assert result.dropped[0].reason.startswith("dark") and result.dropped[1].reason.startswith("empty")
    assert "dropping tilt 1" in caplog.text
    out = result.tilt_series
    np.testing.assert_array_equal(out.tilt_angles, [-6, -3, 0])
    assert result.kept == (4, 2, 0)  # input positions in the new order (for the even/odd companions)
    np.testing.assert_array_equal(out.per_tilt("acquisition_order"), [2, 1, 0])
    np.testing.assert_allclose(out.per_tilt("pre_exposure"), [12.0, 6.0, 0.0])
    with pytest.raises(ModelError, match="movie shape"):
        stack_movies([data[0], data[0, :, :16]], tilt_angles=[0, 1], pixel_size=PX, exposure=1.0)


def test_figures_render():
    rng = np.random.default_rng(2)
    frames = np.stack([movie(rng, n=4, shape=(64, 64))[0] for _ in range(2)])
    ts = TiltSeries.from_array(frames, tilt_angles=[0, 3], pixel_size=PX)
    shifts = motion_correct(ts).shifts.compute()
    img = ctf_image(rng, 20000, 19000, 30.0, noise=0.3, n=256)
    fit = fit_ctf(img, PX)
    table = pd.DataFrame({"tilt_angle": [0, 3], "defocus_u": [20000, 20500], "defocus_v": [19000, 19500]})
    for fig in (drift_figure(shifts), spectrum_figure(img, fit, PX), defocus_figure(table, truth=table)):
        assert png_bytes(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_motion_assemble_and_downstream_commands(tmp_path):
    mdoc, truths = write_movies(tmp_path / "movies", dark=3)
    out = tmp_path / "ts.zarr"
    assert main(["motion", str(tmp_path / "movies"), str(out), "--mdoc", str(mdoc), "--bfactor", "300"]) == 0
    ts = read_tilt_series(str(out))
    np.testing.assert_array_equal(ts.tilt_angles, [-3.0, 0.0, 3.0])  # 6 deg was dark
    assert ts.tilt_axis_angle == 85.0
    np.testing.assert_array_equal(ts.per_tilt("acquisition_order"), [2, 0, 1])
    shifts = pd.read_csv(tmp_path / "ts_shifts.csv")
    zero = shifts[shifts["tilt_angle"] == 0.0][["shift_x_a", "shift_y_a"]].to_numpy() / PX
    err = (zero - zero.mean(0)) - (truths[0] - truths[0].mean(0))
    assert np.sqrt(np.mean(np.sum(err**2, axis=1))) < 0.3
    for suffix in ("_even.zarr", "_odd.zarr", "_drift.png"):
        assert (tmp_path / f"ts{suffix}").exists()
    # an existing output is refused without --overwrite
    assert main(["motion", str(tmp_path / "movies"), str(out), "--mdoc", str(mdoc)]) == 2
    assert main(["assemble", str(tmp_path / "movies"), str(tmp_path / "plain.zarr"), "--mdoc", str(mdoc)]) == 0
    assert read_tilt_series(str(tmp_path / "plain.zarr")).n_tilts == 3
    assert main(["dose-weight", str(out), str(tmp_path / "dw.zarr")]) == 0
    assert read_tilt_series(str(tmp_path / "dw.zarr")).data.shape == (3, 96, 96)


def test_cli_ctf_then_correct(tmp_path):
    rng = np.random.default_rng(3)
    truth = 20000.0
    images = np.stack([ctf_image(rng, truth, truth, 0.0, noise=0.3, n=256) for _ in range(2)]).astype(np.float32)
    ts = TiltSeries.from_array(images, tilt_angles=[0.0, 3.0], pixel_size=PX, exposure=3.0)
    write_tilt_series(ts, str(tmp_path / "in.zarr"))
    assert main(["ctf", str(tmp_path / "in.zarr"), "--output", str(tmp_path / "fit.zarr"), "--box", "128"]) == 0
    table = parse_ctffind((tmp_path / "fit_ctffind4.txt").read_text())
    np.testing.assert_allclose(0.5 * (table["defocus_u"] + table["defocus_v"]), truth, atol=300)
    assert (tmp_path / "fit_ctf.png").exists() and (tmp_path / "fit_defocus.png").exists()
    fitted = read_tilt_series(str(tmp_path / "fit.zarr"))
    np.testing.assert_allclose(fitted.per_tilt("defocus_u"), table["defocus_u"], rtol=1e-6)
    assert main(["ctf-correct", str(tmp_path / "in.zarr"), str(tmp_path / "flip.zarr"), "--ctffind", str(tmp_path / "fit_ctffind4.txt")]) == 0
    assert main(["ctf-correct", str(tmp_path / "fit.zarr"), str(tmp_path / "mul.zarr"), "--mode", "multiply"]) == 0
    assert main(["ctf-correct", str(tmp_path / "in.zarr"), str(tmp_path / "bad.zarr")]) == 2  # no defocus known
    assert main(["ctf-correct", str(tmp_path / "fit.zarr"), str(tmp_path / "bad2.zarr"), "--mode", "wiener"]) == 2
