"""Stages that find particles: `match` (template matching on a pyramid level of the tomogram, whitened
by the noise spectrum of the even/odd half tomograms when they exist and `match.whiten` is on; or of
the denoised tomogram, `match.input: denoised`, with the same search on the denoise stage's null volume
into `match/null/`, both whitened by the null volume's spectrum after the deconvolution filter) and `peaks` (picks as CSV and RELION 5 STAR, scored against the simulated particles
when known; the cut-off never below the null search's empirical one when there is one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cryocloud.pipeline.context import RunContext


def stage_match(ctx: RunContext, overwrite: bool) -> None:
    """The config's `match` section is the MatchJob; this stage picks its inputs and writes through run_match."""
    from cryocloud.pick import TiltWeighting
    from cryocloud.pick.results import run_match
    from cryocloud.pick.template import read_template
    from cryocloud.reconstruct import HALVES
    from cryocloud.store import BUNDLED_STRUCTURE
    from cryocloud.store import read_tomogram

    p = ctx.config.match
    so = ctx.storage_options
    url = ctx.url("match")
    tomo = _searched(ctx, "tomogram.zarr")
    px = tomo.pixel_size
    path = p.template or str(ctx.results.get("structure") or BUNDLED_STRUCTURE)
    volume, template_px = read_template(path, px, template_voxel_size=p.template_voxel_size_a)
    template = p.prepare(volume, template_px, px, tomogram_shape=tomo.shape, source=path)
    tilts = TiltWeighting.from_tilt_series(ctx.results["tilt_series"])
    null = _searched(ctx, "null.zarr") if p.input == "denoised" and ctx.exists("denoise", "null.zarr") else None
    whitening = _whitening(ctx, null)
    description = {"template": path, "symmetry": p.symmetry, "pyramid_level": p.pyramid_level, "whitening": whitening, "input": p.input}
    searches = [(tomo, url, overwrite or not ctx.exists("match", "match.json"))]
    if null is not None:  # after the search above, which may clear match/
        searches.append((null, ctx.url("match", "null"), overwrite or not ctx.exists("match", "null", "match.json")))
    noise = None
    if any(todo for _, _, todo in searches):
        if whitening == HALVES_NOISE:
            halves = tuple(read_tomogram(ctx.url("reconstruct", f"{h}.zarr"), level=p.pyramid_level, storage_options=so) for h in HALVES)
            noise = p.noise(halves=halves)
        elif whitening == NULL_NOISE:
            noise = p.noise(null=null)
    rotations = p.rotations(template)
    for volume, out, todo in searches:
        if todo:
            run_match(volume, template, rotations, out, job=p, tilts=tilts, noise=noise, overwrite=True, storage_options=so,
                      description=description if volume is tomo else {**description, "input": "null: the denoised even/odd half difference"})
    ctx.results["template_radius_a"] = template.radius * px
    ctx.results["particle_radius_a"] = template.particle_radius * px
    ctx.summary["match"] = {"n_orientations": int(len(rotations)), "voxel_size_a": px, "template": Path(path).name,
                            "whitening": whitening, "input": p.input, "null_search": None if null is None else "match/null"}


def _membranes(ctx: RunContext, shape: tuple[int, ...]) -> Any:
    """The segment stage's membrane labels (lazy) on the searched pyramid level's grid, which has the
    score map's `shape`."""
    from cryocloud.errors import ModelError
    from cryocloud.store import read_labels

    if not ctx.exists("segment", "membranes.zarr"):
        raise ModelError("peaks.avoid_membranes", f"needs the segment stage's membranes ({ctx.url('segment', 'membranes.zarr')} does not exist)")
    labels = read_labels(ctx.url("segment", "membranes.zarr"), level=ctx.config.match.pyramid_level, storage_options=ctx.storage_options)
    if tuple(labels.shape) != tuple(shape):
        raise ModelError("peaks.avoid_membranes", f"membranes of shape {tuple(labels.shape)} at pyramid level {ctx.config.match.pyramid_level}, "
                                                  f"expected the score map's {tuple(shape)}")
    return labels


HALVES_NOISE, NULL_NOISE = "noise of the even/odd halves", "noise of the null volume"


def _whitening(ctx: RunContext, null: Any) -> str:
    """What the match stage whitens by, in the summary's words: the tomogram by its halves' noise;
    a linear filter's output (deconv) by its null volume's, which undoes the filter's amplitude as
    for the tomogram (default twin, deconv input: F4 0.937 unwhitened, 0.996 whitened); Noise2Noise
    output not at all: its null misses the texture the network leaves, and whitening raised false
    picks at the twins' z faces (64 x 96 x 96, seeds 3/4/5: F4 1.0/1.0/1.0 -> 1.0/0.953/0.990)."""
    from cryocloud.reconstruct import HALVES

    p = ctx.config.match
    if p.whiten != "noise":
        return {"none": "none", "tomogram": "the tomogram's own power spectrum"}[p.whiten]
    if p.input == "tomogram":
        return HALVES_NOISE if all(ctx.exists("reconstruct", f"{h}.zarr") for h in HALVES) else "none (no half tomograms)"
    if null is None:
        return "none (no half tomograms)"
    return NULL_NOISE if ctx.config.denoise.method == "deconv" else "none (noise2noise input)"


