"""A worker process killed in the middle of template matching on a real LocalCluster (2 worker
processes): the job completes and its score and orientation maps equal an undisturbed run
(scores to float32 rounding, as the resume test of the matcher compares them)."""

from __future__ import annotations

import os

import dask.config
import numpy as np
import pytest
from distributed import Client
from workerfaults import KillOnce, SlowTasks, two_worker_cluster

from cryocloud.model import Tomogram


@pytest.mark.slow
def test_worker_killed_during_template_matching(tmp_path):
    from cryocloud.pick import prepare_template
    from cryocloud.pick.angles import uniform_rotations
    from cryocloud.pick.job import MatchJob
    from cryocloud.pick.results import read_match, run_match

    rng = np.random.default_rng(3)
    g = np.indices((12, 12, 12)) - 6
    blob = np.exp(-np.sum(g**2, axis=0) / 8.0).astype(np.float32) * (1 + 0.3 * (g[2] > 0))
    template = prepare_template(blob, 10.0, 10.0)
    volume = rng.normal(size=(32, 48, 48)).astype(np.float32)
    volume[10:22, 10:22, 10:22] += 3 * blob
    tomo = Tomogram.from_array(volume, pixel_size=10.0)
    rotations = uniform_rotations(60.0)
    job = MatchJob(subvolume=32, batch_size=max(1, len(rotations) // 3))
    with dask.config.set(scheduler="synchronous"):
        run_match(tomo, template, rotations, str(tmp_path / "ref"), job=job)
    marker = str(tmp_path / "killed")
    with two_worker_cluster() as cluster, Client(cluster) as client:
        client.register_plugin(SlowTasks("", 0.02))
        client.register_plugin(KillOnce("", after=8, marker=marker))
        before = set(client.scheduler_info()["workers"])
        run_match(tomo, template, rotations, str(tmp_path / "killed-run"), job=job)
        after = set(client.scheduler_info()["workers"])
    assert os.path.exists(marker) and after != before
    ref_scores, ref_orient, _, ref_summary = read_match(str(tmp_path / "ref"))
    scores, orient, _, summary = read_match(str(tmp_path / "killed-run"))
    np.testing.assert_allclose(scores.values, ref_scores.values, rtol=0, atol=1e-6)
    assert (orient.values == ref_orient.values).mean() > 0.999
    assert summary["score_std"] == pytest.approx(ref_summary["score_std"], rel=1e-6)
