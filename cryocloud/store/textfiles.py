"""Small text/table files at URLs: read them whole, write them whole, never clobber by accident."""

from __future__ import annotations

import os

from cryocloud.errors import OutputExistsError
from cryocloud.store.location import Location, open_url, resolve


def read_text(url: str | os.PathLike, *, storage_options: dict | None = None) -> tuple[Location, str]:
    """(location, text) of a small UTF-8 text file; StoreError if missing."""
    loc = resolve(url, storage_options)
    with open_url(loc.url, "rt", storage_options=loc.storage_options) as f:
        return loc, f.read()


def write_text(url: str | os.PathLike, text: str, *, overwrite: bool = False, storage_options: dict | None = None) -> Location:
    """Write a small text file; OutputExistsError when it exists and `overwrite` is False."""
    loc = resolve(url, storage_options)
    if not overwrite and loc.exists():
        raise OutputExistsError(f"{loc.url}: exists already; pass overwrite=True (--overwrite) to replace it")
    with open_url(loc.url, "wt", storage_options=loc.storage_options) as f:
        f.write(text)
    return loc
