"""cryocloud.average: FSC, missing wedge, extraction, alignment and gold-standard refinement.

Physics test (scaled from the 500-particle check of benchmarks/average.py): ribosome particles
(the bundled 7P6Z potential) at 16 A voxels, random orientations, missing wedge of +-60 deg,
noise, poses perturbed by ~8 deg and ~1 voxel; after refinement the average's FSC against the
ground-truth map crosses 0.143 within 2.5 x the voxel size and the half-map resolution agrees.
"""

from __future__ import annotations

import io

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cryocloud.average.align import Poses, SearchSettings, Wedges, align, average
from cryocloud.average.extract import extract
from cryocloud.average.fsc import corrected_masked_fsc, fsc, resolution_at
from cryocloud.average.refine import refine, split_halves
from cryocloud.average.wedge import wedge_at, wedge_grid
from cryocloud.errors import ModelError
from cryocloud.geometry import random_rotations, rotation_angle_deg
from cryocloud.model import Tomogram
from cryocloud.pick.template import spherical_mask
from cryocloud.pick.weighting import TiltWeighting, tilt_weight
from cryocloud.atomic import potential_map
from cryocloud.store import read_atomic_model

PX = 16.0
ANGLES = np.arange(-60.0, 60.1, 3.0)
_P = np.eye(3)[::-1]  # (x, y, z) <-> (z, y, x)


def place(volume: np.ndarray, rotation: np.ndarray, shift_xyz_vox: np.ndarray) -> np.ndarray:
    """volume rotated by `rotation` about its centre (b // 2) and shifted (x, y, z voxels), cubic spline."""
    b = volume.shape[0]
    rz = _P @ rotation @ _P
    c = np.full(3, b // 2)
    return ndimage.affine_transform(volume, rz.T, offset=c - rz.T @ (c + shift_xyz_vox[::-1]), order=3)


@pytest.fixture(scope="module")
def ribosome() -> np.ndarray:
    pot = potential_map(read_atomic_model(None), PX)
    b = 24
    c, h = pot.shape[0] // 2, b // 2
    out = np.zeros((b, b, b), dtype=np.float32)
    crop = pot[max(0, c - h) : c + h, max(0, c - h) : c + h, max(0, c - h) : c + h]
    o = (b - crop.shape[0]) // 2
    out[o : o + crop.shape[0], o : o + crop.shape[1], o : o + crop.shape[2]] = crop
    return out


def test_fsc_identical_and_independent_noise():
    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.normal(size=(32, 32, 32)), 1.5)
    same = fsc(a, a, 5.0)
    assert np.allclose(same.fsc[1:], 1.0)
    assert same.resolution() == pytest.approx(10.0)  # Nyquist
    noise = fsc(rng.normal(size=(32, 32, 32)), rng.normal(size=(32, 32, 32)), 5.0)
    assert np.abs(noise.fsc[3:]).max() < 0.25
    assert noise.frequency[-1] == pytest.approx(0.1)


def test_resolution_interpolates_the_crossing():
    from cryocloud.average.fsc import FscCurve

    curve = FscCurve(np.array([0.0, 0.1, 0.2, 0.3]), np.array([1.0, 0.5, 0.043, 0.0]), np.ones(4))
    # 0.143 is crossed at 0.1 + (0.5 - 0.143) / (0.5 - 0.043) * 0.1
    assert resolution_at(curve) == pytest.approx(1 / (0.1 + 0.357 / 0.457 * 0.1))


def test_signal_plus_noise_fsc_follows_ssnr_and_mask_correction():
    rng = np.random.default_rng(1)
    signal = ndimage.gaussian_filter(rng.normal(size=(32, 32, 32)), 1.0) * spherical_mask(32, 10, 3)
    signal /= signal.std()
    h1 = signal + 0.5 * rng.normal(size=signal.shape)
    h2 = signal + 0.5 * rng.normal(size=signal.shape)
    mask = spherical_mask(32, 12, 3)
    plain = fsc(h1, h2, 4.0)
    assert plain.fsc[1:4].min() > 0.8  # low frequencies, where the signal dominates
    corrected = corrected_masked_fsc(h1, h2, 4.0, mask)
    masked = fsc(h1, h2, 4.0, mask)
    beyond = 1.0 / resolution_at(plain, 0.8)
    low = masked.frequency <= beyond
    assert np.allclose(corrected.fsc[low], masked.fsc[low])  # untouched below the randomisation frequency


