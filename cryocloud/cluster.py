"""connect(): the Dask client every cryocloud entry point uses.

Configuration follows Dask's conventions (see cryocloud/cryocloud.yaml for the keys and defaults):
YAML in ~/.config/dask/, or DASK_CRYOCLOUD__CLUSTER__* environment variables, or keyword arguments.
Resolution order: an explicit `address` argument; kind "address"/"gateway"/"kubernetes"; Dask's own
`scheduler-address` (DASK_SCHEDULER_ADDRESS, set by the dask-kubernetes operator in a DaskJob pod);
otherwise a local distributed cluster sized to the machine (one single-threaded worker process per
core, memory split evenly; distributed reads cgroup limits).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import dask.config
import yaml
from distributed import Client

from cryocloud.errors import CryocloudError

log = logging.getLogger(__name__)

_DEFAULTS = yaml.safe_load((Path(__file__).with_name("cryocloud.yaml")).read_text())
dask.config.update_defaults(_DEFAULTS)

KINDS = ("local", "address", "gateway", "kubernetes")


class ClusterError(CryocloudError):
    """The configured cluster cannot be reached or created."""


def cluster_settings(**overrides: Any) -> dict:
    """The effective `cryocloud.cluster` settings: Dask config merged with non-None overrides."""
    settings = dict(dask.config.get("cryocloud.cluster"))
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if settings["kind"] not in KINDS:
        raise ClusterError(f"cryocloud.cluster.kind: expected one of {KINDS}, got {settings['kind']!r}")
    return settings


def _local_worker_count(settings: dict) -> int:
    if settings.get("n_workers"):
        return int(settings["n_workers"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(settings.get("threads_per_worker") or 1))


def _connect_local(settings: dict) -> Client:
    """A client that owns its LocalCluster: closing the client shuts the workers down."""
    return Client(
        n_workers=_local_worker_count(settings),
        threads_per_worker=int(settings.get("threads_per_worker") or 1),
        processes=bool(settings.get("processes", True)),
        memory_limit=settings.get("memory_limit", "auto"),
        dashboard_address=settings.get("dashboard_address", ":0"),
    )


def _connect_address(address: str, timeout: str) -> Client:
    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {address}: {exc}") from None


def _connect_gateway(settings: dict) -> Client:
    try:
        from dask_gateway import Gateway
    except ImportError:
        raise ClusterError("cluster kind 'gateway' needs dask-gateway: pip install 'cryocloud[k8s]'") from None
    gateway = Gateway(settings["gateway"].get("address"))
    cluster = gateway.new_cluster(**settings["gateway"].get("options", {}))
    cluster.scale(int(settings.get("n_workers") or 2))
    return cluster.get_client()


def _connect_kubernetes(settings: dict) -> Client:
    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError:
        raise ClusterError("cluster kind 'kubernetes' needs dask-kubernetes: pip install 'cryocloud[k8s]'") from None
    k8s = settings["kubernetes"]
    kwargs = {k: v for k, v in k8s.items() if v is not None}
    kwargs["n_workers"] = int(settings.get("n_workers") or 2)
    return Client(KubeCluster(**kwargs))


def connect(address: str | None = None, **overrides: Any) -> Client:
    """A Dask distributed client for the configured cluster; prints where its dashboard is.

    `address`: a scheduler address (tcp://...) that wins over everything else. `overrides`: keys
    of `cryocloud.cluster` (kind, n_workers, memory_limit, ...).
    """
    settings = cluster_settings(**overrides)
    kind = settings["kind"]
    scheduler = address or settings.get("address") or dask.config.get("scheduler-address", None)
    if address or kind == "address":
        if not scheduler:
            raise ClusterError("cryocloud.cluster.kind is 'address' but no address is set (cryocloud.cluster.address)")
        client = _connect_address(scheduler, settings["connect_timeout"])
    elif kind == "gateway":
        client = _connect_gateway(settings)
    elif kind == "kubernetes":
        client = _connect_kubernetes(settings)
    elif scheduler:
        client = _connect_address(scheduler, settings["connect_timeout"])
    else:
        client = _connect_local(settings)
    log.info("Dask dashboard: %s", client.dashboard_link)
    return client


@contextmanager
def session(address: str | None = None, **overrides: Any) -> Iterator[Client]:
    """`connect()` for the length of a with-block. On exit the client closes and so does any cluster
    that connect started (local, Dask Gateway, Kubernetes); a scheduler that was only joined keeps
    running."""
    client = connect(address, **overrides)
    try:
        yield client
    finally:
        cluster = client.cluster
        client.close()
        if cluster is not None:
            cluster.close()


def describe(client: Client) -> str:
    """One line naming the cluster: workers, threads, memory and dashboard link."""
    info = client.scheduler_info()
    workers = info.get("workers", {})
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    memory = sum(w.get("memory_limit", 0) or 0 for w in workers.values())
    return (
        f"Dask cluster: {len(workers)} workers, {threads} threads, {memory / 2**30:.1f} GiB; "
        f"dashboard {client.dashboard_link}"
    )
