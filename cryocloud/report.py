"""Figures: PNG snapshots of volumes for reports and the CLI."""

from __future__ import annotations

from typing import IO, Any

import numpy as np
from matplotlib.figure import Figure


def display_range(image: np.ndarray) -> tuple[float, float]:
    """Grey-level limits of an image: its 1st and 99th percentiles (a unit either side of a constant image)."""
    lo, hi = np.percentile(image, [1.0, 99.0])
    return (float(lo), float(hi)) if hi > lo else (float(lo) - 1.0, float(lo) + 1.0)


def save_slices_png(volume: Any, target: str | IO[bytes], title: str = "") -> None:
    """Save the central XY (z = nz // 2) and XZ (y = ny // 2) slices of a volume (z, y, x) as PNG.

    `volume` may be numpy, Dask or xarray: only the two slices are computed. `target` is a local
    path or a binary file object (e.g. from `cryocloud.store.open_url(url, "wb")`). Grey levels
    span the 1st..99th percentile of each slice; pixels are square.
    """
    shape = tuple(volume.shape)
    if len(shape) != 3:
        raise ValueError(f"expected a volume (z, y, x), got shape {shape}")
    nz, ny, _ = shape
    xy = np.asarray(volume[nz // 2, :, :], dtype=np.float32)
    xz = np.asarray(volume[:, ny // 2, :], dtype=np.float32)
    fig = Figure(figsize=(8, 8 * (ny + nz) / shape[2] + 0.6), layout="constrained")
    axes = fig.subplots(2, 1, height_ratios=[ny, nz])
    for ax, image, label in ((axes[0], xy, f"XY, z = {nz // 2}"), (axes[1], xz, f"XZ, y = {ny // 2}")):
        lo, hi = display_range(image)
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(target, format="png", dpi=100)
