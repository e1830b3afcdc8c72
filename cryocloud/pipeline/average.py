"""The `average` stage: gold-standard subtomogram averaging of the picks on the searched pyramid
level (half maps and average as MRC, fsc.csv, slices and FSC figures); resumable on average.mrc."""

from __future__ import annotations

import json

import numpy as np

from cryocloud.pipeline.context import RunContext

SLICES = "average: central XY, XZ and YZ slices"
FSC = "half-map FSC (0.143 marked)"


def stage_average(ctx: RunContext, overwrite: bool) -> None:
    from cryocloud.average import Poses, SearchSettings, Wedges, extract, refine
    from cryocloud.average.figures import fsc_png, slices_png
    from cryocloud.progress import compute
    from cryocloud.store import write_mrc
    from cryocloud.store.textfiles import read_text, write_text

    p = ctx.config.average
    so = ctx.storage_options
    particles = ctx.results.get("particles")
    if particles is None or len(particles) < p.min_particles:
        n = 0 if particles is None else len(particles)
        ctx.summary["average"] = {"skipped": f"{n} picks; averaging needs at least {p.min_particles} (average.min_particles)"}
        return
    if overwrite or not ctx.exists("average", "average.json"):
        tomo = ctx.read_tomogram(ctx.config.match.pyramid_level)
        sub = extract(tomo, particles.positions, p.box)
        data = compute(sub.data, description="extract particles")[0] * -1.0  # proteins are dark in the tomogram
        n = len(particles)
        settings = SearchSettings(p.increment_deg, p.max_angle_deg, p.fine_increment_deg, p.max_shift_a, None, p.symmetry)
        result = refine(data, sub.pixel_size_a, Wedges.single(ctx.results["tilt_series"].tilt_angles, n),
                        Poses(particles.rotations, sub.offsets_a, np.full(n, np.nan)), settings, iterations=p.iterations)
        px = sub.pixel_size_a
        for name, volume in (("half1", result.half_maps[0]), ("half2", result.half_maps[1]), ("average", result.average)):
            write_mrc(volume, ctx.url("average", f"{name}.mrc"), pixel_size=px, overwrite=True, storage_options=so)
        write_text(ctx.url("average", "fsc.csv"), result.fsc.to_csv(), overwrite=True, storage_options=so)
        ctx.figure("average", SLICES, "average", "average_slices.png", draw=lambda fh: fh.write(slices_png(result.average, px)),
                   overwrite=True)
        ctx.figure("average", FSC, "average", "fsc.png", draw=lambda fh: fh.write(fsc_png({"half maps (masked)": result.fsc})),
                   overwrite=True)
        figures = {"n_particles": n, "box": p.box, "voxel_size_a": round(px, 3), "resolution_a": round(result.resolution_a, 2),
                   "resolution_per_iteration_a": [round(r, 2) for r in result.history], "parameters": p.model_dump()}
        write_text(ctx.url("average", "average.json"), json.dumps(figures, indent=1), overwrite=True, storage_options=so)
    ctx.summary["average"] = json.loads(read_text(ctx.url("average", "average.json"), storage_options=so)[1])
    ctx.figure("average", SLICES, "average", "average_slices.png")
    ctx.figure("average", FSC, "average", "fsc.png")
