"""Learned picking on the digital twin: train on two tomograms, pick a held-out third."""

import numpy as np
import torch
import pytest

from cryocloud.learn.picks import picks_from_probability
from cryocloud.learn.predict import class_map, predict
from cryocloud.learn.train import TrainSettings, class_weights, train
from cryocloud.model import Tomogram
from cryocloud.pick.evaluate import f_beta

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end

torch.set_num_threads(1)
PX = 16.0


def _twin(seed: int):
    """Ribosomes (7P6Z) and a vesicle at 16 A voxels, 41 tilts +-60 deg with CTF, dose damage and shot noise; WBP."""
    from cryocloud.reconstruct import reconstruct
    from cryocloud.simulate import MembraneConfig, SimulationConfig, simulate

    membranes = MembraneConfig(vesicles=1, vesicle_radius_a=(150.0, 220.0))
    sim = simulate(SimulationConfig(shape_zyx=(32, 96, 96), pixel_size_a=PX, n_particles=8, seed=seed, membranes=membranes))
    tomo = reconstruct(sim.tilt_series, thickness_px=32)
    return Tomogram.from_array(tomo.data.values, pixel_size=PX), sim.particles, sim.truth.labels


def test_class_weights_favour_rare_classes():
    labels = np.zeros(1000, np.uint8)
    labels[:10] = 1
    w = class_weights(labels, 3)
    assert np.isclose(w.mean(), 1.0) and w[1] > 5 * w[0] and w[2] >= w[1]


def test_held_out_twin_f_beta():
    """A short training (160 steps of 2 boxes of 32^3, a 2-level U-Net with 8 base channels) on two
    twins picks the held-out twin's 8 particles. Floor: F4 >= 0.85 within half the particle radius.
    With 8 true particles F4 (recall weighted 16x) reaches 0.85 only when at least 7 are found
    (7/8 recall and perfect precision give F4 = 0.877; 6/8 caps it at 0.76), and precision is
    asserted apart; template matching reaches F4 >= 0.9 on such twins (tests/test_pick_match.py)."""
    from cryocloud.store import BUNDLED_STRUCTURE, read_atomic_model

    radius = float((3 * read_atomic_model(str(BUNDLED_STRUCTURE)).mass_da * 1.21 / (4 * np.pi)) ** (1 / 3))
    (t1, p1, l1), (t2, p2, l2), (t3, truth, _) = (_twin(s) for s in (1, 2, 3))
    settings = TrainSettings(steps=160, batch_size=2, patch=32, patches_per_tomogram=32, device="cpu")
    picker = train([t1, t2], [p1, p2], radius_a=radius, settings=settings, membranes=[l1, l2], log=None)
    assert picker.config.classes == ["background", "particle", "membrane"]
    assert all((labels.data == 2).any() for labels in (l1, l2))  # the membrane class is not empty
    assert picker.losses[-10:].mean() < 0.8 * picker.losses[:10].mean()
    probability = class_map(predict(t3, picker, tile=64, device="cpu")).data
    picks = picks_from_probability(probability, radius_a=radius)
    score = f_beta(picks.positions, truth.positions, radius / 2)
    assert score["f4"] >= 0.85
    assert score["precision"] >= 0.5
