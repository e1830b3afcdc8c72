"""Ranking picks: by score, and by agreement with a first average.

Agreement: each particle's box (cryocloud.average.extract) is resampled into its reference frame
(`minislab.to_particle_frame`, using the pick's rotation); the `top_n` best-scoring particles are
averaged; each particle's agreement is the Pearson correlation, inside a sphere of `mask_radius_a`,
between its box and that average (for the top_n themselves the average of the others, so they do
not correlate with their own noise). Only the (N,) correlations and the (b, b, b) average are
computed.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from cryocloud.average import extract
from cryocloud.curate.minislab import to_particle_frame
from cryocloud.errors import ModelError
from cryocloud.model import Particles, Tomogram


def rank_by_score(particles: Particles) -> np.ndarray:
    """Indices, best score first (NaN scores last, ties in input order)."""
    scores = np.where(np.isfinite(particles.scores), particles.scores, -np.inf)
    return np.argsort(-scores, kind="stable")


def _aligned_block(block: np.ndarray, rotations: np.ndarray, block_info=None) -> np.ndarray:
    start = block_info[0]["array-location"][0][0]
    return np.stack([to_particle_frame(v, rotations[start + i]) for i, v in enumerate(block)])


def _correlations(block: np.ndarray, total: np.ndarray, top: np.ndarray, n_top: int, mask: np.ndarray, block_info=None) -> np.ndarray:
    start = block_info[0]["array-location"][0][0]
    out = np.empty(len(block))
    for i, v in enumerate(block):
        ref = (total - v) / (n_top - 1) if top[start + i] else total / n_top
        a, b = v[mask] - v[mask].mean(), ref[mask] - ref[mask].mean()
        denominator = np.sqrt((a * a).sum() * (b * b).sum())
        out[i] = (a * b).sum() / denominator if denominator > 0 else 0.0
    return out


def agreement_with_average(
    tomogram: Tomogram, particles: Particles, *, box: int, top_n: int = 20, mask_radius_a: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(correlation (N,) of each particle with the average of the top_n by score, that average (b, b, b))."""
    if not 2 <= top_n <= len(particles):
        raise ModelError("top_n", f"expected 2 <= top_n <= {len(particles)} particles, got {top_n}")
    px = tomogram.pixel_size
    radius = (box // 2 - 1) if mask_radius_a is None else mask_radius_a / px
    cubes = extract(tomogram, particles.positions, box).data
    aligned = cubes.map_blocks(_aligned_block, particles.rotations, dtype=np.float32).persist()
    top = np.zeros(len(particles), bool)
    top[rank_by_score(particles)[:top_n]] = True
    total = np.asarray(aligned[np.flatnonzero(top)].sum(axis=0, dtype=np.float64).compute())
    zz, yy, xx = np.ogrid[:box, :box, :box]
    c = box // 2
    mask = (zz - c) ** 2 + (yy - c) ** 2 + (xx - c) ** 2 <= radius**2
    corr = aligned.map_blocks(_correlations, total, top, top_n, mask, drop_axis=(1, 2, 3), dtype=np.float64)
    return np.asarray(da.compute(corr)[0]), (total / top_n).astype(np.float32)


def rank_by_agreement(correlations: np.ndarray) -> np.ndarray:
    """Indices, best agreement first."""
    return np.argsort(-np.asarray(correlations), kind="stable")
