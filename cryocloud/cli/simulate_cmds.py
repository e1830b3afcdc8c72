"""`cryocloud simulate`: write a simulated tilt series (and movies) with its ground truth."""

from __future__ import annotations

from typing import List, Optional

import typer
from rich.console import Console

from cryocloud.cli.app import app
from cryocloud.cli.options import guarded, storage_options
from cryocloud.simulate import preset, simulate, write_simulation
from cryocloud.simulate.config import PRESETS

console = Console(highlight=False, stderr=True)


@app.command("simulate")
@guarded(inputs=("structure",), outputs=("out_url",))
def simulate_command(
    out_url: str = typer.Argument(..., help="Output folder (local path, file:// or s3://)."),
    preset_name: str = typer.Option("toy", "--preset", help=f"Size preset: {', '.join(PRESETS)}."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same data."),
    scheme: Optional[str] = typer.Option(None, "--scheme", help="dose-symmetric, bidirectional or unidirectional."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Movie frames per tilt (0 = no movies)."),
    dose: Optional[float] = typer.Option(None, "--dose", help="Dose per tilt (e/A^2)."),
    tilt_step: Optional[float] = typer.Option(None, "--tilt-step", help="Tilt increment (degrees)."),
    particles: Optional[int] = typer.Option(None, "--particles", help="Number of particles."),
    structure: Optional[List[str]] = typer.Option(None, "--structure", help="mmCIF/PDB file, one per class (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="S3-compatible endpoint URL."),
) -> None:
    """Simulate a specimen and its tilt series from a preset (toy 64^3 ... realistic 1k x 1k x 300)."""
    overrides = {
        key: value
        for key, value in dict(
            seed=seed, scheme=scheme, frames_per_tilt=frames, dose_per_tilt=dose, tilt_step=tilt_step,
            n_particles=particles, structures=list(structure) if structure else None,
        ).items()
        if value is not None
    }
    cfg = preset(preset_name, **overrides)  # type: ignore[arg-type]
    result = simulate(cfg)
    ts = result.tilt_series
    console.print(
        f"simulating {cfg.shape_zyx} voxels at {cfg.pixel_size_a} A, {len(result.particles)} particles, "
        f"{ts.n_tilts} tilts ({cfg.scheme}), {cfg.frames_per_tilt} frames per tilt -> {out_url}"
    )
    options = storage_options(endpoint_url)
    write_simulation(result, out_url, overwrite=overwrite, storage_options=options)
    console.print(f"wrote {out_url}")
