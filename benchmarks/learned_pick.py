"""Benchmark `learned-pick`: a small 3D U-Net picker against template matching on a held-out twin.

Three digital twins (ribosomes 7P6Z and lipid vesicles at 16 A voxels, 41 tilts +-60 deg, CTF, dose
damage, shot noise; WBP reconstructions): the picker trains on the first two with their
ground-truth particle lists (standing in for curated picks or portal annotations) and membrane
labels, then both pick the third:

- ours: `cryocloud.learn.predict` (tiled, overlapping) + `picks_from_probability`;
- peer: cryocloud's own template matching (`cryocloud.pick.match`, 30 deg search with the tilt
  series' wedge, CTF and dose weights, as in tests/test_pick_match.py) + `extract_peaks` at one
  expected false alarm.

Both run on the same local Dask scheduler. Accuracy: F-beta (beta = 4) against the truth, a true
particle found when a pick lies within half the particle radius (radius from the model's
molecular volume). ratio = time_tm_s / time_learned_predict_s (> 1: the picker is faster);
training time is reported apart (`time_train_s`): it is paid once per particle species.
"""

from __future__ import annotations

import sys
import time

import dask
import numpy as np

from cryocloud.model import Tomogram

PEER = "cryocloud template matching (FLCC, 30 deg, wedge/CTF/dose weighted)"
PX = 16.0


def _twin(seed: int, shape: tuple[int, int, int], n: int, vesicles: int):
    from cryocloud.reconstruct import reconstruct
    from cryocloud.simulate import MembraneConfig, SimulationConfig, simulate

    membranes = MembraneConfig(vesicles=vesicles, vesicle_radius_a=(150.0, 300.0))
    sim = simulate(SimulationConfig(shape_zyx=shape, pixel_size_a=PX, n_particles=n, seed=seed, membranes=membranes))
    ts = sim.tilt_series.with_per_tilt(defocus_u=sim.truth.defocus_u_a, defocus_v=sim.truth.defocus_v_a)
    volume = reconstruct(ts, thickness_px=shape[0]).data.values
    return Tomogram.from_array(volume, pixel_size=PX, tilt_angles=ts.tilt_angles), ts, sim.particles, sim.truth.labels


def particle_radius_a() -> float:
    """Radius (A) of a sphere of the bundled ribosome's molecular volume (1.21 A^3 / Da)."""
    from cryocloud.simulate.atomic import BUNDLED_STRUCTURE, read_atomic_model

    return float((3 * read_atomic_model(str(BUNDLED_STRUCTURE)).mass_da * 1.21 / (4 * np.pi)) ** (1 / 3))


def _template_matching(tomo: Tomogram, ts, radius_a: float):
    from cryocloud.pick import MatchSettings, TiltWeighting, extract_peaks, map_from_model, match, prepare_template, uniform_rotations
    from cryocloud.simulate.atomic import BUNDLED_STRUCTURE

    template = prepare_template(map_from_model(str(BUNDLED_STRUCTURE), PX), PX, PX)
    rotations = uniform_rotations(30.0)
    result = match(tomo, template, rotations, tilts=TiltWeighting.from_tilt_series(ts), settings=MatchSettings(subvolume=96, resolution_a=40.0))
    scores, orientation = dask.compute(result.scores, result.orientation)
    sigma, n_search = result.score_std()
    particles, _ = extract_peaks(scores, orientation, rotations, radius_a=0.8 * template.radius * PX, n_false=1.0, score_std=sigma, n_search=n_search)
    return particles


def _learned(tomo: Tomogram, picker, radius_a: float):
    from cryocloud.learn.picks import picks_from_probability
    from cryocloud.learn.predict import class_map, predict

    probability = class_map(predict(tomo, picker, tile=128)).data
    return picks_from_probability(probability.persist(), radius_a=radius_a)


def run(quick: bool = False) -> dict:
    from cryocloud.learn.train import TrainSettings, train
    from cryocloud.pick.evaluate import f_beta

    train_shape, test_shape, n_test = ((48, 128, 128), (48, 160, 160), 16) if quick else ((48, 128, 128), (64, 256, 256), 48)
    radius = particle_radius_a()
    training = [_twin(seed, train_shape, 12, 1) for seed in (1, 2)]
    tomo, ts, truth, _ = _twin(3, test_shape, n_test, 1 if quick else 3)
    settings = TrainSettings(steps=150 if quick else 300, batch_size=2, patches_per_tomogram=48)
    t0 = time.perf_counter()
    picker = train([t[0] for t in training], [t[2] for t in training], radius_a=radius, settings=settings, membranes=[t[3] for t in training])
    time_train = time.perf_counter() - t0
    print(f"trained in {time_train:.1f} s", file=sys.stderr)

    t0 = time.perf_counter()
    learned = _learned(tomo, picker, radius)
    time_learned = time.perf_counter() - t0
    t0 = time.perf_counter()
    tm = _template_matching(tomo, ts, radius)
    time_tm = time.perf_counter() - t0

    score_learned = f_beta(learned.positions, truth.positions, radius / 2)
    score_tm = f_beta(tm.positions, truth.positions, radius / 2)
    return {
        "name": "learned-pick",
        "ours_s": time_learned,
        "peer": PEER,
        "peer_s": time_tm,
        "ratio": time_tm / time_learned,
        "f_beta_learned": score_learned["f4"],
        "f_beta_tm": score_tm["f4"],
        "precision_learned": score_learned["precision"],
        "recall_learned": score_learned["recall"],
        "precision_tm": score_tm["precision"],
        "recall_tm": score_tm["recall"],
        "time_learned_predict_s": time_learned,
        "time_tm_s": time_tm,
        "time_train_s": time_train,
        "n_particles": len(truth),
        "test_shape_zyx": list(test_shape),
        "particle_radius_a": radius,
        "train_steps": settings.steps,
    }
