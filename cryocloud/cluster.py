"""connect(): the Dask client every cryocloud entry point uses.

Configuration follows Dask's conventions (see cryocloud/cryocloud.yaml for the keys and defaults):
YAML in ~/.config/dask/, or DASK_CRYOCLOUD__CLUSTER__* environment variables, or keyword arguments.
Resolution order: an explicit `address` argument; kind "address"/"gateway"/"kubernetes"; Dask's own
`scheduler-address` (DASK_SCHEDULER_ADDRESS, set by the dask-kubernetes operator in a DaskJob pod);
otherwise a local distributed cluster sized to the machine (one single-threaded worker process per
core, memory split evenly; distributed reads cgroup limits).

Python tracebacks that Dask logs (a worker's "Compute Failed" report of a task error, ...) never reach
the console: `connect()` registers a worker plugin, which the scheduler also gives to workers that
restart or join later, and sets up the client's process likewise; they go to the debug log file
(`debug_log_path`). The task's exception itself is re-raised by the client, and the CLI prints it as
one line.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import dask.config
import yaml
from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin

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


def debug_log_path(configured: str | None = None) -> Path:
    """The debug log file: `configured`, else Dask config `cryocloud.debug_log`, else
    cryocloud/debug.log in the user's cache folder ($XDG_CACHE_HOME, or ~/.cache)."""
    configured = configured or dask.config.get("cryocloud.debug_log", None)
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cryocloud" / "debug.log"


class _TracebacksToDebugLog(logging.Filter):
    """Filter of a console log handler: a record that carries a Python traceback (as exc_info, or as text
    like distributed's "Compute Failed" report) goes to the debug log instead of the console."""

    def __init__(self, debug_log: logging.Handler):
        super().__init__()
        self.debug_log = debug_log

    def filter(self, record: logging.LogRecord) -> bool:
        if not (record.exc_info or record.stack_info or "Traceback" in record.getMessage()):
            return True
        if not getattr(record, "cryocloud_debug_logged", False):  # a record may reach several console handlers
            record.cryocloud_debug_logged = True
            self.debug_log.handle(record)
        return False


_debug_logs: dict[Path, logging.Handler] = {}


def tracebacks_to_debug_log(configured: str | None = None) -> Path | None:
    """In this process, make every console log handler (stream stdout or stderr) pass records that carry a
    traceback to the debug log file (`debug_log_path(configured)`) instead of printing them. Idempotent.
    Returns the file, or None when it cannot be opened (the tracebacks then stay on the console)."""
    path = debug_log_path(configured)
    if path not in _debug_logs:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path, encoding="utf-8")
        except OSError:
            return None
        handler.setFormatter(logging.Formatter("%(asctime)s pid %(process)d %(name)s %(levelname)s: %(message)s"))
        _debug_logs[path] = handler
    consoles = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    loggers = [logging.getLogger(), *(g for g in logging.Logger.manager.loggerDict.values() if isinstance(g, logging.Logger))]
    for handler in [logging.lastResort, *(h for g in loggers for h in g.handlers)]:  # lastResort: loggers without handlers
        if isinstance(handler, logging.StreamHandler) and handler.stream in consoles:
            for old in [f for f in handler.filters if isinstance(f, _TracebacksToDebugLog)]:
                handler.removeFilter(old)
            handler.addFilter(_TracebacksToDebugLog(_debug_logs[path]))
    return path


class DebugLogPlugin(WorkerPlugin):
    """Worker side of `tracebacks_to_debug_log`: the worker's task-error reports go to the debug log."""

    name = "cryocloud-debug-log"

    def __init__(self, configured: str | None = None):
        self.configured = configured  # the client's cryocloud.debug_log; None: the worker's own default

    def setup(self, worker: Any) -> None:
        tracebacks_to_debug_log(self.configured)


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
    tracebacks_to_debug_log()
    try:
        client.register_plugin(DebugLogPlugin(dask.config.get("cryocloud.debug_log", None)))
    except OSError:  # a worker died while the plugin was sent: the scheduler keeps it for the worker's replacement
        log.debug("debug-log plugin not sent to every worker", exc_info=True)
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
