"""Segmentation overlay figure: tomogram slices with the membrane labels (and the truth) drawn on them."""

from __future__ import annotations

from typing import IO, Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from scipy import ndimage

from cryocloud.report import display_range

LABEL_COLOURS = ListedColormap(["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"])


def _slices(volume: Any, z: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(volume[z, :, :]), np.asarray(volume[:, y, :])


def save_overlay_png(tomogram: Any, labels: Any, target: str | IO[bytes], *, truth: Any = None, title: str = "") -> None:
    """An XY and an XZ slice of a tomogram (z, y, x) in grey (Gaussian low-pass of 1 voxel, for visibility)
    with the labels in colour (one colour per membrane id, cycling) and, when given, the truth mask
    outlined in yellow. The slices are the z and y planes holding the most labelled voxels (the
    centre planes when nothing is labelled).

    Inputs may be numpy, Dask or xarray: the per-plane label counts and the two slices are computed. `target`: a local path
    or a binary file object (e.g. `cryocloud.store.open_url(url, "wb")`).
    """
    shape = tuple(tomogram.shape)
    if len(shape) != 3 or tuple(labels.shape) != shape:
        raise ValueError(f"expected a tomogram and labels of the same (z, y, x) shape, got {shape} and {tuple(labels.shape)}")
    nz, ny, nx = shape
    data = getattr(labels, "data", labels)
    per_z, per_y = (np.asarray((data > 0).sum(axis=axes)) for axes in ((1, 2), (0, 2)))
    z, y = (int(np.argmax(c)) if c.any() else n // 2 for c, n in ((per_z, nz), (per_y, ny)))
    grey = tuple(ndimage.gaussian_filter(g.astype(np.float32), 1.0) for g in _slices(tomogram, z, y))
    lab = _slices(labels, z, y)
    true = _slices(truth, z, y) if truth is not None else (None, None)
    fig = Figure(figsize=(8, 8 * (ny + nz) / nx + 0.6), layout="constrained")
    axes = fig.subplots(2, 1, height_ratios=[ny, nz])
    for ax, image, mask, ref, name in zip(axes, grey, lab, true, (f"XY, z = {z}", f"XZ, y = {y}")):
        lo, hi = display_range(image)
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
        ids = np.where(mask > 0, (mask.astype(np.int64) - 1) % LABEL_COLOURS.N, np.nan)
        ax.imshow(ids, cmap=LABEL_COLOURS, vmin=0, vmax=LABEL_COLOURS.N - 1, alpha=0.45, origin="lower", interpolation="nearest")
        if ref is not None and ref.any():
            ax.contour(ref.astype(float), levels=[0.5], colors="yellow", linewidths=0.6, origin="lower")
        ax.set_title(f"{name}: {len(np.unique(mask[mask > 0]))} membranes in view", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(target, format="png", dpi=100)
