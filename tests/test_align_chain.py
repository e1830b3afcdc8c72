"""`convert` -> `align` -> `reconstruct`: a stored alignment is applied by `reconstruct` itself, slab by slab.

The real STEM tilt series (tests/data/real/etspy_haadf_stem: 77 tilts, -76..+76 deg, 256 x 256 px of
33.6 A, tilt axis 90 deg in the microscope's convention) goes through the command line and through
Python. The alignment is judged without a reference by how well the tomogram's reprojections agree with
the images it was made from: an inconsistent (unaligned or wrongly applied) series agrees worse.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REAL_DATA
from scipy import ndimage

from cryocloud.alignment import apply_alignment
from cryocloud.cli import main
from cryocloud.errors import ModelError
from cryocloud.model import TiltSeries
from cryocloud.project import project_volume
from cryocloud.reconstruct import reconstruct
from cryocloud.store import image_info, read_tilt_series, read_tomogram

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end

STEM = REAL_DATA / "etspy_haadf_stem"
ANGLES = np.arange(-60.0, 61.0, 6.0)


def _recorded(seed: int = 0, axis: float = 84.0, size: int = 96) -> TiltSeries:
    rng = np.random.default_rng(seed)
    images = ndimage.gaussian_filter(rng.normal(size=(ANGLES.size, size, size)), (0, 2, 2)).astype(np.float32)
    shifts = rng.normal(0, 20.0, (ANGLES.size, 2))  # A, pixel 2 A
    ts = TiltSeries.from_array(images, tilt_angles=ANGLES, pixel_size=2.0, tilt_axis_angle=axis)
    return ts.with_per_tilt(shift_x=shifts[:, 0], shift_y=shifts[:, 1])


def _independent_aligned(ts: TiltSeries) -> np.ndarray:
    """aligned(q) = raw(R(axis) (q - c) + s + c), written here with scipy.ndimage (cubic, nearest edge)."""
    a = np.deg2rad(ts.tilt_axis_angle)
    r_yx = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])  # R(axis) acting on (y, x)
    c = np.array(ts.data.shape[1:]) // 2
    out = []
    for img, sx, sy in zip(np.asarray(ts.data.values), ts.per_tilt("shift_x"), ts.per_tilt("shift_y")):
        s_yx = np.array([sy, sx]) / ts.pixel_size
        out.append(ndimage.affine_transform(img, r_yx, offset=c + s_yx - r_yx @ c, order=3, mode="nearest"))
    return np.stack(out)


def test_apply_alignment_per_slab_matches_an_independent_resampling():
    ts = _recorded()
    expected = _independent_aligned(ts)
    for rows in (None, 16, 7):
        aligned = apply_alignment(ts, slab_rows=rows)
        assert aligned.tilt_axis_angle == 0.0 and np.all(aligned.per_tilt("shift_x") == 0)
        got = aligned.data.data
        assert got.chunks[0] == (1,) * ANGLES.size and max(got.chunks[1]) == (rows or 96)
        np.testing.assert_allclose(got.compute(), expected, atol=1e-4 * np.abs(expected).max())


def test_reconstruct_applies_a_stored_alignment_as_apply_alignment_does():
    ts = _recorded(1)
    direct = reconstruct(ts, thickness_px=16, binning=2, slab_rows=8)
    assert direct.data.attrs["reconstruction"]["applied_alignment_axis_deg"] == 84.0
    assert direct.data.data.chunks[1] == (8,) * 6
    explicit = reconstruct(apply_alignment(ts), thickness_px=16, binning=2, slab_rows=8)
    assert explicit.data.attrs["reconstruction"]["applied_alignment_axis_deg"] is None
    np.testing.assert_allclose(direct.data.values, explicit.data.values, atol=1e-5 * np.abs(explicit.data.values).max())


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda ts: ts.data.drop_vars(["shift_x", "shift_y"]), "tilt_axis_angle"),  # a raw series: not aligned
        (lambda ts: ts.data.drop_vars("shift_y"), "shift_y"),
        (lambda ts: ts.data.assign_coords(shift_x=("tilt", np.full(ANGLES.size, 500.0))), "shift_x"),  # off the field
    ],
)
def test_a_stored_alignment_is_checked(change, field):
    ts = _recorded()
    broken = TiltSeries(change(ts), ts.microscope, ts.tilt_axis_angle)
    with pytest.raises(ModelError, match=field):
        reconstruct(broken)
    with pytest.raises(ModelError, match=field):
        apply_alignment(broken)


def _reprojection_agreement(volume: np.ndarray, aligned_binned: np.ndarray, angles: np.ndarray) -> float:
    """Mean over tilts of the correlation between each image and the tomogram's reprojection (central half)."""
    reprojection = project_volume(volume, angles)
    _, h, w = reprojection.shape
    inner = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))
    return float(np.mean([np.corrcoef(p[inner].ravel(), a[inner].ravel())[0, 1] for p, a in zip(reprojection, aligned_binned)]))


