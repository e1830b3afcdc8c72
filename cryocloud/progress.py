"""Computing Dask collections with a visible progress bar, failing fast and clearly.

With a distributed client (cryocloud.cluster.connect) the bar follows the futures on the
cluster and the dashboard link is printed once; without one, it follows Dask's local scheduler
(`dask.diagnostics.ProgressBar` only sees local schedulers). `quiet=True` computes silently.
Progress goes to stderr (stdout stays for results): a bar redrawn in place on a terminal; on anything
else (a file, a pipe, a CI log) plain lines such as "reconstruct: 40 % (12/30 tasks), 35 s", never a
carriage return (`StageProgress`).

On a cluster, `compute` never waits forever for memory the workers cannot get:
- the first task that fails cancels the rest, and its own exception is raised (with its traceback);
- a task that killed its workers (distributed's KilledWorker: the nanny restarts a worker above the
  `distributed.worker.memory.terminate` fraction of its memory limit) raises a ResourceError;
- no progress for `cryocloud.compute.stalled_timeout` because every worker is paused (above
  `distributed.worker.memory.pause`) with no task running, or because no worker is left after workers
  were restarted for memory, cancels the futures and raises a ResourceError.
A stage that knows what one of its tasks needs refuses it before anything runs: `check_task_memory`.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import dask
from dask.diagnostics import ProgressBar
from dask.utils import format_bytes, parse_timedelta
from distributed.diagnostics.progressbar import TextProgressBar

import cryocloud.cluster  # noqa: F401  (cryocloud's Dask config defaults: cryocloud.compute.*)
from cryocloud.errors import ResourceError

_announced_dashboards: set[str] = set()

WHAT_TO_DO = (
    "give each worker more memory (cryocloud.cluster.memory_limit), run fewer workers "
    "(cryocloud.cluster.n_workers: each gets more of the machine), or use {smaller}"
)


def current_client() -> Any | None:
    """The active distributed client, or None when Dask runs on a local scheduler."""
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def announce_dashboard(client: Any, line: str | None = None) -> None:
    """Print the dashboard link of `client` once per process (to stderr): `line` (one that names the link,
    e.g. cryocloud.cluster.describe's) or "Dask dashboard: LINK"."""
    link = client.dashboard_link
    if link not in _announced_dashboards:
        _announced_dashboards.add(link)
        print(line or f"Dask dashboard: {link}", file=sys.stderr)


def compute(*collections: Any, description: str = "", quiet: bool = False) -> tuple:
    """Compute Dask collections (like dask.compute) showing progress; returns the results tuple.

    `description` names the stage in errors as well as in the progress lines.
    """
    return _evaluate(collections, description, quiet, persist=False)


def persist(*collections: Any, description: str = "", quiet: bool = False) -> tuple:
    """Like `compute`, but the results stay where they were computed (like dask.persist: Dask collections held
    in the workers' memory, or in this process without a cluster). A later graph then refers to them instead
    of carrying the data (a graph that embeds a large array is sent to the scheduler whole)."""
    return _evaluate(collections, description, quiet, persist=True)


def _evaluate(collections: tuple, description: str, quiet: bool, *, persist: bool) -> tuple:
    """`compute` (persist=False) or `persist` (persist=True) of `collections`."""
    client = current_client()
    evaluate = dask.persist if persist else dask.compute
    if client is None:
        if quiet:
            return evaluate(*collections)
        with _LocalProgressBar(StageProgress(description or "computing")):
            return evaluate(*collections)
    from distributed import as_completed, futures_of
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    stage = description or "computing"
    started = time.time()
    results: list = client.persist(list(collections)) if persist else []
    futures = futures_of(results) if persist else client.compute(list(collections))
    with _StallWatch(client, futures, stage, started) as watch:
        try:
            if not quiet:
                announce_dashboard(client)
                _ClusterProgressBar(futures, StageProgress(stage))  # returns when all finished, one failed, or they were cancelled
            if not persist:
                return tuple(client.gather(futures))  # raises the first task error, with its traceback
            for future in as_completed(futures):
                if future.status != "finished":
                    future.result()  # raises the first task error (or FutureCancelledError), with its traceback
            return tuple(results)
        except Exception as exc:
            client.cancel(futures)  # the rest
            if watch.error is not None and isinstance(exc, FutureCancelledError):
                raise watch.error from None
            if isinstance(exc, KilledWorker):
                raise _killed_worker_error(client, stage, started, exc) from None
            raise


class StageProgress:
    """How far the tasks (or other `unit`s) of one stage are, on `stream` (default stderr). On a terminal a bar
    redrawn in place; on anything else (a file, a pipe) a plain line such as "reconstruct: 40 % (12/30 tasks),
    35 s" at every `step` (fraction) done and at least every `every_s` seconds, never a carriage return. Work
    that ends within `minimum_s` seconds shows only its last line."""

    def __init__(self, stage: str, stream: Any = None, *, unit: str = "tasks", step: float = 0.1, every_s: float = 30.0,
                 minimum_s: float = 1.0, width: int = 30):
        self.stage, self.unit, self.step, self.every_s, self.minimum_s, self.width = stage, unit, step, every_s, minimum_s, width
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty())
        self._started = time.monotonic()
        self._last_line_at = self._started
        self._steps_shown = -1  # the last multiple of `step` a plain line showed
        self._shown: tuple[int, int] | None = None  # (done, total) of the last line or bar drawn

    def update(self, done: int, total: int) -> None:
        """`done` of `total` are finished."""
        now = time.monotonic()
        if now - self._started < self.minimum_s:
            return
        if self.live:
            self._draw(done, total)
            return
        steps = int(done / total / self.step + 1e-9) if total else 0
        if steps > self._steps_shown or now - self._last_line_at >= self.every_s:
            self._steps_shown = steps
            self._draw(done, total)

    def finish(self, done: int, total: int) -> None:
        """The work ended with `done` of `total` finished: the bar ends its line; the last plain line is
        written unless the one before already said it."""
        if self.live or self._shown != (done, total):
            self._draw(done, total, final=True)

    def _draw(self, done: int, total: int, *, final: bool = False) -> None:
        elapsed = time.monotonic() - self._started
        seconds = f"{elapsed:.1f} s" if elapsed < 10 else f"{elapsed:.0f} s"
        fraction = done / total if total else 1.0
        counts = f"{int(100 * fraction)} % ({done}/{total} {self.unit}), {seconds}"
        if self.live:
            bar = "#" * int(self.width * fraction)
            self.stream.write(f"\r{self.stage} [{bar:<{self.width}}] {counts}" + ("\n" if final else ""))
        else:
            self.stream.write(f"{self.stage}: {counts}\n")
        self.stream.flush()
        self._shown = (done, total)
        self._last_line_at = time.monotonic()


