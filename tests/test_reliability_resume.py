"""The client killed mid-run: `cryocloud reconstruct` runs in its own process group with its own
2-worker cluster (tasks slowed by a worker preload) and is SIGKILLed, cluster and all, once a few
chunks are stored. The half-written tomogram does not read as complete; rerunning the same command
writes only the missing chunks (counted by file identity) and the result equals an undisturbed run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask.config
import numpy as np
import pytest
from workerfaults import SHAPE_YX, SLAB_ROWS, THICKNESS, level0_chunks, reference_reconstruction, write_small_tilt_series

from cryocloud.cli import main
from cryocloud.errors import StoreError
from cryocloud.store import read_tomogram


@pytest.mark.slow
def test_client_killed_mid_run_resumes_only_missing_chunks(tmp_path):
    tilt_series_url = write_small_tilt_series(tmp_path)
    expected = reference_reconstruction(tilt_series_url)
    out = str(tmp_path / "tomo.zarr")
    argv = ["reconstruct", tilt_series_url, out, "--thickness", str(THICKNESS), "--slab-rows", str(SLAB_ROWS)]
    tests_dir = str(Path(__file__).resolve().parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")]),
        "DASK_CRYOCLOUD__CLUSTER__N_WORKERS": "2",
        "DASK_DISTRIBUTED__WORKER__PRELOAD": '["workerfaults"]',
        "CRYOCLOUD_TEST_SLOW_PREFIX": "_store_block",
        "CRYOCLOUD_TEST_SLOW_S": "0.5",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", "from cryocloud.cli import console_main; console_main()", *argv],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    total = SHAPE_YX[0] // SLAB_ROWS
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if (Path(out) / "0").exists() and len(level0_chunks(out)) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the client and the cluster it started, all at once
        proc.wait(timeout=30)
    kept = level0_chunks(out)
    assert 3 <= len(kept) < total
    with pytest.raises(StoreError, match="incomplete"):
        read_tomogram(out)  # the half-written image is not taken as complete
    with dask.config.set({"cryocloud.cluster.n_workers": 1, "cryocloud.cluster.processes": False}):
        assert main(argv) == 0
    after = level0_chunks(out)
    assert len(after) == total
    rewritten = {k for k, ident in after.items() if kept.get(k) != ident}
    assert rewritten == set(after) - set(kept)  # only the missing chunks were computed and written
    np.testing.assert_array_equal(read_tomogram(out).data.values, expected)
