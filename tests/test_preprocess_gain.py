"""Frames from real detectors: gain reference, defects and hot pixels, per-frame dose weighting, compressed TIFF.

The movies come from an independent forward model written here with numpy/scipy (not cryocloud.simulate):
a smooth specimen drifting over the frames (scipy.ndimage.shift, cubic), Poisson counts at 0.5 e/A^2 per
frame at 1.5 A/pixel, recorded by a detector whose sensitivity has a column pattern (6 % rms) and a
smooth gradient (the gain reference is its inverse) and a few hot pixels.
"""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage

from cryocloud.cli import main
from cryocloud.errors import ModelError
from cryocloud.optics import exposure_averaged_dose_weight
from cryocloud.preprocess.detector import (
    DetectorCorrection,
    correct_frames,
    fill_bad_pixels,
    hot_pixels,
    orient_gain,
)
from cryocloud.preprocess.motion import FrameDose, correct_tilt
from cryocloud.preprocess.movies import read_movie
from cryocloud.store import read_tilt_series

PX = 1.5
DOSE_PER_FRAME = 0.5  # e/A^2


def detector_movie(seed: int, *, n: int = 16, shape=(256, 256), contrast: float = 0.1, n_hot: int = 20, step_px: float = 0.8,
                   detector_seed: int | None = None):
    """Raw frames (n, y, x) of a drifting specimen, the true drift (n, (x, y)) px, the gain (y, x),
    the column pattern (x,) of the sensitivity and the flat indices of the hot pixels. The detector
    (pattern, hot pixels) comes from `detector_seed` (default `seed`), the specimen and counts from `seed`."""
    rng = np.random.default_rng(seed)
    detector = np.random.default_rng(seed if detector_seed is None else detector_seed)
    pad = 32
    texture = ndimage.gaussian_filter(rng.standard_normal((shape[0] + 2 * pad, shape[1] + 2 * pad)), 2.5)
    specimen = 1.0 + contrast * texture / texture.std()
    drift = np.cumsum(rng.normal(0.0, step_px, (n, 2)), axis=0)
    drift -= drift.mean(axis=0)
    columns = detector.standard_normal(shape[1])
    columns *= 0.06 / columns.std()
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / shape[0]
    sensitivity = (1.0 + columns[None, :]) * (1.0 + 0.08 * (xx - 0.5) + 0.06 * (yy - 0.5))
    hot = detector.choice(shape[0] * shape[1], n_hot, replace=False)
    counts = DOSE_PER_FRAME * PX * PX
    frames = []
    for sx, sy in drift:
        image = ndimage.shift(specimen, (sy, sx), order=3, mode="nearest")[pad:-pad, pad:-pad]
        frame = rng.poisson(np.clip(image, 0, None) * counts * sensitivity).astype(np.float32)
        frame.ravel()[hot] += rng.poisson(20 * counts, n_hot)
        frames.append(frame)
    return np.stack(frames), drift, (1.0 / sensitivity).astype(np.float32), columns, hot


def drift_rms_error(measured_px: np.ndarray, true_px: np.ndarray) -> float:
    err = (measured_px - measured_px.mean(0)) - (true_px - true_px.mean(0))
    return float(np.sqrt(np.mean(np.sum(err**2, axis=1))))


def column_pattern_correlation(image: np.ndarray, columns: np.ndarray, max_lag: int) -> float:
    """Largest |correlation| between the pixel-scale column profile of `image` and the detector's column
    pattern over lags within the drift (the pattern may sit shifted in an aligned sum)."""
    detail = lambda p: p[1:-1] - 0.5 * (p[:-2] + p[2:])
    profile, pattern = detail(image.mean(axis=0)), detail(columns)
    keep = slice(max_lag, -max_lag)
    return max(abs(np.corrcoef(np.roll(profile, lag)[keep], pattern[keep])[0, 1]) for lag in range(-max_lag, max_lag + 1))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gain_and_hot_pixels_recover_drift_and_remove_the_pattern(seed):
    frames, drift, gain, columns, _ = detector_movie(seed)
    lag = int(np.ceil(np.abs(drift).max())) + 1
    plain = correct_tilt(frames, PX)
    gain_only = correct_tilt(frames, PX, detector=DetectorCorrection(gain=gain))
    corrected = correct_tilt(frames, PX, detector=DetectorCorrection(gain=gain, hot_pixel_sigma=10.0))
    # uncorrected: the fixed pattern holds every frame still and stays in the sum
    assert drift_rms_error(plain.shifts_px, drift) > 1.5
    assert column_pattern_correlation(plain.total, columns, lag) > 0.8
    assert plain.fixed_pattern.flagged and plain.fixed_pattern.locked
    # the gain alone removes the column pattern, but the hot pixels still hold the frames: flagged as well
    assert column_pattern_correlation(gain_only.total, columns, lag) < 0.3
    assert gain_only.fixed_pattern.flagged
    # gain and hot pixels: the drift is found and the sum is free of the pattern; no warning
    assert drift_rms_error(corrected.shifts_px, drift) < 0.5
    assert column_pattern_correlation(corrected.total, columns, lag) < 0.3
    assert not corrected.fixed_pattern.flagged and not corrected.fixed_pattern.locked


