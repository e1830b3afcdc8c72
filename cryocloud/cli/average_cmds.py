"""`cryocloud average`: gold-standard subtomogram averaging of picked particles in a tomogram."""

from __future__ import annotations

from typing import Optional

import numpy as np
import typer
from rich.console import Console

from cryocloud.average import Poses, SearchSettings, Wedges, extract, refine
from cryocloud.average.figures import fsc_png, slices_png
from cryocloud.cli.app import app
from cryocloud.cli.options import guarded
from cryocloud.errors import ModelError
from cryocloud.model import Tomogram
from cryocloud.pick.template import check_template
from cryocloud.progress import compute
from cryocloud.store import open_url, read_mrc, read_particles_csv, read_volume, require_contrast, write_mrc, write_tomogram

console = Console(highlight=False, stderr=True)


@app.command()
@guarded(inputs=("tomogram_url", "particles_url", "reference"), outputs=("out_dir",))
def average(
    tomogram_url: str = typer.Argument(..., help="Tomogram, OME-Zarr or MRC."),
    particles_url: str = typer.Argument(..., help="Particles CSV (x, y, z in A; r00..r22 rotations)."),
    out_dir: str = typer.Argument(..., help="Output folder: half maps and average (MRC and OME-Zarr), fsc.csv, figures."),
    box: int = typer.Option(32, "--box", help="Box edge in (binned) voxels."),
    binning: int = typer.Option(1, "--binning", help="Mean-pool the tomogram by this factor when extracting."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Starting reference MRC (default: each half's own average)."),
    iterations: int = typer.Option(2, "--iterations"),
    increment: float = typer.Option(8.0, "--increment", help="First angular step (deg)."),
    max_angle: Optional[float] = typer.Option(16.0, "--max-angle", help="Local search radius (deg); 0 = global search."),
    fine_increment: float = typer.Option(2.0, "--fine-increment", help="Finest angular step (deg)."),
    max_shift: float = typer.Option(30.0, "--max-shift", help="Translational search radius (A)."),
    symmetry: str = typer.Option("C1", "--symmetry", help="C1, Cn, Dn, T or O."),
    invert: bool = typer.Option(True, "--invert/--no-invert", help="Invert contrast (dark protein in the tomogram)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the half-set split."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Extract, align and average particles with two independent halves; report the FSC resolution."""
    tomo = read_volume(tomogram_url)
    particles = read_particles_csv(particles_url)
    if tomo.tilt_angles is None:
        raise ModelError("tilt_angles", "the tomogram carries no tilt angles; the missing wedge needs them", source=tomogram_url)
    n = len(particles)
    if n < 2:
        raise ModelError("positions", f"{n} particles given; gold-standard averaging needs at least 2 (one per half set)", source=particles_url)
    particles.require_inside(tomo.shape, tomo.pixel_size, source=particles_url)
    ref = None
    if reference is not None:
        ref = check_template(read_mrc(reference).data.values, source=reference, field="reference")
        if ref.shape != (box,) * 3:
            raise ModelError("reference", f"has shape {ref.shape}, expected ({box}, {box}, {box})", source=reference)
    sub = extract(tomo, particles.positions, box, binning=binning)
    (data,) = compute(sub.data, description="extract")
    require_contrast(data, tomogram_url, what="the tomogram around the particles")
    data = data * (-1.0 if invert else 1.0)
    settings = SearchSettings(increment, None if not max_angle else max_angle, fine_increment, max_shift, None, symmetry)
    result = refine(
        data, sub.pixel_size_a, Wedges.single(tomo.tilt_angles, n), Poses(particles.rotations, sub.offsets_a, np.full(n, np.nan)),
        settings, iterations=iterations, reference=ref, seed=seed,
    )
    px = sub.pixel_size_a
    base = out_dir.rstrip("/")
    for name, volume in (("half1", result.half_maps[0]), ("half2", result.half_maps[1]), ("average", result.average)):
        write_mrc(volume, f"{base}/{name}.mrc", pixel_size=px, overwrite=overwrite)
    write_tomogram(Tomogram.from_array(result.average, pixel_size=px, microscope=tomo.microscope), f"{base}/average.zarr", levels=1, overwrite=overwrite)
    with open_url(f"{base}/fsc.csv", "w") as fh:
        fh.write(result.fsc.to_csv())
    with open_url(f"{base}/average_slices.png", "wb") as fh:
        fh.write(slices_png(result.average, px))
    with open_url(f"{base}/fsc.png", "wb") as fh:
        fh.write(fsc_png({"half maps (masked)": result.fsc}))
    console.print(f"{n} particles, resolution {result.resolution_a:.1f} A (FSC 0.143), per iteration {[round(r, 1) for r in result.history]}")


@app.command("average-relion")
@guarded(inputs=("particles_star", "tomograms_star", "compare"), outputs=("out_dir",))
def average_relion(
    particles_star: str = typer.Argument(..., help="RELION-5 optimisation set STAR (or particle STAR with --tomograms)."),
    out_dir: str = typer.Argument(..., help="Output folder: half maps and average (MRC), fsc.csv, figures."),
    tomograms_star: Optional[str] = typer.Option(None, "--tomograms", help="Tomograms STAR (when a particle STAR is given)."),
    compare: Optional[str] = typer.Option(None, "--compare", help="A map (MRC) of the same particles to report the FSC against."),
    box: Optional[int] = typer.Option(
        None, "--box", help="Box edge (tilt-series pixels) cut from the tilt images, for a set without 2D stacks (picks: no rlnImageName)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the half-set split."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Reconstruct a RELION-5 / WarpTools particle set at its poses: gold-standard half maps, CTF-corrected, FSC
    resolution. The particles' 2D tilt stacks are used when the set has them; otherwise (picks, e.g. `cryocloud
    extract-peaks --format relion5`) each particle is cut from its tilt images (rlnMicrographName) with --box."""
    from cryocloud.average.fsc import fsc
    from cryocloud.average.refine import split_halves
    from cryocloud.average.relion_particles import read_relion_particles, tilt_series_of
    from cryocloud.average.subtilt import from_relion, from_relion_tilt_series, reconstruct
    from cryocloud.store.relion5 import read_micrographs

    rp = read_relion_particles(particles_star, tomograms_star)
    if rp.stack_paths is None:
        if box is None:
            raise ModelError("box", "the set has no 2D stacks (no rlnImageName); give --box to cut the particles from the tilt images", source=particles_star)
        series = {}
        for name, ts in rp.tomograms.items():
            if ts.micrograph_names is None:
                raise ModelError("rlnMicrographName", f"tilt series {name} lists no tilt images", source=particles_star)
            series[name] = tilt_series_of(ts, read_micrographs(ts.micrograph_names, ts.base))
        ti = from_relion_tilt_series(rp, series, box)
    else:
        t_max = max(ts.n_tilts for ts in rp.tomograms.values())
        stacks = np.zeros((len(rp.stack_paths), t_max, rp.box, rp.box), dtype=np.float32)
        for i, path in enumerate(rp.stack_paths):
            stack = np.asarray(read_mrc(str(path)).data.values, dtype=np.float32)
            if stack.shape[1:] != (rp.box, rp.box) or stack.shape[0] > t_max:
                raise ModelError("rlnImageName", f"{path} holds images of shape {stack.shape}, expected up to {t_max} of {rp.box}x{rp.box}", source=particles_star)
            stacks[i, : stack.shape[0]] = stack
        ti = from_relion(rp, stacks)
    n = len(rp.particles)
    poses = Poses(rp.particles.rotations, np.zeros((n, 3)), np.full(n, np.nan))
    half = split_halves(n, seed)
    maps = [reconstruct(ti.subset(half == h), poses.subset(half == h)) for h in (0, 1)]
    avg = reconstruct(ti, poses)
    px = rp.pixel_size_a
    curves = {"half maps": fsc(maps[0], maps[1], px)}
    if compare is not None:
        other = np.asarray(read_mrc(compare).data.values, dtype=np.float32)
        if other.shape != avg.shape:
            raise ModelError("compare", f"has shape {other.shape}, expected {avg.shape}", source=compare)
        curves["average vs " + compare.rstrip("/").split("/")[-1]] = fsc(avg, other, px)
    base = out_dir.rstrip("/")
    for name, volume in (("half1", maps[0]), ("half2", maps[1]), ("average", avg)):
        write_mrc(volume, f"{base}/{name}.mrc", pixel_size=px, overwrite=overwrite)
    with open_url(f"{base}/fsc.csv", "w") as fh:
        fh.write(curves["half maps"].to_csv())
    with open_url(f"{base}/average_slices.png", "wb") as fh:
        fh.write(slices_png(avg, px))
    with open_url(f"{base}/fsc.png", "wb") as fh:
        fh.write(fsc_png(curves))
    report = ", ".join(f"{k}: FSC 0.143 at {c.resolution(0.143):.1f} A, 0.5 at {c.resolution(0.5):.1f} A" for k, c in curves.items())
    console.print(f"{n} particles; {report}")
