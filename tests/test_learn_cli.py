"""`cryocloud train-picker` and `cryocloud pick` end to end (plumbing: accuracy is in test_learn_accuracy.py)."""

import json

import numpy as np
import torch
import pytest

from cryocloud.cli import main
from cryocloud.pick.formats import read_picks
from cryocloud.store import read_tomogram, write_particles_csv, write_tomogram

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end

torch.set_num_threads(1)


def test_train_then_pick(tmp_path):
    from cryocloud.reconstruct import reconstruct
    from cryocloud.simulate import MembraneConfig, SimulationConfig, write_simulation, simulate

    sim = simulate(SimulationConfig(shape_zyx=(32, 64, 64), pixel_size_a=16.0, n_particles=3, seed=6, membranes=MembraneConfig(vesicles=1, vesicle_radius_a=(150.0, 200.0))))
    write_simulation(sim, str(tmp_path / "sim"))
    write_tomogram(reconstruct(sim.tilt_series, thickness_px=32), str(tmp_path / "tomo.zarr"), levels=1)
    write_particles_csv(sim.particles, str(tmp_path / "picks.csv"))
    model = tmp_path / "model"
    train = ["train-picker", str(tmp_path / "tomo.zarr"), str(tmp_path / "picks.csv"), str(model), "--radius", "80",
             "--membranes", str(tmp_path / "sim" / "ground_truth" / "labels.zarr"), "--steps", "4", "--patch", "16", "--batch-size", "1",
             "--patches-per-tomogram", "4", "--device", "cpu"]
    assert main(train) == 0
    config = json.loads((model / "picker.json").read_text())
    assert config["classes"] == ["background", "particle", "membrane"] and config["radius_a"] == 80.0 and config["steps"] == 4
    assert (model / "model.pt").stat().st_size > 1000 and len((model / "losses.csv").read_text().splitlines()) == 5
    assert (model / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert main(train) == 2  # the model folder exists
    assert main(["train-picker", str(tmp_path / "tomo.zarr"), str(model)]) == 2  # no pick list

    out = tmp_path / "picks_learned.star"
    assert main(["pick", str(tmp_path / "tomo.zarr"), str(model), str(out), "--tile", "32", "--threshold", "0.3",
                 "--probabilities", str(tmp_path / "prob.zarr"), "--device", "cpu"]) == 0
    probability = read_tomogram(str(tmp_path / "prob.zarr")).data.values
    assert probability.shape == (32, 64, 64) and 0 <= probability.min() and probability.max() <= 1
    picks = read_picks(str(out), pixel_size=16.0, shape_zyx=(32, 64, 64))
    assert np.all((picks.scores >= 0.3) & (picks.scores <= 1))
    assert (tmp_path / "picks_learned_overlay.png").read_bytes()[:4] == b"\x89PNG"
