"""A worker process killed in the middle of a reconstruction on a real LocalCluster (2 worker
processes): its nanny restarts it, the scheduler reruns the lost tasks, and the stored tomogram
equals an undisturbed run bit for bit."""

from __future__ import annotations

import os

import numpy as np
import pytest
from distributed import Client
from workerfaults import SLAB_ROWS, THICKNESS, KillOnce, SlowTasks, reference_reconstruction, two_worker_cluster, write_small_tilt_series

from cryocloud.reconstruct import reconstruct
from cryocloud.store import read_tilt_series, read_tomogram, write_tomogram


@pytest.mark.slow
def test_worker_killed_during_reconstruction(tmp_path):
    tilt_series_url = write_small_tilt_series(tmp_path)
    expected = reference_reconstruction(tilt_series_url)
    out = str(tmp_path / "tomo.zarr")
    marker = str(tmp_path / "killed")
    with two_worker_cluster() as cluster, Client(cluster) as client:
        client.register_plugin(SlowTasks("_store_block", 0.1))
        client.register_plugin(KillOnce("_store_block", after=2, marker=marker))
        before = set(client.scheduler_info()["workers"])
        tomo = reconstruct(read_tilt_series(tilt_series_url), thickness_px=THICKNESS, slab_rows=SLAB_ROWS)
        write_tomogram(tomo, out, chunks=(64, SLAB_ROWS, 64), levels=2)
        after = set(client.scheduler_info()["workers"])
    assert os.path.exists(marker), "no worker was killed"
    assert after != before  # the killed worker was replaced by its nanny
    got = read_tomogram(out).data.values
    np.testing.assert_array_equal(got, expected)