def _searched(ctx: RunContext, name: str) -> Any:
    """The volume the match stage searches, at its pyramid level: the tomogram (`match.input:
    tomogram`) or the denoise stage's `denoise/<name>` (`tomogram.zarr`, or the `null.zarr` volume)."""
    from cryocloud.errors import ModelError
    from cryocloud.store import read_tomogram

    level = ctx.config.match.pyramid_level
    if ctx.config.match.input == "tomogram":
        return ctx.read_tomogram(level)
    if not ctx.exists("denoise", name):
        raise ModelError("match.input", f"is 'denoised' but {ctx.url('denoise', name)} does not exist; run the denoise stage first")
    return read_tomogram(ctx.url("denoise", name), level=level, storage_options=ctx.storage_options)


def tomogram_name(ctx: RunContext) -> str:
    """The tomogram's name in pick lists (rlnTomoName): the input's name (`batch.series_name`), "simulation" for a simulated run."""
    from cryocloud.pipeline.batch import series_name

    return series_name(ctx.config.input) if ctx.config.input else "simulation"


def _write_relion5(ctx: RunContext, particles: Any, name: str, shape_zyx: tuple[int, int, int], voxel_size_a: float) -> str:
    """`peaks/relion5/`: the picks as a RELION 5 set (cryocloud.store.relion5) with the tilt series the tomogram was
    reconstructed from (align stage's output: raw images and their alignment); returns what was written or why not."""
    from cryocloud.store import read_tilt_series
    from cryocloud.store.relion5 import RelionTomogram, write_relion5

    if ctx.results.get("input_tomogram") is not None:
        return "not written: the input is a portal tomogram (its tilt series' alignment is not known here)"
    so = ctx.storage_options
    ts = read_tilt_series(ctx.url("align", "tilt_series.zarr"), storage_options=so) if ctx.exists("align", "tilt_series.zarr") else ctx.results["tilt_series"]
    if ts.per_tilt("defocus_u") is None:
        return "not written: the tilt series has no per-tilt defocus (run the ctf stage)"
    write_relion5(ctx.url("peaks", "relion5"), particles, [RelionTomogram(name, ts, shape_zyx, voxel_size_a)], overwrite=True, storage_options=so)
    return "peaks/relion5/optimisation_set.star"


def stage_peaks(ctx: RunContext, overwrite: bool) -> None:
    """The config's `peaks` section is the PeaksJob, run on the match stage's score maps; fiducials of the
    searched tomogram and (`avoid_membranes`) the segment stage's membranes kept clear of picks."""
    from cryocloud.pick.evaluate import f_beta
    from cryocloud.pick.figures import write_score_figures
    from cryocloud.pick.formats import write_picks
    from cryocloud.pick.results import read_search
    from cryocloud.store import write_particles_csv

    p = ctx.config.peaks
    so = ctx.storage_options
    maps, _ = read_search(ctx.url("match"), storage_options=so)
    searched = ctx.read_tomogram(ctx.config.match.pyramid_level) if p.fiducial_sigma is not None else None
    membranes = _membranes(ctx, maps.shape) if p.avoid_membranes else None
    avoid = p.avoided(maps, searched=searched, mask=membranes)
    null = null_scores = None
    if p.n_false is not None and ctx.exists("match", "null", "match.json") and ctx.config.match.input == "denoised":
        null_maps, _ = read_search(ctx.url("match", "null"), storage_options=so)
        null, null_scores = p.null_threshold(maps, null_maps, source=ctx.url("match", "null")), null_maps.scores
    name = tomogram_name(ctx)
    cutoff = p.cutoff(maps, null_threshold=null)
    particles, threshold = p.run(maps, avoid=avoid, cutoff=cutoff, tomogram=name, object_name="ribosome")
    ctx.results["particles"] = particles
    write_particles_csv(particles, ctx.url("peaks", "particles.csv"), overwrite=True, storage_options=so)
    full = ctx.read_tomogram(0)  # centred coordinates: from the full-resolution tomogram's centre, whatever level was searched
    write_picks(particles, ctx.url("peaks", "particles.star"), "star", storage_options=so, pixel_size=full.pixel_size, shape_zyx=full.shape)
    relion5 = _write_relion5(ctx, particles, name, full.shape, full.pixel_size)
    write_score_figures(maps.scores, particles, threshold, ctx.url("peaks", "scores"), radius_a=maps.particle_radius_a, title="template matching",
                        null_scores=null_scores, null_threshold=null, storage_options=so)
    figures: dict[str, Any] = {"n_picks": len(particles), "threshold": None if threshold is None else round(threshold, 4),
                               "cutoff_method": cutoff.method, "cutoff": cutoff.as_dict(),
                               "null_threshold": None if null is None else round(null, 4),
                               "fiducial_voxels": len(avoid["fiducials"][0]) if "fiducials" in avoid else None,
                               "membrane_voxels": len(avoid["mask"][0]) if "mask" in avoid else None, "relion5": relion5}
    truth = ctx.results.get("truth_particles")
    if truth is not None:
        expected = truth.positions + ctx.results.get("volume_offset_a", np.zeros(3))
        score = f_beta(particles.positions, expected, tolerance=ctx.results["template_radius_a"] / 2)
        figures.update({k: round(v, 3) for k, v in score.items()})
    ctx.summary["peaks"] = figures
    ctx.figure("peaks", "score map slices with the picks", "peaks", "scores_slices.png")
    ctx.figure("peaks", "score histogram and cut-off", "peaks", "scores_histogram.png")