class _ClusterProgressBar(TextProgressBar):
    """Distributed's console bar (it follows the futures on the scheduler), drawn by a StageProgress.
    Blocks until the futures finished, one failed, or they were cancelled."""

    def __init__(self, futures: list, report: StageProgress):
        self.report = report
        super().__init__(futures)

    def _draw_bar(self, remaining: int, all: int, **kwargs: Any) -> None:
        self.report.update(all - remaining, all)

    def _draw_stop(self, **kwargs: Any) -> None:  # the scheduler's last report: remaining, all, status
        self.report.finish(kwargs["all"] - kwargs["remaining"], kwargs["all"])


class _LocalProgressBar(ProgressBar):
    """Dask's local-scheduler bar (its timer thread and scheduler state), drawn by a StageProgress."""

    def __init__(self, report: StageProgress):
        super().__init__(minimum=0)
        self._file = None  # dask itself writes nothing
        self.report = report

    def _update_bar(self, elapsed: float) -> None:
        if self._state:
            self.report.update(*_done_and_total(self._state))

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        super()._finish(dsk, state, errored)
        self.report.finish(*_done_and_total(state))


def _done_and_total(state: dict) -> tuple[int, int]:
    """Tasks finished and in all, from the local scheduler's state."""
    done = len(state["finished"])
    return done, done + sum(len(state[k]) for k in ("ready", "waiting", "running"))


def check_task_memory(client: Any, task_bytes: int, stage: str, *, smaller: str = "smaller chunks") -> None:
    """Raise a ResourceError, before anything runs, when one task that needs `task_bytes` (peak, bytes)
    fits no worker of `client`: the memory an idle worker already uses plus the task goes over the
    `distributed.worker.memory.terminate` fraction of its memory limit (the nanny restarts it), or the
    idle memory alone is over the pause fraction (the worker takes no task at all).

    `smaller` says how to make this stage's tasks smaller (e.g. "fewer rows per task (--slab-rows)").
    Workers without a memory limit always fit; so does a task when no worker comes within
    `cryocloud.cluster.connect_timeout`.
    """
    pause, terminate = _memory_fractions()
    try:  # a worker restarting (by its nanny, for memory) is away a few seconds
        client.wait_for_workers(1, timeout=parse_timedelta(dask.config.get("cryocloud.cluster.connect_timeout"), default="s"))
    except TimeoutError:
        return  # no worker to judge by: compute() still stops a task that cannot fit
    workers = [w for w in client.scheduler_info()["workers"].values() if w.get("memory_limit")]
    if not workers:
        return

    def idle(w: dict) -> int:
        return max(0, w["metrics"]["memory"] - w["metrics"].get("managed_bytes", 0))

    roomiest = max(workers, key=lambda w: w["memory_limit"] * terminate - idle(w))
    limit, used = roomiest["memory_limit"], idle(roomiest)
    if used < pause * limit and used + task_bytes <= terminate * limit:
        return
    raise ResourceError(
        stage,
        f"one task needs about {format_bytes(used + task_bytes)} ({format_bytes(task_bytes)} for its data + "
        f"{format_bytes(used)} an idle worker already uses), but the memory limit of a worker is "
        f"{format_bytes(limit)}: it takes no new task above {pause:.0%} and is restarted above {terminate:.0%} "
        f"of it; " + WHAT_TO_DO.format(smaller=smaller),
    )


