"""Benchmark `learned-pick`: a small 3D U-Net picker against template matching on a held-out twin.

Three digital twins (ribosomes 7P6Z and lipid vesicles at 16 A voxels, 41 tilts +-60 deg, CTF, dose
damage, shot noise; WBP reconstructions). The picker trains on the first two, in two ways, each
printed in the one JSON:

- ``tm-curated`` (the headline, no ground truth used): the closed curation loop. Template matching
  (below) picks each training twin at its statistical cut-off; automatic curation
  (`cryocloud.curate.auto.curate_automatically`, the two-class split of each pick's agreement
  with the average of the 10 best-scoring picks) stands in for a person's accept/reject; the
  picker learns the accepted picks and the membranes of `cryocloud.segment.segment_membranes`.
  Reported: precision/recall of the raw template-matching picks and of the curated set against
  the truth (`training_*`), and the time of each step;
- ``truth``: the twins' ground-truth particle lists and membrane labels (the ceiling of the loop;
  keys under "truth").

Then both pickers and template matching pick the third:

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

import numpy as np

from cryocloud.model import Tomogram

PEER = "cryocloud template matching (FLCC, 30 deg, wedge/CTF/dose weighted)"
PX = 16.0


def twin(seed: int, shape: tuple[int, int, int], n: int, vesicles: int):
    """(WBP tomogram, tilt series, true particles, truth labels: 1 particle, 2 membrane)."""
    from cryocloud.reconstruct import reconstruct
    from cryocloud.simulate import MembraneConfig, SimulationConfig, simulate

    membranes = MembraneConfig(vesicles=vesicles, vesicle_radius_a=(150.0, 300.0))
    sim = simulate(SimulationConfig(shape_zyx=shape, pixel_size_a=PX, n_particles=n, seed=seed, membranes=membranes))
    ts = sim.tilt_series.with_per_tilt(defocus_u=sim.truth.defocus_u_a, defocus_v=sim.truth.defocus_v_a)
    volume = reconstruct(ts, thickness_px=shape[0]).data.values
    return Tomogram.from_array(volume, pixel_size=PX, tilt_angles=ts.tilt_angles), ts, sim.particles, sim.truth.labels


def pick_scores(picks: np.ndarray, truth: np.ndarray, radius_a: float) -> dict[str, float]:
    """Precision, recall and F4 of picks (N, 3) against true positions (M, 3), within radius / 2."""
    from cryocloud.pick.evaluate import f_beta

    return f_beta(picks, truth, radius_a / 2)


def particle_radius_a() -> float:
    """Radius (A) of a sphere of the bundled ribosome's molecular volume (1.21 A^3 / Da)."""
    from cryocloud.store import BUNDLED_STRUCTURE, read_atomic_model

    return float((3 * read_atomic_model(str(BUNDLED_STRUCTURE)).mass_da * 1.21 / (4 * np.pi)) ** (1 / 3))


def template_matching(tomo: Tomogram, ts, radius_a: float, increment_deg: float = 30.0):
    """Template matching (wedge/CTF/dose weighted, `increment_deg` angular search) and peaks at
    one expected false alarm."""
    from cryocloud.pick import TiltWeighting, map_from_model
    from cryocloud.pick.job import MatchJob, PeaksJob, ScoreMaps
    from cryocloud.store import BUNDLED_STRUCTURE

    job = MatchJob(angular_increment_deg=increment_deg, subvolume=96, resolution_a=40.0)
    template = job.prepare(map_from_model(str(BUNDLED_STRUCTURE), PX), PX, PX)
    maps = ScoreMaps.of(job.run(tomo, template, TiltWeighting.from_tilt_series(ts)), template)
    particles, _ = PeaksJob(cutoff_method="search-sigma", local_sigma="global").run(maps)
    return particles


def learned_picks(tomo: Tomogram, picker, radius_a: float, tile: int = 128):
    """The picker's picks on a tomogram (tiled prediction + connected components)."""
    from cryocloud.learn.picks import picks_from_probability
    from cryocloud.learn.predict import class_map, predict

    probability = class_map(predict(tomo, picker, tile=tile)).data
    return picks_from_probability(probability.persist(), radius_a=radius_a)


def membrane_labels(tomo: Tomogram) -> Tomogram:
    """The tomogram's segmented membranes (cryocloud.segment): labels 1..count, one per membrane."""
    from cryocloud.segment import segment_membranes

    return Tomogram(segment_membranes(tomo, quiet=True).labels)


