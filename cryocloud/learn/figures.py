"""Figures of learned picking (PNG bytes): the training curve and a prediction overlay."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.patches import Circle

from cryocloud.model import Particles
from cryocloud.plotting import subplots


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def training_curve_png(losses: np.ndarray, title: str = "training") -> bytes:
    """Loss per step (thin) and its running mean over 10 steps (thick)."""
    losses = np.asarray(losses, dtype=np.float64)
    fig, ax = subplots(figsize=(6, 3.5))
    steps = np.arange(1, losses.size + 1)
    ax.plot(steps, losses, color="0.7", lw=0.8, label="loss per step")
    if losses.size >= 10:
        ax.plot(steps[9:], np.convolve(losses, np.ones(10) / 10, mode="valid"), color="C0", lw=2, label="mean of 10 steps")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (weighted cross-entropy + Dice)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def overlay_png(image: np.ndarray, probability: np.ndarray, picks: Particles, z: int, pixel_size_a: float, radius_a: float, title: str = "") -> bytes:
    """An XY slice (y, x) of the tomogram and of the probability map, with the picks within the
    particle radius of the slice circled (centre in A -> voxels)."""
    fig, axes = subplots(1, 2, figsize=(11, 5.2))
    lo, hi = np.percentile(image, [1.0, 99.0])
    axes[0].imshow(image, cmap="gray", vmin=lo, vmax=hi, origin="lower")
    axes[1].imshow(image, cmap="gray", vmin=lo, vmax=hi, origin="lower")
    shown = axes[1].imshow(np.ma.masked_less(probability, 0.05), cmap="magma", vmin=0, vmax=1, alpha=0.6, origin="lower")
    fig.colorbar(shown, ax=axes[1], shrink=0.8, label="particle probability")
    near = np.abs(picks.positions[:, 2] / pixel_size_a - z) <= radius_a / pixel_size_a
    for ax in axes:
        for x, y in picks.positions[near, :2] / pixel_size_a:
            ax.add_patch(Circle((x, y), radius_a / pixel_size_a, fill=False, color="cyan", lw=1))
        ax.set_xlabel("x (voxels)")
        ax.set_ylabel("y (voxels)")
    axes[0].set_title(f"tomogram, z = {z}")
    axes[1].set_title(f"probability and picks ({int(near.sum())} near this slice)")
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)
