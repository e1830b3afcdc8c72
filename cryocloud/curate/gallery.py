"""Gallery pages: minislab images in a grid, each labelled with its index in the pick list and its
score, as PNG (one page per `columns` x `rows` images). Grey levels span the 1st..99th
percentile of each image; rows are drawn with y up (origin lower, as in cryocloud's slice figures)."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from cryocloud.plotting import subplots
from cryocloud.store import open_url, resolve


def page_png(images: np.ndarray, labels: Sequence[str], *, columns: int, title: str = "") -> bytes:
    """One PNG page of images (n, h, w) with a label above each."""
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = subplots(rows, columns, figsize=(1.3 * columns, 1.45 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, label in zip(axes.ravel(), images, labels):
        lo, hi = np.percentile(image, [1.0, 99.0])
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower", interpolation="nearest")
        ax.set_title(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def write_gallery(
    images: np.ndarray, indices: np.ndarray, scores: np.ndarray, url: str, *, columns: int = 10, rows: int = 8, title: str = "",
    storage_options: dict | None = None,
) -> list[str]:
    """Write `gallery_001.png`, ... under the folder `url`, images in the given order, each labelled
    "index score"; returns the page URLs."""
    out = resolve(url, storage_options)
    per_page = columns * rows
    pages = []
    for page, start in enumerate(range(0, len(images), per_page), start=1):
        part = slice(start, start + per_page)
        labels = [f"{i}  {s:.3g}" for i, s in zip(indices[part], scores[part])]
        data = page_png(np.asarray(images[part]), labels, columns=columns, title=f"{title} page {page} (index  score)".strip())
        target = out.child(f"gallery_{page:03d}.png").url
        with open_url(target, "wb", storage_options=storage_options) as f:
            f.write(data)
        pages.append(target)
    return pages
