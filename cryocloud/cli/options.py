"""fsspec storage options from the command-line flags every command shares.

`--endpoint-url` points at an S3-compatible endpoint; `--anon` reads public buckets without
credentials. Writes never go anonymous: public data are read-only.
"""

from __future__ import annotations


def storage_options(endpoint_url: str | None, *, anon: bool = False) -> dict | None:
    """Storage options for one location, or None when no flag was given."""
    options: dict = {}
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    if anon:
        options["anon"] = True
    return options or None


def read_write_options(endpoint_url: str | None, anon: bool) -> tuple[dict | None, dict | None]:
    """(read, write) storage options: reads may be anonymous, writes use credentials."""
    return storage_options(endpoint_url, anon=anon), storage_options(endpoint_url)