def test_hot_pixels_are_found_and_filled_from_good_neighbours():
    frames, _, gain, _, hot = detector_movie(3, n=8, shape=(128, 128), n_hot=10)
    normalised = frames * gain
    found = hot_pixels(normalised, 10.0)
    assert set(np.flatnonzero(found)) == set(hot.tolist())
    filled = correct_frames(frames, DetectorCorrection(gain=gain, hot_pixel_sigma=10.0))
    sums = filled.sum(axis=0)
    # the filled pixels look like their neighbourhood: within 5 Poisson sigmas of the image's median sum
    median = np.median(sums)
    assert np.all(np.abs(sums.ravel()[hot] - median) < 5 * np.sqrt(median))


def test_defect_map_fill_is_the_mean_of_good_neighbours_and_grows_into_clusters():
    frames = np.arange(2 * 7 * 7, dtype=np.float32).reshape(2, 7, 7)
    bad = np.zeros((7, 7), dtype=bool)
    bad[3, 3] = True
    out = fill_bad_pixels(frames, bad)
    ring = [frames[:, 3 + dy, 3 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    np.testing.assert_allclose(out[:, 3, 3], np.mean(ring, axis=0), rtol=1e-5)
    np.testing.assert_array_equal(np.delete(out.reshape(2, -1), 24, axis=1), np.delete(frames.reshape(2, -1), 24, axis=1))
    # a 3-pixel-wide bad column band is filled from its edges inwards: its edge columns copy their good
    # neighbours (2 and 6), the middle one then takes the mean of those (4)
    ramp = np.broadcast_to(np.arange(9, dtype=np.float32), (1, 9, 9)).copy()
    band = np.zeros((9, 9), dtype=bool)
    band[:, 3:6] = True
    filled = fill_bad_pixels(ramp, band)
    np.testing.assert_allclose(filled[0, :, 3:6], np.broadcast_to([2.0, 4.0, 6.0], (9, 3)), rtol=1e-6)


def test_orient_gain_follows_motioncor2_rotation_then_flip():
    gain = np.zeros((5, 7), dtype=np.float32)
    gain[2, 5] = 1.0  # x = +2 from the centre column 3, y = 0 from the centre row 2
    turned = orient_gain(gain, 90)
    assert turned.shape == (7, 5)
    # counter-clockwise in (x, y) = (column, row): (+2, 0) -> (0, +2), i.e. row 3 + 2, column 2
    assert np.argwhere(turned == 1).tolist() == [[5, 2]]
    assert np.argwhere(orient_gain(gain, 270) == 1).tolist() == [[1, 2]]
    assert np.argwhere(orient_gain(gain, 180) == 1).tolist() == [[2, 1]]
    # rotation first, then the flip: y = upside down (rows reversed), x = left-right (columns reversed)
    assert np.argwhere(orient_gain(gain, 90, "y") == 1).tolist() == [[1, 2]]
    assert np.argwhere(orient_gain(gain, 0, "x") == 1).tolist() == [[2, 1]]
    with pytest.raises(ModelError, match="gain_rotate"):
        orient_gain(gain, 45)


def test_gain_checks_name_the_file_and_the_field():
    gain = np.ones((8, 8), dtype=np.float32)
    with pytest.raises(ModelError, match=r"g\.mrc: field 'gain': has shape \(8, 8\).*\(8, 10\)"):
        DetectorCorrection(gain=gain, gain_source="g.mrc").check((8, 10))
    dead = gain.copy()
    dead[2, 3] = 0.0
    with pytest.raises(ModelError, match=r"g\.mrc: field 'gain': 1 pixels are zero.*x=3, y=2"):
        DetectorCorrection(gain=dead, gain_source="g.mrc").check((8, 8))
    bad = np.zeros((8, 8), dtype=bool)
    bad[2, 3] = True
    with pytest.raises(ModelError, match=r"d\.tif: field 'defects': has shape \(8, 8\)"):
        DetectorCorrection(defects=bad, defects_source="d.tif").check((8, 9))
    DetectorCorrection(gain=dead, defects=bad).check((8, 8))  # a dead pixel marked as a defect is fine
    frames = np.ones((2, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(correct_frames(frames, DetectorCorrection(gain=dead, defects=bad)), 1.0)


def test_frame_dose_weighting_matches_the_exposure_filter_and_keeps_the_scale():
    rng = np.random.default_rng(5)
    image = 1.0 + 0.5 * ndimage.gaussian_filter(rng.standard_normal((64, 64)), 1.0).astype(np.float32)
    n = 6
    dose = FrameDose(per_frame=2.0, pre_exposure=10.0, voltage_kv=200.0)
    # identical frames: weights normalised to add up to n at every frequency give back the plain sum
    same = np.repeat(image[None], n, axis=0)
    out = correct_tilt(same, PX, dose=dose)
    np.testing.assert_allclose(out.total, n * image, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.even, (n // 2) * image, rtol=1e-4, atol=1e-4)
    # frames a_f x image: the sum's spectrum is n sum_f a_f w_f(k) / sum_f w_f(k) times the image's
    scale = np.linspace(0.5, 1.5, n)
    out = correct_tilt(scale[:, None, None] * image, PX, dose=dose)
    assert np.abs(out.shifts_px).max() < 1e-3
    ky, kx = np.fft.fftfreq(64, PX)[:, None], np.fft.rfftfreq(64, PX)[None]
    k = np.sqrt(ky**2 + kx**2)
    w = np.stack([exposure_averaged_dose_weight(k, 10.0 + 2.0 * f, 2.0, voltage_kv=200.0) for f in range(n)])
    expected = np.fft.irfft2(np.fft.rfft2(image) * n * (scale[:, None, None] * w).sum(0) / w.sum(0), s=(64, 64))
    np.testing.assert_allclose(out.total, expected, rtol=1e-3, atol=1e-3)
    halves = [(scale[h::2, None, None] * w[h::2]).sum(0) * len(w[h::2]) / w[h::2].sum(0) for h in (0, 1)]
    for got, weight in zip((out.even, out.odd), halves):
        np.testing.assert_allclose(got, np.fft.irfft2(np.fft.rfft2(image) * weight, s=(64, 64)), rtol=1e-3, atol=1e-3)
    # the mean keeps the plain sum's scale
    assert out.total.mean() == pytest.approx(scale.sum() * image.mean(), rel=1e-4)


@pytest.mark.parametrize("compression", ["lzw", "zlib", "adobe_deflate"])
def test_compressed_tiff_movies_read_back_exactly(tmp_path, compression):
    frames = np.random.default_rng(6).poisson(1.0, (3, 40, 56)).astype(np.uint8)
    path = tmp_path / f"movie_{compression}.tif"
    tifffile.imwrite(path, frames, compression=compression, photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression != 1  # really compressed
    np.testing.assert_array_equal(np.asarray(read_movie(str(path)).compute()), frames)


def write_detector_movies(folder: Path, *, gain_reference: str | None = None, n_tilts: int = 2):
    """LZW TIFF movies from `detector_movie`, an mdoc naming them (and its GainReference), and the gain
    stored rotated by -90 deg (so --gain-rotate 90 brings it back); returns (mdoc, gain path, true drifts)."""
    folder.mkdir(parents=True, exist_ok=True)
    sections, drifts = [], []
    for z in range(n_tilts):
        frames, drift, gain, _, _ = detector_movie(10 + z, n=10, shape=(128, 160), contrast=0.2, detector_seed=10)
        drifts.append(drift)
        tifffile.imwrite(folder / f"ts_{z:02d}.tif", frames.astype(np.uint16), compression="lzw")
        sections.append(f"[ZValue = {z}]\nTiltAngle = {3.0 * z}\nExposureDose = {10 * DOSE_PER_FRAME}\nPixelSpacing = {PX}\n"
                        f"SubFramePath = X:\\frames\\ts_{z:02d}.tif\n"
                        + (f"GainReference = X:\\refs\\{gain_reference}\n" if gain_reference else ""))
    gain_path = folder / (gain_reference or "gain.mrc")
    with mrcfile.new(gain_path, overwrite=True) as m:
        m.set_data(np.ascontiguousarray(np.rot90(gain, k=1)))  # 90 deg clockwise in (x, y): undone by --gain-rotate 90
    mdoc = folder / "ts.mdoc"
    mdoc.write_text(f"PixelSpacing = {PX}\nVoltage = 300\n\n" + "\n".join(sections))
    return mdoc, gain_path, drifts


@pytest.mark.slow
def test_cli_motion_with_gain_from_the_mdoc_and_the_fixed_pattern_warning(tmp_path, capsys):
    mdoc, _, drifts = write_detector_movies(tmp_path / "movies", gain_reference="CountRef.mrc")
    movies = str(tmp_path / "movies")
    out = tmp_path / "ts.zarr"
    assert main(["motion", movies, str(out), "--mdoc", str(mdoc), "--gain-rotate", "90", "--detect-hot-pixels",
                 "--dose-weight-frames"]) == 0
    err = capsys.readouterr().err.replace("\n", "")  # rich wraps long lines
    assert "CountRef.mrc" in err and "warning" not in err
    assert read_tilt_series(str(out)).data.shape == (2, 128, 160)
    shifts = pd.read_csv(tmp_path / "ts_shifts.csv")
    for t, drift in enumerate(drifts):
        measured = shifts[shifts["tilt"] == t][["shift_x_a", "shift_y_a"]].to_numpy() / PX
        assert drift_rms_error(measured, drift) < 0.5
    # without rotating the gain it does not fit the frames: one line naming the file and the field
    assert main(["motion", movies, str(tmp_path / "bad.zarr"), "--mdoc", str(mdoc)]) == 2
    err = capsys.readouterr().err.replace("\n", "")  # rich wraps long lines
    assert "CountRef.mrc" in err and "field 'gain'" in err and "Traceback" not in err
    # with a flat gain the pattern stays: each tilt is named in a warning
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.ones((128, 160), dtype=np.float32))
    assert main(["assemble", movies, str(tmp_path / "plain.zarr"), "--mdoc", str(mdoc), "--gain", str(flat)]) == 0
    assert main(["motion", movies, str(tmp_path / "flat.zarr"), "--mdoc", str(mdoc), "--gain", str(flat)]) == 0
    err = capsys.readouterr().err.replace("\n", "")  # rich wraps long lines
    assert err.count("uncorrected fixed detector pattern") == len(drifts) and "locked" in err


def test_a_bright_region_is_not_taken_for_hot_pixels():
    rng = np.random.default_rng(7)
    mean = np.full((96, 96), 1.0)
    mean[:, 48:] = 3.0  # an empty hole beside the ice: three times the counts
    frames = rng.poisson(mean * 40.0, (10, 96, 96)).astype(np.float32)  # high counts: the Poisson sigma is small
    frames[:, 20, 70] += 200.0
    assert np.argwhere(hot_pixels(frames, 10.0)).tolist() == [[20, 70]]


def test_pipeline_motion_settings_correct_a_movie(tmp_path):
    from cryocloud.pipeline.config import MotionParams
    from cryocloud.pipeline.movies import checked_params, correct_movie, warn_fixed_pattern
    from cryocloud.store import parse_mdoc

    mdoc, gain_path, drifts = write_detector_movies(tmp_path, n_tilts=1)
    parsed = parse_mdoc(mdoc.read_text(), source=str(mdoc))
    params = MotionParams(gain=str(gain_path), gain_rotate=90, detect_hot_pixels=True)
    movie = correct_movie(str(tmp_path / "ts_00.tif"), PX, checked_params(params, parsed, str(tmp_path)))
    assert drift_rms_error(movie.shifts_a / PX, drifts[0]) < 0.5 and not movie.fixed_pattern.flagged
    # the motion stage and `watch` log the same warning as the CLI for a movie left uncorrected
    plain = correct_movie(str(tmp_path / "ts_00.tif"), PX, MotionParams())
    assert warn_fixed_pattern([movie, plain], ["ok.tif", "plain.tif"]) == [plain.fixed_pattern.message("plain.tif")]
    assert "locked" in plain.fixed_pattern.message("plain.tif")
    with pytest.raises(ModelError, match=r"gain\.mrc: field 'gain': has shape \(160, 128\)"):
        checked_params(params.model_copy(update={"gain_rotate": 0}), parsed, str(tmp_path))
    with pytest.raises(Exception, match="gain_rotate"):
        MotionParams(gain_rotate=45)


def test_assemble_sums_are_gain_corrected():
    import dask.array as da

    from cryocloud.preprocess.detector import detector_corrected_sums

    frames, drift, gain, columns, _ = detector_movie(8)
    lag = int(np.ceil(np.abs(drift).max())) + 1
    stack = da.from_array(np.stack([frames, frames]))
    plain = detector_corrected_sums(stack, None).compute()
    corrected = detector_corrected_sums(stack, DetectorCorrection(gain=gain, hot_pixel_sigma=10.0)).compute()
    assert column_pattern_correlation(plain[1], columns, lag) > 0.8
    assert column_pattern_correlation(corrected[1], columns, lag) < 0.3
    np.testing.assert_allclose(corrected[0], correct_frames(frames, DetectorCorrection(gain=gain, hot_pixel_sigma=10.0)).sum(0), rtol=1e-5)
