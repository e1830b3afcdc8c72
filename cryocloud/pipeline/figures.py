"""Figures the other modules do not draw: a montage of a tilt series (PNG)."""

from __future__ import annotations

from typing import IO

import dask.array as da
import numpy as np
from matplotlib.figure import Figure

from cryocloud.model import TiltSeries


def tilt_montage_png(ts: TiltSeries, target: IO[bytes], *, panels: int = 12, size_px: int = 128) -> None:
    """PNG of up to `panels` tilts spread evenly over the angles, each mean-pooled to about
    `size_px` pixels a side and shown from its 1st to 99th percentile. Only those images are read."""
    angles = ts.tilt_angles
    order = np.argsort(angles, kind="stable")
    picks = order[np.unique(np.linspace(0, len(order) - 1, min(panels, len(order))).round().astype(int))]
    arr = da.asarray(ts.data.data)
    if arr.ndim == 4:  # movie frames: show the plain sum
        arr = arr.sum(axis=1)
    factor = max(1, int(np.ceil(max(arr.shape[1:]) / size_px)))
    images = arr[np.sort(picks)]
    ny, nx = (images.shape[1] // factor) * factor, (images.shape[2] // factor) * factor
    binned = da.coarsen(np.mean, images[:, :ny, :nx], {1: factor, 2: factor}).compute()
    by_index = dict(zip(np.sort(picks), binned))
    cols = min(6, len(picks))
    rows = int(np.ceil(len(picks) / cols))
    fig = Figure(figsize=(1.9 * cols, 1.9 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, i in zip(axes, picks):
        image = by_index[i]
        lo, hi = np.percentile(image, [1.0, 99.0])
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower", interpolation="nearest")
        ax.set_title(f"{angles[i]:.1f} deg", fontsize=8)
    fig.suptitle(f"tilt series: {ts.n_tilts} tilts, {ts.pixel_size:g} A pixels", fontsize=10)
    fig.savefig(target, format="png", dpi=90)