def _binned(images: np.ndarray, b: int) -> np.ndarray:
    t, h, w = images.shape
    return images.reshape(t, h // b, b, w // b, b).mean(axis=(2, 4))


@pytest.mark.slow
def test_convert_align_reconstruct_on_the_real_stem_series(tmp_path, monkeypatch, capsys):
    """The chain on the command line, `align` printing and storing its quality figures; Python's `reconstruct` of
    the same stored alignment gives the same tomogram; the aligned tomogram agrees with its images far better
    than one from the unaligned series."""
    monkeypatch.setenv("DASK_CRYOCLOUD__CLUSTER__N_WORKERS", "1")
    raw, aligned, tomo = (str(tmp_path / n) for n in ("raw.zarr", "aligned.zarr", "tomo.zarr"))
    assert main(["convert", str(STEM / "HAADF.mrc"), raw, "--tilt-angles", str(STEM / "HAADF.rawtlt"),
                 "--tilt-axis-angle", "90", "--pixel-size", "33.6", "--levels", "1"]) == 0
    assert main(["reconstruct", raw, str(tmp_path / "unaligned.zarr")]) == 2  # a raw series is refused: not aligned
    assert main(["align", raw, aligned, "--binning", "2", "--axis-method", "common-line"]) == 0
    assert main(["reconstruct", aligned, tomo, "--binning", "2", "--thickness", "64", "--levels", "1"]) == 0

    stored = read_tilt_series(aligned)
    # the common-line axis; etspy's published alignment and a common-line scan say 92.3-92.8 deg (before: 97.2)
    assert 91.5 < stored.tilt_axis_angle < 93.0 and np.abs(stored.per_tilt("shift_x")).max() > 0
    quality = image_info(aligned)["cryocloud"]["metadata"]["alignment"]
    sigma = quality["axis_uncertainty_deg"]
    assert sigma > 0 and abs(stored.tilt_axis_angle - 92.55) < 0.25 + 3 * sigma  # the stated uncertainty covers the reference
    assert len(quality["model_residuals_a"]) == stored.n_tilts
    assert quality["converged"] == (not quality["limits"])
    printed = capsys.readouterr().err
    assert f"tilt axis {stored.tilt_axis_angle:.2f} +- " in printed and "patch residual per tilt" in printed
    cli_volume = read_tomogram(tomo).data.values
    assert cli_volume.shape == (64, 128, 128)
    assert image_info(tomo)["cryocloud"]["provenance"]["parameters"]["applied_alignment_axis_deg"] == pytest.approx(stored.tilt_axis_angle)
    python_volume = reconstruct(stored, binning=2, thickness_px=64).data.values
    np.testing.assert_allclose(python_volume, cli_volume, atol=1e-4 * np.abs(cli_volume).max())

    angles = stored.tilt_angles
    images = _binned(apply_alignment(stored).data.values, 2)
    unaligned = stored.with_per_tilt(shift_x=np.zeros(stored.n_tilts), shift_y=np.zeros(stored.n_tilts))
    unaligned_images = _binned(apply_alignment(unaligned).data.values, 2)
    unaligned_volume = reconstruct(unaligned, binning=2, thickness_px=64).data.values
    agreement = _reprojection_agreement(cli_volume, images, angles)
    baseline = _reprojection_agreement(unaligned_volume, unaligned_images, angles)
    print(f"reprojection agreement: aligned {agreement:.3f}, unaligned {baseline:.3f}")
    assert agreement > baseline + 0.05


def test_reconstruct_applies_a_stored_alignment_voxel_for_voxel_as_resampling_first():
    """`reconstruct` of a series with a stored alignment (axis, shifts) equals `reconstruct` of the same series
    resampled first by `apply_alignment`, at binning 1 and 2 (the pipeline resamples first; the CLI per slab)."""
    from dataclasses import replace

    import dask

    from cryocloud.alignment import apply_alignment
    from cryocloud.model import TiltSeries
    from cryocloud.reconstruct import reconstruct

    rng = np.random.default_rng(0)
    angles = np.arange(-60, 61, 6.0)
    ts = TiltSeries.from_array(rng.normal(size=(len(angles), 96, 80)).astype(np.float32) + 5, tilt_angles=angles, pixel_size=8.0)
    ts = replace(ts, tilt_axis_angle=85.0).with_per_tilt(shift_x=rng.normal(0, 16, len(angles)), shift_y=rng.normal(0, 16, len(angles)))
    for binning in (1, 2):
        with dask.config.set(scheduler="sync"):
            per_slab = reconstruct(ts, thickness_px=32, binning=binning).data.values
            first = reconstruct(apply_alignment(ts), thickness_px=32, binning=binning).data.values
        np.testing.assert_allclose(per_slab, first, rtol=0, atol=1e-6 * np.abs(first).max())