def _memory_fractions() -> tuple[float, float]:
    """Distributed's pause and terminate fractions of a worker's memory limit (1.0 where disabled)."""
    pause = dask.config.get("distributed.worker.memory.pause") or 1.0
    terminate = dask.config.get("distributed.worker.memory.terminate") or 1.0
    return float(pause), float(terminate)


def _memory_restarts(client: Any, since: float) -> list[dict]:
    """The scheduler's events of worker processes restarted by their nanny for memory since `since` (epoch s)."""
    return [msg for t, msg in client.get_events("worker-restart-memory") if t >= since]


def _killed_worker_error(client: Any, stage: str, since: float, killed: Any) -> ResourceError:
    """The ResourceError for distributed's KilledWorker `killed`: the worker processes running one task died
    `allowed_failures + 1` times (restarted by their nanny for memory when its events since `since` say so)."""
    _, terminate = _memory_fractions()
    tries = killed.allowed_failures + 1
    restarts = _memory_restarts(client, since)
    limit = killed.last_worker.memory_limit
    what_to_do = WHAT_TO_DO.format(smaller="smaller chunks")
    if restarts and limit:
        return ResourceError(
            stage,
            f"running one task takes more than {format_bytes(int(terminate * limit))} ({terminate:.0%} of the "
            f"{format_bytes(limit)} memory limit of a worker, above which the worker is restarted): "
            f"{tries} worker processes were restarted while running it (at up to "
            f"{format_bytes(max(r['rss'] for r in restarts))}); {what_to_do}",
        )
    return ResourceError(
        stage,
        f"{tries} worker processes died while running one task (killed by the system for lack of memory, or "
        f"crashed; see the workers' logs); if it was memory, {what_to_do}",
    )


class _StallWatch:
    """Watches the workers while futures run, from a thread that checks once a second. When for
    `cryocloud.compute.stalled_timeout` every worker (with a memory limit) is paused and runs no task, or
    no worker is left after worker processes were restarted for memory since `since`, it cancels the
    futures and keeps a ResourceError in `error`. Leaving the with-block stops it at once."""

    def __init__(self, client: Any, futures: list, stage: str, since: float):
        self.client, self.futures, self.stage, self.since = client, futures, stage, since
        self.timeout = parse_timedelta(dask.config.get("cryocloud.compute.stalled_timeout"), default="s")
        self.error: ResourceError | None = None
        self._limits: set[int] = set()  # the worker memory limits seen (bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="cryocloud-stall-watch", daemon=True)

    def __enter__(self) -> _StallWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        stalled_since = None
        while True:  # the first look at once: it sees the workers' memory limits before any can die
            try:
                problem = self._stalled()
            except OSError:  # the scheduler is gone: the main thread reports that
                return
            if problem is None:
                stalled_since = None
            else:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since >= self.timeout:
                    self.error = ResourceError(
                        self.stage, f"no progress for {self.timeout:.0f} s: {problem}; " + WHAT_TO_DO.format(smaller="smaller chunks")
                    )
                    self.client.cancel(self.futures)
                    return
            if self._stop.wait(min(1.0, self.timeout)):
                return

    def _stalled(self) -> str | None:
        """What keeps every task from running now (memory), or None."""
        workers = list(self.client.scheduler_info()["workers"].values())
        self._limits.update(w["memory_limit"] for w in workers if w.get("memory_limit"))
        pause, terminate = _memory_fractions()
        if not workers:
            restarts = _memory_restarts(self.client, self.since)
            if not restarts:
                return None  # e.g. an adaptive cluster still starting its workers
            limit = f"their {format_bytes(min(self._limits))} memory limit" if self._limits else "their memory limit"
            return (
                f"no worker is left after {len(restarts)} worker processes were restarted for using more than "
                f"{terminate:.0%} of {limit} (at up to {format_bytes(max(r['rss'] for r in restarts))})"
            )
        if all(w["status"] == "paused" and w.get("memory_limit") and not w["metrics"].get("task_counts", {}).get("executing")
               for w in workers):
            used = max(w["metrics"]["memory"] for w in workers)
            return (
                f"every worker is paused, using up to {format_bytes(used)} of its {format_bytes(min(self._limits))} memory "
                f"limit (a worker takes no new task above {pause:.0%} of it)"
            )
        return None
