"""Figures of an average: orthogonal central slices, and the FSC curve with the resolution marked (PNG bytes)."""

from __future__ import annotations

import io

import numpy as np

from cryocloud.average.fsc import FscCurve
from cryocloud.plotting import subplots


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def slices_png(volume: np.ndarray, pixel_size_a: float, title: str = "average") -> bytes:
    """Central XY, XZ and YZ slices of a map (z, y, x)."""
    v = np.asarray(volume, dtype=np.float32)
    c = [n // 2 for n in v.shape]
    fig, axes = subplots(1, 3, figsize=(9, 3.2))
    for ax, (img, name) in zip(axes, ((v[c[0]], "XY (z = centre)"), (v[:, c[1]], "XZ (y = centre)"), (v[:, :, c[2]], "YZ (x = centre)"))):
        ax.imshow(img, cmap="gray", origin="lower")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title} ({pixel_size_a:g} A voxels)", fontsize=10)
    return _png(fig)


def fsc_png(curves: dict[str, FscCurve], threshold: float = 0.143) -> bytes:
    """FSC curves against spatial frequency (1/A), the threshold line and each curve's resolution."""
    fig, ax = subplots(figsize=(6, 3.6))
    for label, curve in curves.items():
        res = curve.resolution(threshold)
        ax.plot(curve.frequency[1:], curve.fsc[1:], label=f"{label}: {res:.1f} A")
        ax.axvline(1.0 / res, ls=":", lw=0.8, color=ax.lines[-1].get_color())
    ax.axhline(threshold, color="k", lw=0.8, ls="--")
    ax.set_xlabel("spatial frequency (1/A)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.02)
    ax.legend(fontsize=8)
    return _png(fig)
