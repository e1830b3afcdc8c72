"""Figures of a template-matching result (matplotlib, Agg): score-map slices with the picks, and the
score histogram with the cut-off (and the null search's histogram when there is one). Each function writes a PNG to an open binary file."""

from __future__ import annotations

from typing import IO

import numpy as np
from matplotlib.patches import Circle

from cryocloud.model import Particles
from cryocloud.plotting import subplots


def slice_planes(n_z: int, particles: Particles, pixel_size: float) -> list[int]:
    """The XY planes to show: the central one and the one through the best pick."""
    z_best = int(round(particles.positions[0, 2] / pixel_size)) if len(particles) else n_z // 2
    return sorted({n_z // 2, min(max(z_best, 0), n_z - 1)})


def score_slices_png(slices: dict[int, np.ndarray], particles: Particles, pixel_size: float, out: IO[bytes], *, radius_a: float, title: str = "") -> None:
    """XY score slices {z: (y, x) array} with the picks within `radius_a` of each slice circled."""
    fig, axes = subplots(1, len(slices), figsize=(5.5 * len(slices), 5), squeeze=False)
    vmax = max(float(np.max(s)) for s in slices.values()) or 1.0
    for ax, (z, plane) in zip(axes[0], sorted(slices.items())):
        image = ax.imshow(plane, cmap="magma", vmin=0, vmax=vmax, origin="lower")
        near = np.abs(particles.positions[:, 2] / pixel_size - z) <= radius_a / pixel_size
        for x, y in particles.positions[near, :2] / pixel_size:
            ax.add_patch(Circle((x, y), radius_a / pixel_size, fill=False, color="cyan", lw=1))
        ax.set_title(f"z = {z} ({int(near.sum())} picks near this slice)")
        ax.set_xlabel("x (voxels)")
        ax.set_ylabel("y (voxels)")
        fig.colorbar(image, ax=ax, shrink=0.8, label="score")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=100)


def score_histogram_png(counts: np.ndarray, edges: np.ndarray, threshold: float | None, out: IO[bytes], *, picks: Particles | None = None,
                        null_counts: np.ndarray | None = None, null_threshold: float | None = None, title: str = "") -> None:
    """Histogram (log counts; `counts` per bin between `edges`) of the score map with the cut-off
    and the picked scores; with `null_counts` (same bins) and `null_threshold`, the null search's
    histogram and empirical cut-off over it."""
    fig, ax = subplots(figsize=(6, 4))
    ax.stairs(np.maximum(counts, 0.5), edges, color="0.3", fill=True, label="score map (best per voxel)")
    if null_counts is not None:
        ax.stairs(np.where(null_counts > 0, null_counts, np.nan), edges, color="tab:orange", lw=1.5, label="null search (noise only)")
    ax.set_yscale("log")
    if null_threshold is not None:
        ax.axvline(null_threshold, color="tab:orange", ls="--", label=f"null's cut-off {null_threshold:.3f}")
    if threshold is not None:
        ax.axvline(threshold, color="red", label=f"cut-off {threshold:.3f}")
    if picks is not None and len(picks):
        ax.plot(picks.scores, np.ones(len(picks)), "c|", markersize=14, label=f"{len(picks)} picks")
    ax.set_xlabel("score")
    ax.set_ylabel("voxels")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=100)


def write_score_figures(
    scores, particles: Particles, threshold: float | None, stem_url: str, *, radius_a: float, title: str = "",
    null_scores=None, null_threshold: float | None = None, storage_options: dict | None = None,
) -> None:
    """Write `<stem>_slices.png` (score slices with the picks) and `<stem>_histogram.png` (scores
    with the cut-off, and those of `null_scores`, the null search's map, with its `null_threshold`
    when given) for a score map (xarray (z, y, x), lazy or not)."""
    import dask.array as da

    from cryocloud.model import pixel_size_of
    from cryocloud.store import open_url

    px = pixel_size_of(scores)
    planes = slice_planes(scores.shape[0], particles, px)
    slices = dict(zip(planes, (np.asarray(scores.data[z]) for z in planes)))
    maps = [m.data if isinstance(m.data, da.Array) else da.from_array(np.asarray(m.values)) for m in (scores, null_scores) if m is not None]
    lo, hi = da.compute(da.stack([m.min() for m in maps]).min(), da.stack([m.max() for m in maps]).max())
    histograms = [da.histogram(m, bins=200, range=(float(lo), float(hi) + 1e-6)) for m in maps]
    edges = histograms[0][1]
    counts = da.compute(*(h for h, _ in histograms))  # one pass over the score map and the null's
    with open_url(f"{stem_url}_slices.png", "wb", storage_options=storage_options) as f:
        score_slices_png(slices, particles, px, f, radius_a=radius_a, title=f"{title} scores")
    with open_url(f"{stem_url}_histogram.png", "wb", storage_options=storage_options) as f:
        score_histogram_png(counts[0], edges, threshold, f, picks=particles, null_counts=counts[1] if len(counts) > 1 else None,
                            null_threshold=null_threshold, title=f"{title}: {len(particles)} picks")
