"""Tasks that do not fit a worker's memory limit fail fast with a ResourceError, never an endless wait.

Real LocalClusters of separate worker processes: `cryocloud reconstruct` as a subprocess (its own cluster,
configured by DASK_CRYOCLOUD__CLUSTER__* variables), and `cryocloud.progress.compute` in this process on
workers killed by their nanny for memory, or paused over their memory limit. The reconstruction's memory
estimate is checked against the peak that tracemalloc measures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import dask
import dask.config
import numpy as np
import psutil
import pytest
from badinput import complete_looking_outputs
from distributed import Client, LocalCluster

from cryocloud.errors import ResourceError
from cryocloud.model import TiltSeries
from cryocloud.progress import compute
from cryocloud.reconstruct import reconstruct, slab_task_bytes
from cryocloud.store import read_tilt_series, read_tomogram, write_tilt_series

CRYOCLOUD = str(Path(sys.executable).with_name("cryocloud"))


def tilt_series(folder: Path, shape: tuple[int, int, int], **coords) -> str:
    images = np.random.default_rng(5).normal(size=shape).astype(np.float32)
    ts = TiltSeries.from_array(images, tilt_angles=np.linspace(-60, 60, shape[0]), pixel_size=5.0, **coords)
    url = str(folder / "ts.zarr")
    write_tilt_series(ts, url, levels=1)
    return url


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape, options, shift_y",
    [
        ((21, 256, 512), {"thickness_px": 96}, None),  # default slabs, tiling the stored chunks
        ((21, 512, 510), {"binning": 3, "slab_rows": 40, "thickness_px": 32}, None),  # x cropped, slabs across chunks
        ((21, 256, 384), {"thickness_px": 64, "slab_rows": 40}, np.linspace(-30.0, 20.0, 21)),  # y shifts, A
    ],
    ids=["default", "binned", "shifted"],
)
def test_slab_task_estimate_matches_measured_peak(tmp_path, shape, options, shift_y):
    coords = {} if shift_y is None else {"shift_y": shift_y}
    ts = read_tilt_series(tilt_series(tmp_path, shape, **coords))
    tomo = reconstruct(ts, **options)
    tasks = tomo.data.data.to_delayed().ravel()
    dask.compute(tasks[0], scheduler="sync")  # numba compiles outside the measurement
    peaks = []
    for task in tasks:
        tracemalloc.start()
        dask.compute(task, scheduler="sync")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    estimate = slab_task_bytes(ts, tomo)
    assert 0.85 * max(peaks) <= estimate <= 1.15 * max(peaks), (estimate, peaks)


# ------------------------------------------------------------------- the CLI on its own cluster
@pytest.fixture(scope="module")
def big_slab_series(tmp_path_factory) -> str:
    """41 tilts of 256 x 1024 px: `--thickness 256 --slab-rows 256` makes one task of ~430 MiB that writes a
    268 MB tomogram."""
    return tilt_series(tmp_path_factory.mktemp("memory"), (41, 256, 1024))


def run_reconstruct(ts_url: str, out: Path, n_workers: int, memory_limit: str, timeout_s: float, *extra: str):
    env = {**os.environ, "DASK_CRYOCLOUD__CLUSTER__N_WORKERS": str(n_workers),
           "DASK_CRYOCLOUD__CLUSTER__MEMORY_LIMIT": memory_limit}
    argv = [CRYOCLOUD, "reconstruct", ts_url, str(out / "tomo.zarr"), "--thickness", "256", *extra]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)


@pytest.mark.slow
def test_reconstruct_over_the_worker_memory_limit_fails_fast(big_slab_series, tmp_path):
    start = time.monotonic()
    proc = run_reconstruct(big_slab_series, tmp_path, 2, "256MiB", 180, "--slab-rows", "256")
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    message = errors[0]
    for fragment in ("error: reconstruct: one task needs about", "MiB for its data", "memory limit of a worker is 256.00 MiB",
                     "more memory", "fewer workers", "--slab-rows, now 256"):
        assert fragment in message, message
    needed = float(message.split("needs about ")[1].split(" MiB")[0])
    assert needed > 256
    assert "Traceback" not in proc.stderr + proc.stdout
    assert complete_looking_outputs(tmp_path) == []
    print(f"failed in {elapsed:.1f} s: {message}")


@pytest.mark.slow
def test_reconstruct_under_an_ample_memory_limit_is_unaffected(big_slab_series, tmp_path):
    proc = run_reconstruct(big_slab_series, tmp_path, 2, "1GiB", 300, "--slab-rows", "64")
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr.lower() and "Traceback" not in proc.stderr
    with dask.config.set(scheduler="synchronous"):
        expected = reconstruct(read_tilt_series(big_slab_series), thickness_px=256, slab_rows=64).data.values
    np.testing.assert_array_equal(read_tomogram(str(tmp_path / "tomo.zarr")).data.values, expected)


# ------------------------------------------------------- compute() on workers short of memory
_hoard: list[np.ndarray] = []


def allocate(n_bytes: int, hold_s: float) -> int:
    """Touch `n_bytes` of new memory and hold it `hold_s` seconds (the nanny checks every 100 ms)."""
    block = np.ones(n_bytes // 8)
    time.sleep(hold_s)
    return int(block.size)


def hoard(n_bytes: int) -> int:
    """Keep `n_bytes` on the worker after the task ends (unmanaged memory: it cannot be spilled); the task
    lasts long enough for the worker's memory monitor (every 100 ms) to pause the worker first."""
    _hoard.append(np.ones(n_bytes // 8))
    time.sleep(1.0)
    return n_bytes


def follow(n: int) -> int:
    return n


def rss() -> int:
    return psutil.Process().memory_info().rss


@pytest.mark.slow
def test_task_that_gets_its_workers_killed_for_memory_is_a_resource_error():
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit="400MiB", dashboard_address=":0") as cluster, \
            Client(cluster):
        start = time.monotonic()
        with pytest.raises(ResourceError) as caught:
            compute(dask.delayed(allocate)(600 * 2**20, 5.0), description="allocating", quiet=True)
        elapsed = time.monotonic() - start
    message = str(caught.value)
    assert message.startswith("allocating: running one task takes more than 380.00 MiB (95% of the 400.00 MiB memory limit"), message
    assert "2 worker processes were restarted while running it" in message
    assert elapsed < 60


@pytest.mark.slow
def test_workers_paused_over_their_memory_limit_are_a_resource_error():
    limit = 400 * 2**20
    with dask.config.set({"cryocloud.compute.stalled_timeout": "3s"}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit=limit, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        idle = max(client.run(rss).values())
        kept = dask.delayed(hoard)(int(0.875 * limit) - idle)  # over the 80 % pause fraction, under the 95 % restart
        start = time.monotonic()
        with pytest.raises(ResourceError) as caught:
            compute(dask.delayed(follow)(kept), description="hoarding")  # follow() waits for the paused worker
        elapsed = time.monotonic() - start
    message = str(caught.value)
    assert message.startswith("hoarding: no progress for 3 s: every worker is paused"), message
    assert "of its 400.00 MiB memory limit" in message
    assert elapsed < 30


@pytest.mark.slow
def test_workers_killed_for_memory_while_idle_are_a_resource_error():
    """Workers that exceed their limit before any task (the memory an idle cryocloud worker uses) end as
    KilledWorker for the task they were given, or with no worker left or all paused: a ResourceError."""
    with LocalCluster(n_workers=1, processes=True, memory_limit="1GiB", dashboard_address=":0") as cluster, Client(cluster) as client:
        idle = max(client.run(rss).values())
    limit = int(0.9 * idle)  # an idle worker is over the 95 % at which its nanny restarts it: none stays up
    with dask.config.set({"cryocloud.compute.stalled_timeout": "5s", "distributed.scheduler.allowed-failures": 1}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=limit, dashboard_address=":0") as cluster, \
            Client(cluster):
        start = time.monotonic()
        with pytest.raises(ResourceError) as caught:
            compute(dask.delayed(follow)(1), description="one small task", quiet=True)
        elapsed = time.monotonic() - start
    message = str(caught.value)
    assert message.startswith("one small task: "), message
    assert f"{dask.utils.format_bytes(limit)} memory limit" in message, message
    assert "restarted" in message or "every worker is paused" in message, message
    assert elapsed < 60
