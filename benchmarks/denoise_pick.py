"""Benchmark `denoise-pick`: template-matching F-beta on raw vs denoised tomograms of the twin.

The twin (movies, so even/odd halves; no misalignment) is reconstructed from all frames (raw) and
denoised by the CTF deconvolution filter and by a Noise2Noise model trained on its halves; each of
the three is searched with the bundled ribosome template (the pipeline's settings: CTF and dose
weighting from the tilt series, uniform rotations), peaks extracted at the statistical cut-off (picks
at least the particle's diameter apart, as the pipeline) and scored against the true positions (F4,
tolerance half the template radius); `f4_best_n` scores the
N best peaks instead (N = the number of true particles: the ranking, without the cut-off). The cut-off
is extract_peaks' default (the sigma of each z slab of sub-volume blocks, never below the global
one); `f4_global` / `f4_block` (and their n_picks_*) take it from the global sigma / each block's own
(floored) instead. `f4_null` (`n_picks_null`, `null_threshold`) adds the empirical cut-off of
`cryocloud.pick.null`: the same search on each volume's null (half the even/odd difference, filtered
or denoised as the volume was). Also reports the
correlation and mean FSC of each with the truth. Timing keys: ours_s / peer_s are the matching
times on the Noise2Noise-denoised and on the raw tomogram (the same search, so ratio ~ 1); the
result is in the f4_* keys.
"""

from __future__ import annotations

import sys
import time

import dask
import numpy as np

PEER = "template matching on the raw tomogram"


def _f_beta(tomo, null, series, workdir: str, truth_positions: np.ndarray, increment: float) -> tuple[dict, float]:
    from cryocloud.pick import TiltWeighting, map_from_model
    from cryocloud.pick.evaluate import f_beta
    from cryocloud.pick.job import MatchJob, PeaksJob
    from cryocloud.pick.results import read_search, run_match
    from cryocloud.store import BUNDLED_STRUCTURE

    px = tomo.pixel_size
    job = MatchJob(angular_increment_deg=increment, subvolume=64)  # low-pass 2.5 voxels
    template = job.prepare(map_from_model(str(BUNDLED_STRUCTURE), px), px, px)
    search = dict(job=job, tilts=TiltWeighting.from_tilt_series(series), overwrite=True)
    t0 = time.perf_counter()
    run_match(tomo, template, None, workdir, **search)
    seconds = time.perf_counter() - t0
    run_match(null, template, None, f"{workdir}_null", **search)
    maps, _ = read_search(workdir)
    tolerance = template.radius * px / 2
    cut = PeaksJob().null_threshold(maps, read_search(f"{workdir}_null")[0])
    found = {}
    for mode, null_threshold in (("global", None), ("block", None), ("slab", None), ("null", cut)):
        particles, _ = PeaksJob(cutoff_method="search-sigma", local_sigma="slab" if mode == "null" else mode).run(maps, null_threshold=null_threshold)
        found[mode] = (f_beta(particles.positions, truth_positions, tolerance=tolerance), len(particles))
    best, _ = PeaksJob(n_false=None, number=len(truth_positions)).run(maps)
    ranked = f_beta(best.positions, truth_positions, tolerance=tolerance)
    score, n_picks = found["slab"]
    local = {f"{key}_{mode}": value for mode in ("global", "block", "null") for key, value in (("f4", round(found[mode][0]["f4"], 3)), ("n_picks", found[mode][1]))}
    return ({k: round(v, 3) for k, v in score.items()} | {"n_picks": n_picks, "f4_best_n": round(ranked["f4"], 3)} | local
            | {"null_threshold": round(cut, 4)}), seconds


def run(quick: bool = False, seed: int = 3) -> dict:
    """`seed`: the twin's simulation seed (the command line runs seed 3)."""
    import tempfile

    import torch

    from cryocloud.denoise import deconvolve
    from cryocloud.denoise.evaluate import compare_with_truth
    from cryocloud.denoise.noise2noise import N2NConfig, denoise_halves, train
    from cryocloud.simulate.halves import simulated_halves
    from cryocloud.model import Tomogram
    from cryocloud.pick.null import halves_difference
    from cryocloud.simulate import preset

    torch.set_num_threads(1)
    shape = (64, 96, 96) if quick else (64, 128, 128)
    cfg = preset("toy", shape_zyx=shape, n_particles=6 if quick else 12, frames_per_tilt=2, drift_a=0.0, seed=seed)
    halves = simulated_halves(cfg)
    with dask.config.set(scheduler="synchronous"):
        even, odd, truth = dask.compute(halves.even.data.data, halves.odd.data.data, halves.truth.data.data)
    px = cfg.pixel_size_a
    e, o = Tomogram.from_array(even, pixel_size=px), Tomogram.from_array(odd, pixel_size=px)
    raw = Tomogram.from_array(even + odd, pixel_size=px)
    defocus = halves.even.data.attrs["defocus_a"]
    print("training the Noise2Noise model", file=sys.stderr)
    model = train(e, o, N2NConfig(channels=4, patch=16, n_patches=64, steps=150 if quick else 300, learning_rate=3e-3))
    null = halves_difference(e, o)

    def in_memory(tomo: Tomogram) -> Tomogram:
        return Tomogram.from_array(tomo.data.values, pixel_size=px)

    volumes = {  # name: (volume, its null)
        "raw": (raw, null),
        "deconv": tuple(in_memory(deconvolve(v, defocus_a=defocus, tile=64, depth=32)) for v in (raw, null)),
        "noise2noise": tuple(in_memory(denoise_halves(e, o, model, difference=d, tile=32, depth=16)) for d in (False, True)),
    }
    series = halves.simulation.tilt_series.with_per_tilt(defocus_u=halves.simulation.truth.defocus_u_a,
                                                         defocus_v=halves.simulation.truth.defocus_v_a)
    result: dict = {"name": "denoise-pick", "peer": PEER, "seed": seed, "shape_zyx": list(shape), "n_particles": len(halves.simulation.particles)}
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (tomo, null) in volumes.items():
            print(f"matching {name}", file=sys.stderr)
            score, times[name] = _f_beta(tomo, null, series, f"{tmp}/{name}", halves.simulation.particles.positions, 30.0 if quick else 20.0)
            quality = compare_with_truth(tomo.data.values, truth, px)
            result[name] = score | {"correlation": round(quality["correlation"], 4), "fsc_mean": round(quality["fsc_mean"], 4)}
    result.update(ours_s=round(times["noise2noise"], 2), peer_s=round(times["raw"], 2),
                  ratio=round(times["raw"] / times["noise2noise"], 3))
    return result
