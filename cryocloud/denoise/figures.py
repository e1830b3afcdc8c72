"""Before/after figures of denoising: the central XY and XZ slices of each volume, one PNG each."""

from __future__ import annotations

from typing import Any

from cryocloud.report import save_slices_png
from cryocloud.store import open_url


def write_before_after(before: Any, after: Any, stem_url: str, *, label: str, storage_options: dict | None = None) -> list[str]:
    """Write `<stem>_before.png` and `<stem>_after.png` (volumes (z, y, x), numpy/Dask/xarray); returns their URLs."""
    urls = []
    for volume, tag in ((before, "before"), (after, f"after {label}")):
        url = f"{stem_url}_{tag.split()[0]}.png"
        with open_url(url, "wb", storage_options=storage_options) as fh:
            save_slices_png(volume, fh, title=f"{tag}")
        urls.append(url)
    return urls
