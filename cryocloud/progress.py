"""Computing Dask collections with a visible progress bar.

With a distributed client (cryocloud.cluster.connect) the bar follows the futures on the
cluster and the dashboard link is printed once; without one, Dask's local ProgressBar is used
(`dask.diagnostics.ProgressBar` only sees local schedulers). `quiet=True` computes silently.
"""

from __future__ import annotations

import sys
from typing import Any

import dask
from dask.diagnostics import ProgressBar

_announced_dashboards: set[str] = set()


def current_client() -> Any | None:
    """The active distributed client, or None when Dask runs on a local scheduler."""
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def announce_dashboard(client: Any) -> None:
    """Print the dashboard link of `client` once per process (to stderr)."""
    link = client.dashboard_link
    if link not in _announced_dashboards:
        _announced_dashboards.add(link)
        print(f"Dask dashboard: {link}", file=sys.stderr)


def compute(*collections: Any, description: str = "", quiet: bool = False) -> tuple:
    """Compute Dask collections (like dask.compute) showing progress; returns the results tuple."""
    client = current_client()
    if client is None:
        if quiet:
            return dask.compute(*collections)
        if description:
            print(description, file=sys.stderr)
        with ProgressBar(out=sys.stderr, minimum=1.0):
            return dask.compute(*collections)
    from distributed import progress

    futures = client.compute(list(collections))
    if not quiet:
        announce_dashboard(client)
        if description:
            print(description, file=sys.stderr)
        progress(futures, notebook=False)
        print(file=sys.stderr)
    return tuple(client.gather(futures))
