"""Motion correction against movies with exactly known sub-pixel drift and Poisson noise."""

import dask
import numpy as np
import pytest
from scipy import ndimage

from cryocloud.errors import ModelError
from cryocloud.model import TiltSeries
from cryocloud.preprocess.motion import align_frames, correct_tilt, local_motion_field, motion_correct

PX = 2.0


def specimen(rng, shape=(192, 192), contrast=0.3):
    """A positive image with mean 1 and relative contrast `contrast` (blobs of ~6 px)."""
    img = ndimage.gaussian_filter(rng.standard_normal(shape), 3.0)
    return 1.0 + contrast * img / img.std()


def shift_image(img, sx, sy):
    """Content moved by (+sx, +sy) pixels (Fourier shift, exact for band-limited images)."""
    ny, nx = img.shape
    fy, fx = np.fft.fftfreq(ny)[:, None], np.fft.rfftfreq(nx)[None]
    return np.fft.irfft2(np.fft.rfft2(img) * np.exp(-2j * np.pi * (fx * sx + fy * sy)), s=img.shape)


def movie(rng, n=12, dose_per_frame=0.5, step=1.2, contrast=0.3, shape=(192, 192)):
    """Frames (n, y, x) of electron counts at `dose_per_frame` e/A^2 and the true drift (n, (x, y)) px."""
    img = specimen(rng, shape, contrast)
    true = np.cumsum(rng.normal(0.0, step, (n, 2)), axis=0)
    true -= true.mean(axis=0)
    counts = dose_per_frame * PX * PX
    frames = np.stack([rng.poisson(np.clip(shift_image(img, *s), 0, None) * counts) for s in true]).astype(np.float32)
    return frames, true, img


def frames_after_global(frames):
    shifts = align_frames(frames, PX)
    return np.stack([shift_image(f, -sx, -sy) for f, (sx, sy) in zip(frames, shifts)]).astype(np.float32)


def rms(a, b):
    d = (a - a.mean(0)) - (b - b.mean(0))
    return float(np.sqrt(np.mean(np.sum(d * d, axis=1))))


def test_align_frames_recovers_subpixel_drift_at_low_dose():
    rng = np.random.default_rng(0)
    frames, true, _ = movie(rng, dose_per_frame=0.5)
    est = align_frames(frames, PX, bfactor_a2=300)
    assert rms(est, true) < 0.25
    # without alignment the error is the drift itself
    assert rms(np.zeros_like(true), true) > 2.0


def test_shift_sign_convention():
    rng = np.random.default_rng(1)
    img = specimen(rng, (128, 128), contrast=1.0)
    frames = np.stack([shift_image(img, 0.0, 0.0), shift_image(img, 3.0, -2.0)]).astype(np.float32)
    est = align_frames(frames, PX)
    np.testing.assert_allclose(est[1] - est[0], [3.0, -2.0], atol=0.05)


def test_sums_sharper_than_uncorrected_and_even_odd_partition():
    rng = np.random.default_rng(2)
    frames, true, img = movie(rng, n=10, dose_per_frame=2.0, step=3.0)
    out = correct_tilt(frames, PX)
    total, even, odd, shifts = out.total, out.even, out.odd, out.shifts_px
    np.testing.assert_allclose(total, even + odd, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(total.sum(), frames.sum(), rtol=1e-4)
    # the corrected sum matches the specimen (up to a global shift = mean drift 0) far better than the plain sum
    cc = lambda a: np.corrcoef(a.ravel(), img.ravel())[0, 1]
    assert cc(total) > 0.93 and cc(frames.sum(0)) < 0.85
    assert rms(shifts, true) < 0.1
    assert cc(even) > 0.8 and cc(odd) > 0.8


@pytest.mark.slow
def test_local_motion_patches_recover_a_deformation_field():
    rng = np.random.default_rng(3)
    n, shape = 8, (256, 256)
    img = specimen(rng, shape, contrast=0.5)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    scales = 0.02 * (np.arange(n) - (n - 1) / 2) / n * 2  # up to ~2.2 px displacement at the edges
    frames = []
    for f in range(n):
        # zero-mean global drift plus a magnification-like field s(r) = scale_f (r - centre)
        gx, gy = 0.8 * (f - (n - 1) / 2), -0.5 * (f - (n - 1) / 2)
        src_x = xx - gx - scales[f] * (xx - 128)
        src_y = yy - gy - scales[f] * (yy - 128)
        warped = ndimage.map_coordinates(img, [src_y, src_x], order=3, mode="wrap")
        frames.append(rng.poisson(np.clip(warped, 0, None) * 8.0))
    frames = np.asarray(frames, dtype=np.float32)
    field = local_motion_field(frames_after_global(frames), PX, (3, 3))
    # d s_x / d x and d s_y / d y follow the true per-frame scale
    np.testing.assert_allclose(field[:, 1, 0], scales, atol=0.003)
    np.testing.assert_allclose(field[:, 2, 1], scales, atol=0.003)
    glob = correct_tilt(frames, PX).total
    local = correct_tilt(frames, PX, patches=(3, 3)).total
    cc = lambda a: np.corrcoef(a[32:-32, 32:-32].ravel(), img[32:-32, 32:-32].ravel())[0, 1]
    # local correction removes a good part of the misfit that global alignment leaves
    assert 1 - cc(local) < 0.85 * (1 - cc(glob)), (cc(local), cc(glob))


def test_motion_correct_is_lazy_one_task_per_tilt_with_metadata():
    rng = np.random.default_rng(4)
    movies, truths = zip(*[movie(rng, n=6, dose_per_frame=1.0, shape=(96, 96))[:2] for _ in range(3)])
    ts = TiltSeries.from_array(np.stack(movies), tilt_angles=[-3, 0, 3], pixel_size=PX, exposure=3.0, acquisition_order=[1, 0, 2])
    result = motion_correct(ts, bfactor_a2=300)
    assert result.sum.data.dims == ("tilt", "y", "x") and result.sum.data.chunks is not None
    assert result.sum.data.data.numblocks == (3, 1, 1)
    np.testing.assert_array_equal(result.sum.per_tilt("acquisition_order"), [1, 0, 2])
    np.testing.assert_allclose(result.even.per_tilt("exposure"), 1.5)
    total, shifts = dask.compute(result.sum.data.data, result.shifts.data)
    assert shifts.shape == (3, 6, 2) and list(result.shifts.coords["axis"].values) == ["x", "y"]
    for t in range(3):
        assert rms(shifts[t] / PX, truths[t]) < 0.3
    np.testing.assert_allclose(total.sum(axis=(1, 2)), np.stack(movies).sum(axis=(1, 2, 3)), rtol=1e-4)


def test_motion_correct_refuses_summed_images():
    ts = TiltSeries.from_array(np.zeros((2, 32, 32)), tilt_angles=[0, 3], pixel_size=PX)
    with pytest.raises(ModelError, match="frames"):
        motion_correct(ts)
