"""Particle tables as CSV: one row per particle with x, y, z (A, tomogram frame), score,
tomogram, class_name and the rotation matrix r00..r22 (see `Particles.to_dataframe`)."""

from __future__ import annotations

import io
import os

import pandas as pd

from cryocloud.errors import ModelError, StoreError
from cryocloud.model import Particles
from cryocloud.store.textfiles import read_text, write_text


def write_particles_csv(
    particles: Particles, url: str | os.PathLike, *, overwrite: bool = False, storage_options: dict | None = None
) -> None:
    """Write particles as CSV (full float precision)."""
    write_text(url, particles.to_dataframe().to_csv(index=False, float_format="%.10g"), overwrite=overwrite, storage_options=storage_options)


def read_particles_csv(url: str | os.PathLike, *, storage_options: dict | None = None) -> Particles:
    """Read a particle CSV; needs x, y, z columns (A), rotation columns r00..r22 optional."""
    loc, text = read_text(url, storage_options=storage_options)
    try:
        df = pd.read_csv(io.StringIO(text), dtype={"tomogram": str, "class_name": str}, keep_default_na=False)
        return Particles.from_dataframe(df, source=loc.url)
    except ModelError as exc:
        raise StoreError(loc.url, exc.problem, field=exc.field) from exc
    except (ValueError, pd.errors.ParserError) as exc:
        raise StoreError(loc.url, f"is not a readable particle table: {exc}") from exc