def test_wedge_matches_tilt_weight_and_is_empty_in_the_missing_wedge():
    box = 16
    g = wedge_grid(box, ANGLES)
    kz = np.fft.fftfreq(box)[:, None, None]
    ky = np.fft.fftfreq(box)[None, :, None]
    kx = np.fft.rfftfreq(box)[None, None, :]
    points = np.stack(np.broadcast_arrays(kx, ky, kz), axis=-1).reshape(-1, 3)
    assert np.allclose(wedge_at(points, ANGLES, box).reshape(g.shape), g)
    assert np.allclose(g, tilt_weight((box,) * 3, 1.0, TiltWeighting(ANGLES), ctf="none"))
    along_x = np.array([[0.3, 0.0, 0.0]])  # in the central slice of the 0 deg tilt: sampled
    along_z = np.array([[0.0, 0.0, 0.3]])  # within 30 deg of the beam at 0 deg: the missing wedge
    assert wedge_at(along_x, ANGLES, box)[0] == 1.0
    assert wedge_at(along_z, ANGLES, box)[0] == 0.0
    assert 0.6 < g.mean() < 0.8  # about 120 / 180 of the directions, plus the y axis


def test_extract_cuts_the_right_voxels_lazily_with_binning():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(40, 50, 60)).astype(np.float32)
    tomo = Tomogram.from_array(da.from_array(v, chunks=16), pixel_size=5.0)
    pos = np.array([[100.0, 121.0, 90.0], [2.0, 3.0, 4.0], [290.0, 240.0, 190.0]])
    sub = extract(tomo, pos, 8, batch_size=2)
    assert isinstance(sub.data, da.Array)
    data = sub.data.compute()
    assert np.allclose(data[0], v[14:22, 20:28, 16:24])  # voxel (20, 24, 18) at index 4
    assert np.allclose(sub.offsets_a[0], [0.0, 1.0, 0.0])
    inside = v[34:40, 44:50, 54:60]  # particle 2 at voxel (38, 48, 58): box 34..41 reaches past 40, 50, 60
    assert np.allclose(data[2][:6, :6, :6], inside)
    assert np.allclose(data[2][6:], inside.mean())  # outside the tomogram: the mean of the part inside
    assert np.isfinite(data).all()
    binned = extract(tomo, pos[:1], 4, binning=2).data.compute()[0]
    assert np.allclose(binned, v[14:22, 20:28, 16:24].reshape(4, 2, 4, 2, 4, 2).mean(axis=(1, 3, 5)))
    with pytest.raises(ModelError):
        extract(tomo, pos, 2)


def _particles(ribosome, n, noise, seed):
    rng = np.random.default_rng(seed)
    rot = random_rotations(n, rng)
    shift = rng.uniform(-1.5, 1.5, (n, 3))
    w = wedge_grid(ribosome.shape[0], ANGLES)
    vols = []
    for r, s in zip(rot, shift):
        v = place(ribosome, r, s)
        v = np.fft.irfftn(np.fft.rfftn(v) * w, s=v.shape, axes=(0, 1, 2))
        vols.append(v + rng.normal(0, noise * ribosome.std(), v.shape))
    pert = Rotation.from_rotvec(rng.normal(0, 1, (n, 3)) / np.sqrt(3) * np.deg2rad(8)).as_matrix()
    return np.array(vols, dtype=np.float32), rot, shift, pert @ rot


@pytest.mark.slow
def test_align_recovers_orientations_and_subvoxel_shifts(ribosome):
    vols, rot, shift, start = _particles(ribosome, 12, 0.5, seed=2)
    init = Poses(start, np.zeros((12, 3)), np.full(12, np.nan))
    poses = align(vols, ribosome, PX, Wedges.single(ANGLES, 12), init, SearchSettings(increment_deg=8, max_angle_deg=16, fine_increment_deg=2, max_shift_a=3 * PX))
    err = rotation_angle_deg(poses.rotations, rot)
    assert np.median(err) < 3.0 < np.median(rotation_angle_deg(start, rot))
    assert np.abs(poses.shifts_a / PX - shift).max() < 0.35
    assert np.all(poses.scores > 0.3)


