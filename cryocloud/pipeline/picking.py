"""Stages that find particles: `match` (template matching on a pyramid level of the tomogram, whitened
by the noise spectrum of the even/odd half tomograms when they exist and `match.whiten` is on) and
`peaks` (picks as CSV and RELION 5 STAR, scored against the simulated particles when known)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cryocloud.pipeline.context import RunContext


def stage_match(ctx: RunContext, overwrite: bool) -> None:
    from cryocloud.pick import MatchSettings, TiltWeighting, map_from_model, prepare_template, read_map, uniform_rotations
    from cryocloud.pick.results import run_match
    from cryocloud.pick.spectrum import noise_spectrum
    from cryocloud.pick.template import check_fits
    from cryocloud.reconstruct import HALVES
    from cryocloud.simulate.atomic import BUNDLED_STRUCTURE
    from cryocloud.store import read_tomogram

    p = ctx.config.match
    so = ctx.storage_options
    url = ctx.url("match")
    tomo = ctx.read_tomogram(p.pyramid_level)
    px = tomo.pixel_size
    path = p.template or str(ctx.results.get("structure") or BUNDLED_STRUCTURE)
    if path.endswith((".mrc", ".map", ".em", ".rec")):
        volume, template_px = read_map(path, voxel_size=p.template_voxel_size_a)
    else:
        volume, template_px = map_from_model(path, px), px
    check_fits(volume.shape, template_px, tomo.shape, px, source=path)  # before resampling allocates it
    template = prepare_template(volume, template_px, px)
    rotations = uniform_rotations(p.angular_increment_deg, p.symmetry)
    tilts = TiltWeighting.from_tilt_series(ctx.results["tilt_series"])
    settings = MatchSettings(resolution_a=p.resolution_a or 2.5 * px, subvolume=p.subvolume)
    with_halves = p.whiten and all(ctx.exists("reconstruct", f"{h}.zarr") for h in HALVES)
    whitening = "noise of the even/odd halves" if with_halves else "none (no half tomograms)" if p.whiten else "none"
    if overwrite or not ctx.exists("match", "match.json"):
        if with_halves:
            halves = [read_tomogram(ctx.url("reconstruct", f"{h}.zarr"), level=p.pyramid_level, storage_options=so) for h in HALVES]
            settings = replace(settings, whiten=True, noise=noise_spectrum(*halves))
        run_match(tomo, template, rotations, url, tilts=tilts, settings=settings, overwrite=True, storage_options=so,
                  description={"template": path, "symmetry": p.symmetry, "pyramid_level": p.pyramid_level, "whitening": whitening})
    ctx.results["template_radius_a"] = template.radius * px
    ctx.results["particle_radius_a"] = template.particle_radius * px
    ctx.results["match_origin_a"] = np.array([float(tomo.data.coords[d].values[0]) for d in "xyz"])
    ctx.summary["match"] = {"n_orientations": int(len(rotations)), "voxel_size_a": px, "template": Path(path).name,
                            "whitening": whitening}


def stage_peaks(ctx: RunContext, overwrite: bool) -> None:
    from cryocloud.pick.evaluate import f_beta
    from cryocloud.pick.figures import write_score_figures
    from cryocloud.pick.formats import write_picks
    from cryocloud.pick.peaks import extract_peaks
    from cryocloud.pick.results import block_moments_of, read_match
    from cryocloud.segment.fiducials import fiducial_voxels
    from cryocloud.store import write_particles_csv

    p = ctx.config.peaks
    so = ctx.storage_options
    scores, orientation, rotations, summary = read_match(ctx.url("match"), storage_options=so)
    particle_radius = ctx.results["particle_radius_a"]
    gold = None
    if p.fiducial_sigma is not None:
        searched = ctx.read_tomogram(ctx.config.match.pyramid_level)
        gold = fiducial_voxels(searched.data.data, sigma=p.fiducial_sigma)
    particles, threshold = extract_peaks(
        scores, orientation, rotations, radius_a=p.min_distance_a or 2.0 * particle_radius, n_false=p.n_false, number=p.number,
        score_std=summary["score_std"], n_search=summary["n_search"], block_moments=block_moments_of(summary, ctx.url("match", "match.json")),
        local_sigma=p.local_sigma, tomogram="tomogram", class_name="ribosome", avoid_zyx=gold, avoid_radius_a=particle_radius,
    )
    particles = replace(particles, positions=particles.positions + ctx.results["match_origin_a"])  # binned-level voxel centres
    ctx.results["particles"] = particles
    write_particles_csv(particles, ctx.url("peaks", "particles.csv"), overwrite=True, storage_options=so)
    write_picks(particles, ctx.url("peaks", "particles.star"), "star", storage_options=so,
                pixel_size=float(summary["voxel_size"]), shape_zyx=tuple(summary["shape_zyx"]))
    write_score_figures(scores, particles, threshold, ctx.url("peaks", "scores"), radius_a=particle_radius, title="template matching",
                        storage_options=so)
    figures: dict[str, Any] = {"n_picks": len(particles), "threshold": None if threshold is None else round(threshold, 4),
                               "fiducial_voxels": None if gold is None else len(gold)}
    truth = ctx.results.get("truth_particles")
    if truth is not None:
        expected = truth.positions + ctx.results.get("volume_offset_a", np.zeros(3))
        score = f_beta(particles.positions, expected, tolerance=ctx.results["template_radius_a"] / 2)
        figures.update({k: round(v, 3) for k, v in score.items()})
    ctx.summary["peaks"] = figures
    ctx.figure("peaks", "score map slices with the picks", "peaks", "scores_slices.png")
    ctx.figure("peaks", "score histogram and cut-off", "peaks", "scores_histogram.png")
