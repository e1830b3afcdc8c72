"""Worker-side fault injection and shared inputs for the reliability tests (real dask.distributed).

- `KillOnce`: a worker plugin; the worker process SIGKILLs itself when it has finished `after`
  tasks whose key starts with `prefix`; a marker file claimed atomically makes it happen once, on one worker.
- `SlowTasks`: each finished task whose key starts with `prefix` holds the worker `delay_s` seconds,
  so that a test can interrupt a run part way.
- `dask_setup`: a worker preload (``DASK_DISTRIBUTED__WORKER__PRELOAD='["workerfaults"]'``) that adds
  `SlowTasks` from ``CRYOCLOUD_TEST_SLOW_PREFIX`` / ``CRYOCLOUD_TEST_SLOW_S`` to the workers of a
  cluster started in another process (the `cryocloud` command).
- A small stored tilt series, its undisturbed reconstruction, a 2-process LocalCluster and the
  identity (inode, mtime) of stored chunk files.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import dask.config
import numpy as np
from distributed import LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from cryocloud.model import TiltSeries
from cryocloud.reconstruct import reconstruct
from cryocloud.store import read_tilt_series, write_tilt_series

ANGLES = np.arange(-60.0, 61.0, 4.0)
SHAPE_YX = (96, 64)  # 96 rows in 12 slabs of 8; 64 columns = one output chunk wide
SLAB_ROWS = 8
THICKNESS = 32


def _name(key) -> str:
    return str(key[0] if isinstance(key, tuple) else key)


class KillOnce(WorkerPlugin):
    name = "kill-once"

    def __init__(self, prefix: str, after: int, marker: str):
        self.prefix, self.after, self.marker = prefix, after, marker
        self.done = 0

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish != "memory" or not _name(key).startswith(self.prefix):
            return
        self.done += 1
        if self.done < self.after:
            return
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


class SlowTasks(WorkerPlugin):
    name = "slow-tasks"

    def __init__(self, prefix: str, delay_s: float):
        self.prefix, self.delay_s = prefix, delay_s

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "memory" and _name(key).startswith(self.prefix):
            time.sleep(self.delay_s)


async def dask_setup(worker) -> None:
    prefix = os.environ.get("CRYOCLOUD_TEST_SLOW_PREFIX")
    if prefix:
        await worker.plugin_add(SlowTasks(prefix, float(os.environ.get("CRYOCLOUD_TEST_SLOW_S", "0.2"))))


def write_small_tilt_series(folder: Path) -> str:
    """A random tilt series (ANGLES, SHAPE_YX, 5 A pixels) stored as OME-Zarr under `folder`."""
    images = np.random.default_rng(11).normal(size=(ANGLES.size, *SHAPE_YX)).astype(np.float32)
    url = str(folder / "ts.zarr")
    write_tilt_series(TiltSeries.from_array(images, tilt_angles=ANGLES, pixel_size=5.0), url, levels=1)
    return url


def reference_reconstruction(ts_url: str) -> np.ndarray:
    """The undisturbed reconstruction (THICKNESS, SLAB_ROWS), computed without a cluster."""
    with dask.config.set(scheduler="synchronous"):
        tomo = reconstruct(read_tilt_series(ts_url), thickness_px=THICKNESS, slab_rows=SLAB_ROWS)
        return np.asarray(tomo.data.values)


def two_worker_cluster() -> LocalCluster:
    return LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit="1GiB")


def level0_chunks(url: str) -> dict[str, tuple[int, int]]:
    """Level-0 chunk files of a local OME-Zarr (zarr v2 layout): relative path -> (inode, mtime_ns)."""
    root = Path(url) / "0"
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".partial")
    }