@pytest.mark.slow
def test_gold_standard_refinement_reaches_the_resolution_of_the_data(ribosome):
    n = 40
    vols, rot, shift, start = _particles(ribosome, n, 1.0, seed=3)
    settings = SearchSettings(increment_deg=8, max_angle_deg=16, fine_increment_deg=2, max_shift_a=3 * PX)
    result = refine(vols, PX, Wedges.single(ANGLES, n), Poses(start, np.zeros((n, 3)), np.full(n, np.nan)), settings, iterations=1)
    assert set(result.half) == {0, 1} and abs(int(result.half.sum()) - n // 2) <= 1
    assert np.array_equal(result.half, split_halves(n, 0))
    vs_truth = fsc(result.average, ribosome, PX, result.mask)
    assert vs_truth.resolution() <= 2.5 * PX
    # half-map resolution (0.143) agrees with the truth comparison within 20 %
    assert result.resolution_a == pytest.approx(vs_truth.resolution(), rel=0.2)
    # the average at the true poses bounds what refinement can reach; the refined one comes close
    truth_avg = average(vols, Poses(rot, shift * PX, np.zeros(n)), PX, Wedges.single(ANGLES, n))
    assert np.corrcoef(result.average.ravel(), ribosome.ravel())[0, 1] > 0.95 * np.corrcoef(truth_avg.ravel(), ribosome.ravel())[0, 1]


def test_phase_randomisation_removes_the_masks_correlation_from_pure_noise_shells():
    """Half maps = a band-limited signal (below 0.12 cycles/voxel) + independent noise: beyond the band
    the true FSC is zero; a hard-edged mask spreads the signal's correlation outwards (masked FSC
    inflated), and the phase-randomised correction must bring it back to zero."""
    rng = np.random.default_rng(3)
    b = 48
    k = np.sqrt(sum(g**2 for g in np.meshgrid(np.fft.fftfreq(b), np.fft.fftfreq(b), np.fft.rfftfreq(b), indexing="ij")))
    signal = np.fft.irfftn(np.fft.rfftn(rng.normal(size=(b,) * 3)) * (k < 0.12), s=(b,) * 3, axes=(0, 1, 2))
    signal /= signal.std()
    z, y, x = np.mgrid[:b, :b, :b] - b // 2
    mask = (x * x + y * y + z * z < 12**2).astype(np.float64)
    h1 = signal + 0.5 * rng.normal(size=signal.shape)
    h2 = signal + 0.5 * rng.normal(size=signal.shape)
    masked = fsc(h1, h2, 4.0, mask)
    corrected = corrected_masked_fsc(h1, h2, 4.0, mask)
    noise_only = masked.frequency > 0.6 * masked.frequency[-1]
    assert abs(fsc(h1, h2, 4.0).fsc[noise_only].mean()) < 0.05  # unmasked: no correlation there
    assert masked.fsc[noise_only].mean() > 0.15  # the mask's own correlation
    assert abs(corrected.fsc[noise_only].mean()) < 0.05
    assert np.allclose(corrected.fsc[masked.frequency < 0.1 / 4.0], masked.fsc[masked.frequency < 0.1 / 4.0])


def test_fsc_curve_csv_round_trip():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(16, 16, 16))
    curve = fsc(a, a + rng.normal(size=a.shape), 4.0)
    table = pd.read_csv(io.StringIO(curve.to_csv()))
    assert list(table.columns) == ["frequency_per_a", "resolution_a", "fsc"]
    np.testing.assert_allclose(table["frequency_per_a"], curve.frequency, atol=1e-6)
    np.testing.assert_allclose(table["fsc"], curve.fsc, atol=1e-5)
    np.testing.assert_allclose(table["resolution_a"][1:], 1 / curve.frequency[1:], rtol=1e-3)
