"""A 2D particle stack for 2D classification: minislabs as an MRC stack (N, box, box) and a RELION
STAR file (data_optics + data_particles, rlnImageName = "k@stack" with k from 1) next to it.

The images are projections of reconstructed (CTF-affected, not CTF-corrected) tomogram slabs with
no per-image CTF: classify them with CTF correction off (RELION: --ctf off). Particle coordinates
are in voxels of the tomogram (rlnCoordinateX/Y/Z), rlnMicrographName is the pick's tomogram.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import starfile

from cryocloud.model import Microscope, Particles
from cryocloud.store import resolve, write_mrc
from cryocloud.store.textfiles import write_text


def stack_star(particles: Particles, stack_name: str, *, box: int, pixel_size_a: float, microscope: Microscope) -> str:
    """The STAR text for a stack of `len(particles)` images named `stack_name` (relative to the STAR file)."""
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnImagePixelSize": [pixel_size_a],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
            "rlnVoltage": [microscope.voltage_kv],
            "rlnSphericalAberration": [microscope.cs_mm],
            "rlnAmplitudeContrast": [microscope.amplitude_contrast],
        }
    )
    voxels = particles.positions / pixel_size_a
    table = pd.DataFrame(
        {
            "rlnImageName": [f"{k:06d}@{stack_name}" for k in range(1, len(particles) + 1)],
            "rlnMicrographName": particles.tomogram.astype(str),
            "rlnCoordinateX": voxels[:, 0],
            "rlnCoordinateY": voxels[:, 1],
            "rlnCoordinateZ": voxels[:, 2],
            "rlnAutopickFigureOfMerit": np.nan_to_num(particles.scores),
            "rlnOpticsGroup": 1,
        }
    )
    return starfile.to_string({"optics": optics, "particles": table})


def export_stack(
    images, particles: Particles, url: str, *, pixel_size_a: float, microscope: Microscope = Microscope(), name: str = "particles",
    overwrite: bool = False, storage_options: dict | None = None,
) -> tuple[str, str]:
    """Write `<url>/<name>.mrcs` (the images (N, box, box)) then `<url>/<name>.star`; returns both URLs."""
    out = resolve(url, storage_options)
    stack, star = out.child(f"{name}.mrcs"), out.child(f"{name}.star")
    write_mrc(images, stack.url, pixel_size=pixel_size_a, overwrite=overwrite, storage_options=storage_options)
    text = stack_star(particles, f"{name}.mrcs", box=int(images.shape[-1]), pixel_size_a=pixel_size_a, microscope=microscope)
    write_text(star.url, text, overwrite=overwrite, storage_options=storage_options)
    return stack.url, star.url
