"""Membrane segmentation accuracy on the digital twin, and no membranes where there are none.

Twin: 64 x 128 x 128 voxels of 10 A, vitreous ice with its density fluctuations, 41 tilts
(+-60 deg, 3 deg, dose-symmetric, 3 e/A^2 per tilt = 123 e/A^2), CTF at 3 um defocus, dose
damage, shot noise; weighted back-projection. Truth: labels.zarr value 2, the voxels within 25 A
of each bilayer's mid-surface; the segmentation outputs its mid-surfaces thickened to 50 A, so
both masks are at the bilayer thickness. See `cryocloud.segment.evaluate` for the resolvable
region (membrane patches whose normal lies in the missing wedge are excluded from both masks).
"""

import dask
import numpy as np
import pytest
from scipy import ndimage

from cryocloud.model import Tomogram
from cryocloud.reconstruct import reconstruct
from cryocloud.segment import evaluate_membranes, recall_by_normal_angle, segment_membranes
from cryocloud.simulate import MembraneConfig, SimulationConfig, simulate

pytestmark = pytest.mark.slow  # simulates and reconstructs the digital twin

SHAPE = (64, 128, 128)


def _twin(seed: int, **kwargs):
    cfg = SimulationConfig(shape_zyx=SHAPE, pixel_size_a=10.0, seed=seed, **kwargs)
    sim = simulate(cfg)
    tomo = reconstruct(sim.tilt_series, thickness_px=SHAPE[0])
    return sim, tomo


@pytest.fixture(autouse=True)
def _threads():
    with dask.config.set(scheduler="threads", num_workers=2):
        yield


@pytest.mark.parametrize("seed", [4, 6])
def test_vesicles_dice_against_truth(seed):
    sim, tomo = _twin(seed, n_particles=0, membranes=MembraneConfig(vesicles=3, vesicle_radius_a=(150.0, 300.0)))
    result = segment_membranes(tomo, quiet=True)
    truth = sim.truth.labels.data.values == 2
    scores = evaluate_membranes(result.labels, truth, tomo.pixel_size, (min(tomo.tilt_angles), max(tomo.tilt_angles)))
    by_angle = recall_by_normal_angle(result.labels, truth, tomo.pixel_size)
    print(seed, result.count, scores, by_angle)
    assert scores["dice_resolvable"] >= 0.86
    assert scores["precision_resolvable"] >= 0.82 and scores["recall_resolvable"] >= 0.9
    assert scores["dice"] >= 0.74  # whole volume, missing-wedge caps included (about a third of the truth)
    assert scores["dice"] >= scores["dice_wedge_limit"] - 0.03  # limits 0.788 / 0.787, measured 0.765 / 0.778
    assert 0.2 <= scores["excluded_truth_fraction"] <= 0.45
    # oblique membranes (normal 30-60 deg from z), weakened by the wedge, are found (0.18 / 0.58 before
    # the orientation-dependent noise normalisation); edge-on ones nearly all
    assert by_angle["30-45"] >= 0.4 and by_angle["45-60"] >= 0.7 and by_angle["60-90"] >= 0.9
    assert scores["precision"] >= 0.84  # found membranes at the bilayer thickness
    # one label per connected membrane: every label sits on the truth (no stray components)
    labels = result.labels.values
    near = ndimage.binary_dilation(truth, iterations=2)
    for k in range(1, result.count + 1):
        assert near[labels == k].mean() > 0.9


def test_no_membranes_in_noise_or_particles():
    rng = np.random.default_rng(0)
    noise = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.5).astype(np.float32)
    result = segment_membranes(Tomogram.from_array(noise, pixel_size=10.0), quiet=True)
    assert result.count == 0 and not result.mask.values.any()

    sim, tomo = _twin(2, n_particles=12)
    assert not (sim.truth.labels.data.values == 2).any()
    result = segment_membranes(tomo, quiet=True)
    flagged = result.mask.values
    particles = sim.truth.labels.data.values == 1
    print("particle twin: flagged fraction", flagged.mean(), "particle fraction", particles.mean(), "components", result.count)
    assert flagged.mean() < 0.007  # dense, textured ribosomes are the false positives left (0.5%; 0.8% before)
    near = ndimage.binary_dilation(particles, iterations=4)
    labels = result.labels.values
    for k in range(1, result.count + 1):  # every false membrane is on a particle, none in the ice alone
        assert near[labels == k].mean() > 0.5


def test_gold_fiducials_streaks_are_not_membranes():
    from cryocloud.segment import MembraneSettings
    from cryocloud.simulate import FiducialConfig

    sim, tomo = _twin(4, n_particles=0, membranes=MembraneConfig(vesicles=3, vesicle_radius_a=(150.0, 300.0)),
                      fiducials=FiducialConfig(count=6))
    truth = sim.truth.labels.data.values == 2
    gold = ndimage.binary_dilation(sim.truth.labels.data.values == 3, iterations=3)
    angles = (min(tomo.tilt_angles), max(tomo.tilt_angles))
    kept = segment_membranes(tomo, quiet=True)
    plain = segment_membranes(tomo, MembraneSettings(fiducial_sigma=None), quiet=True)
    scores, plain_scores = (evaluate_membranes(r.labels, truth, tomo.pixel_size, angles) for r in (kept, plain))
    print("gold twin", kept.count, plain.count, kept.labels.attrs["segmentation"]["fiducial_streaks_dropped"], scores, plain_scores)
    assert kept.labels.attrs["segmentation"]["fiducial_streaks_dropped"] >= 1
    assert scores["precision"] > plain_scores["precision"] and scores["recall"] >= plain_scores["recall"] - 0.01
    assert scores["dice_resolvable"] >= 0.8
    labels = kept.labels.values
    for k in range(1, kept.count + 1):  # no label left on a bead's streak
        assert gold[labels == k].mean() < 0.05
