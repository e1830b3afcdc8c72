"""Benchmark `whiten-pick`: template-matching F4 on reconstructed twins without whitening, whitened
by the tomogram's own power spectrum, and whitened by the noise spectrum of its even/odd halves.

Each twin (toy preset at `pixel_size`, default 16 A, 48 x 96 x 96 voxels, 8 ribosomes; movies, so
even/odd halves; no misalignment) is reconstructed from all frames (even + odd) and searched with
the bundled ribosome template (CTF and dose weighting from the tilt series, low-pass 2.5 voxels,
45 deg uniform rotations). F4 (tolerance half the template radius) at the statistical false-alarm
cut-off (1 expected false pick) and `f4_best_n` on the N best peaks (N = the true count: the
ranking without the cut-off), per seed (3, 5, 7) and their mean. Also with the phase-randomised
background correction on the unwhitened and on the noise-whitened search. Timing keys: ours_s is
the noise-whitened search (noise spectrum included), peer_s the unwhitened one. The 10 A figures:
`run(pixel_size=10.0, shape=(64, 96, 96), searches=("none", "tomogram", "noise"))`, at a third of the dose
with `dose_per_tilt=1.0`."""

from __future__ import annotations

import sys
import time

import dask
import numpy as np

PEER = "template matching without whitening"
SEARCHES = ("none", "tomogram", "noise", "none+background", "noise+background")


def twin(seed: int, shape: tuple[int, int, int], n_particles: int, pixel_size: float, **overrides):
    """(tomogram even + odd, even, odd, tilt series with defocus, true positions (N, 3) A) of one twin
    (toy preset; `overrides`: other SimulationConfig fields)."""
    from cryocloud.simulate.halves import simulated_halves
    from cryocloud.model import Tomogram
    from cryocloud.simulate import preset

    cfg = preset("toy", **{"shape_zyx": shape, "pixel_size_a": pixel_size, "n_particles": n_particles, "frames_per_tilt": 2, "drift_a": 0.0,
                           "seed": seed, **overrides})
    halves = simulated_halves(cfg)
    with dask.config.set(scheduler="synchronous"):
        even, odd = dask.compute(halves.even.data.data, halves.odd.data.data)
    px = cfg.pixel_size_a
    sim = halves.simulation
    series = sim.tilt_series.with_per_tilt(defocus_u=sim.truth.defocus_u_a, defocus_v=sim.truth.defocus_v_a)
    tomo = Tomogram.from_array(even + odd, pixel_size=px)
    return tomo, Tomogram.from_array(even, pixel_size=px), Tomogram.from_array(odd, pixel_size=px), series, sim.particles.positions


def f4_scores(tomo, series, truth: np.ndarray, job, noise) -> dict:
    """F4 at the cut-off (the global sigma's), the number of picks and F4 of the N best peaks for the
    search `job` (a MatchJob; `noise` the halves' noise spectrum for whitening "noise")."""
    from cryocloud.pick import TiltWeighting, map_from_model
    from cryocloud.pick.evaluate import f_beta
    from cryocloud.pick.job import PeaksJob, ScoreMaps
    from cryocloud.store import BUNDLED_STRUCTURE

    px = tomo.pixel_size
    template = job.prepare(map_from_model(str(BUNDLED_STRUCTURE), px), px, px)
    result = job.run(tomo, template, TiltWeighting.from_tilt_series(series), noise=noise if job.whiten == "noise" else None)
    maps = ScoreMaps.of(result, template)
    radius, tolerance = 0.8 * template.radius * px, template.radius * px / 2
    picks, _ = PeaksJob(cutoff_method="search-sigma", local_sigma="global", min_distance_a=radius).run(maps)
    best, _ = PeaksJob(n_false=None, number=len(truth), min_distance_a=radius).run(maps)
    return {"f4": round(f_beta(picks.positions, truth, tolerance=tolerance)["f4"], 3), "n_picks": len(picks),
            "f4_best_n": round(f_beta(best.positions, truth, tolerance=tolerance)["f4"], 3)}


def run(quick: bool = False, seeds: tuple[int, ...] = (3, 5, 7), pixel_size: float = 16.0, shape: tuple[int, int, int] = (48, 96, 96),
        searches: tuple[str, ...] = SEARCHES, dose_per_tilt: float = 3.0) -> dict:
    """F4 of each search in `searches` on twins of `seeds` (quick: the first seed, without background correction)."""
    from cryocloud.pick.job import MatchJob
    from cryocloud.pick.spectrum import noise_spectrum

    n_particles, increment, px = 8, 45.0, pixel_size
    seeds = seeds[:1] if quick else seeds
    result: dict = {"name": "whiten-pick", "peer": PEER, "shape_zyx": list(shape), "n_particles": n_particles,
                    "increment_deg": increment, "voxel_size_a": px, "dose_per_tilt": dose_per_tilt, "seeds": list(seeds)}
    times = {"none": 0.0, "noise": 0.0}
    for seed in seeds:
        print(f"seed {seed}: simulating and reconstructing the twin", file=sys.stderr)
        tomo, even, odd, series, truth = twin(seed, shape, n_particles, px, dose_per_tilt=dose_per_tilt)
        base = dict(angular_increment_deg=increment, subvolume=128)  # low-pass 2.5 voxels
        t0 = time.perf_counter()
        noise = noise_spectrum(even, odd, quiet=True)
        noise_s = time.perf_counter() - t0
        jobs = {
            "none": MatchJob(**base, whiten="none"),
            "tomogram": MatchJob(**base, whiten="tomogram"),
            "noise": MatchJob(**base),
            "none+background": MatchJob(**base, whiten="none", background=True),
            "noise+background": MatchJob(**base, background=True),
        }
        for name in searches[:3] if quick else searches:
            print(f"seed {seed}: matching, whitening {name}", file=sys.stderr)
            t0 = time.perf_counter()
            result.setdefault(name, {})[str(seed)] = f4_scores(tomo, series, truth, jobs[name], noise)
            print(f"seed {seed}: {name} {result[name][str(seed)]}", file=sys.stderr)
            if name in times:
                times[name] += time.perf_counter() - t0 + (noise_s if name == "noise" else 0.0)
    for name in SEARCHES:
        if name in result:
            runs = list(result[name].values())
            result[name]["mean_f4"] = round(float(np.mean([r["f4"] for r in runs])), 3)
            result[name]["mean_f4_best_n"] = round(float(np.mean([r["f4_best_n"] for r in runs])), 3)
    result.update(ours_s=round(times["noise"], 2), peer_s=round(times["none"], 2),
                  ratio=round(times["none"] / times["noise"], 3) if times["noise"] > 0 else None)
    return result
