"""Benchmark `match`: our Fourier-rotation FLCC kernel against fftconvolve per orientation.

One sub-volume (128^3, quick: 64^3) of noise with pasted copies of a real ribosome template
(PyTom's human 80S at 21 A), low-passed at 3 voxels (the default). No missing-wedge / CTF weight:
it would spread the effective template beyond any box a real-space peer could use, so the two
would no longer compute the same thing; a wedge-weighted search also has fewer frequencies to
interpolate, so ours is faster there than here. Both on one core, side by side:

- ours: `cryocloud.pick.score.search_orientations` (interpolate the template's spectrum on the band,
  one inverse real FFT pruned to the band and to the core's (z, y) lines, numba max-update), per orientation; the sub-volume's FFT and local
  standard deviation (`prepare_subvolume`) once, reported apart (`prepare_s`);
- peer: the straightforward way, per orientation `scipy.signal.fftconvolve(volume, template)` of the
  same real-space template, divided by the same local standard deviation, `np.maximum` update. To
  compute the same thing it is handed our effective templates (rotated and weighted) in real space,
  cropped to the template box plus a margin, made before its clock starts (its template preparation
  is free, so `ratio` is conservative);
- floor: one inverse real FFT of the sub-volume (the faster of ducc0 and scipy.fft, one thread);
  floor_ratio = our time per orientation / that, for a search weighted as in a real job (tilts
  +-60 deg every 3 deg, dose, signed CTF at 3 um defocus: no frequencies to interpolate in the
  missing wedge); floor_ratio_lowpass_only for the side-by-side search above. The machine may be
  shared, so each of `PAIRS` timings of a search is paired with an irfftn timed just before it and
  the ratio is the median of the pairs' ratios (`floor_ratio_spread`: their quartiles);
- full band: the same two searches without the low-pass (resolution at Nyquist, 2 voxels: every
  frequency up to |k| = 0.5 is interpolated, 2.5x the default's), `floor_ratio_full_band` (weighted)
  and `floor_ratio_full_band_lowpass_only` (no weight at all: the most interpolation there is).
  `load_average` (1, 5, 15 min) is recorded at the end.

`max_abs_score_diff` compares the two maps of the best score per voxel, on the part of the core
where the peer's template does not reach past the volume's edge (fftconvolve pads with zeros).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import scipy.fft
from scipy.signal import fftconvolve

from cryocloud.geometry import random_rotations
from cryocloud.pick import score as sc
from cryocloud.pick.match import MatchSettings, _setup
from cryocloud.pick.template import prepare_template, read_map
from cryocloud.pick.weighting import TiltWeighting

PEER = "scipy.signal.fftconvolve per orientation"
REAL = Path(__file__).resolve().parents[1] / "tests" / "data" / "real"


def _best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


PAIRS = 15


def _paired_floor_ratios(search, n_rot: int, floor) -> np.ndarray:
    """Per pair: (time of `search` / n_rot) / (time of `floor`, mean of 4 calls just before)."""
    ratios = []
    for _ in range(PAIRS):
        t0 = time.perf_counter()
        for _ in range(4):
            floor()
        floor_s = (time.perf_counter() - t0) / 4
        t0 = time.perf_counter()
        search()
        ratios.append((time.perf_counter() - t0) / n_rot / floor_s)
    return np.asarray(ratios)


def _peer(volume: np.ndarray, setup, rotations: np.ndarray, lo, core, scale: np.ndarray, half: int):
    """The straightforward search as a function returning the best score per core voxel:
    fftconvolve with each of our effective templates (cropped to 2 half + 1, flipped), divided by
    the same local standard deviation (`scale`), np.maximum update."""
    templates = []
    for r in rotations:
        t = np.roll(sc.effective_template(setup.spectrum, setup.grid, r), (half,) * 3, axis=(0, 1, 2))[: 2 * half + 1, : 2 * half + 1, : 2 * half + 1]
        templates.append((np.ascontiguousarray(t[::-1, ::-1, ::-1]), 1.0 / np.linalg.norm(t)))
    inner = tuple(slice(a, a + c) for a, c in zip(lo, core))

    def search() -> np.ndarray:
        best = np.full(core, -np.inf, np.float32)
        for flipped, inv_norm in templates:
            corr = fftconvolve(volume, flipped, mode="same")[inner]
            np.maximum(best, corr * scale * inv_norm, out=best)
        return best

    return search


def run(quick: bool = False) -> dict:
    size, n_rot = (64, 10) if quick else (128, 24)
    px = 21.0
    volume_map, _ = read_map(str(REAL / "pytom_templates" / "human_ribo_21A.em"), voxel_size=px)
    template = prepare_template(volume_map, px, px)
    setup = _setup(template, size, None, MatchSettings(), None)
    n = 41
    tilts = TiltWeighting(np.linspace(-60, 60, n), dose=np.arange(n) * 3.0 + 1.5, defocus_u=np.full(n, 30000.0), defocus_v=np.full(n, 30000.0))
    weighted = _setup(template, size, tilts, MatchSettings(), None)
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(size,) * 3).astype(np.float32)
    b = template.box
    for corner in rng.integers(0, size - b, size=(6, 3)):
        volume[corner[0] : corner[0] + b, corner[1] : corner[1] + b, corner[2] : corner[2] + b] += 0.5 * template.data / template.data.std()
    overlap = int(np.ceil(template.radius)) + 1
    lo, core = (overlap,) * 3, (size - 2 * overlap,) * 3
    rotations = random_rotations(n_rot, rng)

    # ours
    t0 = time.perf_counter()
    sub = sc.prepare_subvolume(volume, setup.grid, template.mask, lo, core, spherical=True)
    prepare_s = time.perf_counter() - t0
    sc.search_orientations(sub, setup.spectrum, setup.grid, rotations[:2])  # compile / warm up
    ours_best = None

    def ours():
        nonlocal ours_best
        ours_best = sc.search_orientations(sub, setup.spectrum, setup.grid, rotations)[0]

    ours_s = _best_time(ours, 7)
    weighted_sub = sc.prepare_subvolume(volume, weighted.grid, template.mask, lo, core, spherical=True)

    # floor: one inverse real FFT of the sub-volume, one thread (ducc0, faster than scipy.fft)
    spectrum = sc.rfftn(volume)
    out = np.empty(volume.shape, np.float32)
    floor = lambda: sc.irfftn(spectrum, volume.shape, out=out)  # noqa: E731
    floor_s = min(_best_time(floor, 20), _best_time(lambda: scipy.fft.irfftn(spectrum, s=volume.shape, workers=1), 20))
    weighted_ratios = _paired_floor_ratios(lambda: sc.search_orientations(weighted_sub, weighted.spectrum, weighted.grid, rotations), n_rot, floor)
    lowpass_ratios = _paired_floor_ratios(ours, n_rot, floor)
    full_band, searches = {}, {}
    for name, weighting in (("full_band", tilts), ("full_band_lowpass_only", None)):
        full = _setup(template, size, weighting, MatchSettings(resolution_a=2 * px), None)
        full_sub = sc.prepare_subvolume(volume, full.grid, template.mask, lo, core, spherical=True)
        searches[name] = (full, full_sub)
        full_band[name] = (_paired_floor_ratios(lambda full=full, full_sub=full_sub: sc.search_orientations(full_sub, full.spectrum, full.grid, rotations), n_rot, floor), int(full.grid.flat.size))

    # peer: real-space templates (ours, cropped), fftconvolve per orientation; the full band side
    # by side too (unweighted: the template stays in the peer's box)
    half = b // 2 + 4
    full, full_sub = searches["full_band_lowpass_only"]
    full_best = sc.search_orientations(full_sub, full.spectrum, full.grid, rotations)[0]
    full_peer_best = _peer(volume, full, rotations, lo, core, full_sub.scale, half)()
    peer_search = _peer(volume, setup, rotations, lo, core, sub.scale, half)
    peer_best = None

    def peer():
        nonlocal peer_best
        peer_best = peer_search()

    peer_s = _best_time(peer, 2)
    # compare where the peer's cropped template stays inside the volume (fftconvolve zero-pads,
    # our correlation is periodic)
    edge = max(0, half - overlap)
    valid = (slice(edge, core[0] - edge),) * 3
    return {
        "name": "match",
        "ours_s": ours_s,
        "peer": PEER,
        "peer_s": peer_s,
        "ratio": peer_s / ours_s,
        "floor_ratio": float(np.median(weighted_ratios)),
        "floor_ratio_spread": [float(q) for q in np.percentile(weighted_ratios, [25, 75])],
        "floor_ratio_lowpass_only": float(np.median(lowpass_ratios)),
        **{f"floor_ratio_{name}": float(np.median(ratios)) for name, (ratios, _) in full_band.items()},
        **{f"floor_ratio_{name}_spread": [float(q) for q in np.percentile(ratios, [25, 75])] for name, (ratios, _) in full_band.items()},
        "irfftn_s": floor_s,
        "ours_per_orientation_s": ours_s / n_rot,
        "peer_per_orientation_s": peer_s / n_rot,
        "prepare_s": prepare_s,
        "subvolume": size,
        "orientations": n_rot,
        "band_points": int(setup.grid.flat.size),
        "band_points_weighted": int(weighted.grid.flat.size),
        **{f"band_points_{name}": points for name, (_, points) in full_band.items()},
        "max_abs_score_diff": float(np.abs(ours_best - peer_best)[valid].max()),
        "max_abs_score_diff_full_band": float(np.abs(full_best - full_peer_best)[valid].max()),
        "max_score": float(ours_best.max()),
        "load_average": list(os.getloadavg()),
    }