def curated_training(training: list, radius_a: float, *, box: int = 24, top_n: int = 10, increment_deg: float = 30.0) -> tuple[list, dict]:
    """The loop's training picks: template matching, then automatic curation (agreement with the
    average of the top_n by score, two-class split), per training twin (tomogram, tilt series, truth, _).
    Returns the accepted Particles per twin and the figures (precision/recall vs truth, times)."""
    from cryocloud.curate.auto import curate_automatically

    accepted, raw_all, kept_all, truth_all = [], [], [], []
    time_tm = time_curate = 0.0
    for tomo, ts, truth, _ in training:
        t0 = time.perf_counter()
        picks = template_matching(tomo, ts, radius_a, increment_deg)
        t1 = time.perf_counter()
        curation = curate_automatically(tomo, picks, box=box, top_n=top_n, mask_radius_a=1.2 * radius_a)
        time_curate += time.perf_counter() - t1
        time_tm += t1 - t0
        kept = picks.subset(curation.accepted)
        accepted.append(kept)
        offset = 1e7 * len(truth_all)  # keep twins apart when pooling positions
        raw_all.append(picks.positions + offset)
        kept_all.append(kept.positions + offset)
        truth_all.append(truth.positions + offset)
        print(f"curation: {len(kept)} of {len(picks)} template-matching picks accepted (agreement >= {curation.threshold:.3f})", file=sys.stderr)
    truth_pooled = np.concatenate(truth_all)
    raw = pick_scores(np.concatenate(raw_all), truth_pooled, radius_a)
    kept = pick_scores(np.concatenate(kept_all), truth_pooled, radius_a)
    figures = {
        "training_tm_picks": int(sum(len(p) for p in raw_all)),
        "training_tm_precision": raw["precision"],
        "training_tm_recall": raw["recall"],
        "training_curated_picks": int(sum(len(p) for p in kept_all)),
        "training_curated_precision": kept["precision"],
        "training_curated_recall": kept["recall"],
        "training_true_particles": int(len(truth_pooled)),
        "curation_rule": f"agreement with the average of the top {top_n} by score (box {box}), two-class split",
        "training_tm_increment_deg": increment_deg,
        "time_training_tm_s": time_tm,
        "time_curate_s": time_curate,
    }
    return accepted, figures


def _train(tomograms, picks, membranes, radius_a: float, settings, membrane_label: int | None):
    from cryocloud.learn.train import train

    t0 = time.perf_counter()
    picker = train(tomograms, picks, radius_a=radius_a, settings=settings, membranes=membranes, membrane_label=membrane_label)
    return picker, time.perf_counter() - t0


def run(quick: bool = False) -> dict:
    from cryocloud.learn.train import TrainSettings

    train_shape, test_shape, n_test = ((48, 128, 128), (48, 160, 160), 16) if quick else ((48, 128, 128), (64, 256, 256), 48)
    radius = particle_radius_a()
    training = [twin(seed, train_shape, 12, 1) for seed in (1, 2)]
    tomo, ts, truth, _ = twin(3, test_shape, n_test, 1 if quick else 3)
    settings = TrainSettings(steps=150 if quick else 300, batch_size=2, patches_per_tomogram=48)
    tomograms = [t[0] for t in training]

    curated, loop = curated_training(training, radius)
    t0 = time.perf_counter()
    segmented = [membrane_labels(t) for t in tomograms]
    time_segment = time.perf_counter() - t0
    picker, time_train = _train(tomograms, curated, segmented, radius, settings, membrane_label=None)
    truth_picker, time_train_truth = _train(tomograms, [t[2] for t in training], [t[3] for t in training], radius, settings, membrane_label=2)
    print(f"trained in {time_train:.1f} s (tm-curated), {time_train_truth:.1f} s (truth)", file=sys.stderr)

    t0 = time.perf_counter()
    learned = learned_picks(tomo, picker, radius)
    time_learned = time.perf_counter() - t0
    learned_truth = learned_picks(tomo, truth_picker, radius)
    t0 = time.perf_counter()
    tm = template_matching(tomo, ts, radius)
    time_tm = time.perf_counter() - t0

    score_learned = pick_scores(learned.positions, truth.positions, radius)
    score_truth = pick_scores(learned_truth.positions, truth.positions, radius)
    score_tm = pick_scores(tm.positions, truth.positions, radius)
    return {
        "name": "learned-pick",
        "training": "tm-curated",
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
        **loop,
        "time_segment_s": time_segment,
        "time_learned_predict_s": time_learned,
        "time_tm_s": time_tm,
        "time_train_s": time_train,
        "truth": {
            "training": "truth",
            "f_beta_learned": score_truth["f4"],
            "precision_learned": score_truth["precision"],
            "recall_learned": score_truth["recall"],
            "time_train_s": time_train_truth,
        },
        "n_particles": len(truth),
        "test_shape_zyx": list(test_shape),
        "particle_radius_a": radius,
        "train_steps": settings.steps,
    }
