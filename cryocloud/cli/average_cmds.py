"""`cryocloud average`: gold-standard subtomogram averaging of picked particles in a tomogram."""

from __future__ import annotations

from typing import Optional

import numpy as np
import typer
from rich.console import Console

from cryocloud.average import Poses, SearchSettings, Wedges, extract, refine
from cryocloud.average.figures import fsc_png, slices_png
from cryocloud.cli.app import app
from cryocloud.errors import ModelError
from cryocloud.model import Tomogram
from cryocloud.progress import compute
from cryocloud.store import open_url, read_mrc, read_particles_csv, read_tomogram, write_mrc, write_tomogram

console = Console(highlight=False, stderr=True)


def _read_volume(url: str) -> Tomogram:
    return read_mrc(url) if url.lower().endswith((".mrc", ".map", ".rec")) else read_tomogram(url)


@app.command()
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
    tomo = _read_volume(tomogram_url)
    particles = read_particles_csv(particles_url)
    if tomo.tilt_angles is None:
        raise ModelError("tilt_angles", "the tomogram carries no tilt angles; the missing wedge needs them", source=tomogram_url)
    sub = extract(tomo, particles.positions, box, binning=binning)
    data = compute(sub.data, description="extract")[0] * (-1.0 if invert else 1.0)
    ref = None
    if reference is not None:
        ref = np.asarray(read_mrc(reference).data.values, dtype=np.float32)
        if ref.shape != (box,) * 3:
            raise ModelError("reference", f"has shape {ref.shape}, expected ({box}, {box}, {box})", source=reference)
    n = len(particles)
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
    rows = "\n".join(f"{f:.6f},{1 / f if f > 0 else float('inf'):.3f},{c:.5f}" for f, c in zip(result.fsc.frequency, result.fsc.fsc))
    with open_url(f"{base}/fsc.csv", "w") as fh:
        fh.write("frequency_per_a,resolution_a,fsc\n" + rows + "\n")
    with open_url(f"{base}/average_slices.png", "wb") as fh:
        fh.write(slices_png(result.average, px))
    with open_url(f"{base}/fsc.png", "wb") as fh:
        fh.write(fsc_png({"half maps (masked)": result.fsc}))
    console.print(f"{n} particles, resolution {result.resolution_a:.1f} A (FSC 0.143), per iteration {[round(r, 1) for r in result.history]}")
