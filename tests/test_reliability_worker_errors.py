"""A task that fails on a Dask worker process: the user sees one `error:` line and no traceback, the
worker's "Compute Failed" report goes to the debug log file, and the other tasks are cancelled.

Real LocalClusters with separate worker processes: `cryocloud reconstruct` as a subprocess (its own
cluster; the workers' stderr is the command's), and clusters joined by address in this process, whose
workers' stderr pytest captures at the file-descriptor level (capfd).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dask
import dask.config
import pytest
from badinput import Case, complete_looking_outputs, first_chunk, ts_zarr
from distributed import LocalCluster

from cryocloud.cluster import connect
from cryocloud.errors import StoreError
from cryocloud.progress import compute

CRYOCLOUD = str(Path(sys.executable).with_name("cryocloud"))


@pytest.mark.slow
def test_cli_task_error_on_a_worker_is_one_line_and_goes_to_the_debug_log(tmp_path):
    case = Case(tmp_path / "in", tmp_path / "out")
    case.inp.mkdir()
    case.out.mkdir()
    url = ts_zarr(case)
    chunk = first_chunk(url)
    chunk.write_bytes(chunk.read_bytes()[:10])  # truncated: StoreError inside a read task, on the worker
    debug_log = tmp_path / "logs" / "debug.log"
    env = {**os.environ, "DASK_CRYOCLOUD__CLUSTER__N_WORKERS": "1", "DASK_CRYOCLOUD__DEBUG_LOG": str(debug_log)}
    proc = subprocess.run([CRYOCLOUD, "reconstruct", url, str(case.out / "tomo.zarr"), "--thickness", "8"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "chunk" in errors[0] and "truncated or corrupt" in errors[0]
    for text in (proc.stderr, proc.stdout):
        assert "Traceback" not in text and "Compute Failed" not in text
    assert complete_looking_outputs(case.out) == []
    logged = debug_log.read_text()
    assert "Compute Failed" in logged and "Traceback" in logged and "StoreError" in logged and "truncated or corrupt" in logged


def fail(message: str) -> None:
    raise StoreError("s3://bucket/broken.zarr", message, field="chunk")


def sleep_then(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.mark.slow
def test_joined_cluster_keeps_task_tracebacks_off_the_console_also_after_a_restart(tmp_path, capfd):
    debug_log = tmp_path / "debug.log"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit="1GiB") as cluster:
        with dask.config.set({"cryocloud.debug_log": str(debug_log)}), connect(cluster.scheduler_address) as client:
            before = set(client.scheduler_info()["workers"])
            client.restart()  # a new worker process: the scheduler gives it the plugin when it registers
            assert set(client.scheduler_info()["workers"]).isdisjoint(before)
            with pytest.raises(StoreError, match="a deliberate failure"):
                compute(dask.delayed(fail)("a deliberate failure"), description="failing", quiet=True)
    out, err = capfd.readouterr()
    for text in (out, err):
        assert "Compute Failed" not in text and "Traceback" not in text
    logged = debug_log.read_text()
    assert "Compute Failed" in logged and "a deliberate failure" in logged and "Traceback" in logged


@pytest.mark.slow
def test_first_failed_task_cancels_the_rest():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit="1GiB") as cluster, \
            connect(cluster.scheduler_address) as client:
        client.wait_for_workers(2)
        slow = dask.delayed(sleep_then)(120.0)
        start = time.monotonic()
        with pytest.raises(StoreError, match="fails first"):
            compute(slow, dask.delayed(fail)("fails first"), description="two tasks", quiet=True)
        assert time.monotonic() - start < 60
        assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0  # nothing left running
