"""A reconstruction larger than a worker's memory limit completes on a real distributed cluster."""

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

from cryocloud.model import TiltSeries
from cryocloud.reconstruct import reconstruct, reconstruct_rows
from cryocloud.store import read_tomogram, write_tomogram

MEMORY_LIMIT = 700 * 2**20


@pytest.mark.slow
def test_reconstruction_larger_than_worker_memory(tmp_path):
    angles = np.arange(-60.0, 61.0, 12.0)
    nz, ny, nx, rows = 128, 768, 2048, 32
    images = da.random.default_rng(7).random((angles.size, ny, nx), dtype=np.float32, chunks=(angles.size, rows, nx))
    ts = TiltSeries.from_array(images, tilt_angles=angles, pixel_size=4.0)
    tomo = reconstruct(ts, thickness_px=nz, slab_rows=rows)
    assert tomo.data.nbytes > MEMORY_LIMIT  # 805 MB of output for a 700 MiB worker
    url = str(tmp_path / "big.zarr")
    with LocalCluster(n_workers=1, threads_per_worker=1, memory_limit=MEMORY_LIMIT, processes=True) as cluster:
        with Client(cluster) as client:
            before = set(client.scheduler_info()["workers"])
            write_tomogram(tomo, url, chunks=(64, rows, 256), levels=2)
            assert set(client.scheduler_info()["workers"]) == before  # the worker was never killed / restarted
    stored = read_tomogram(url)
    assert stored.shape == (nz, ny, nx)
    y0 = 352
    with dask.config.set(scheduler="synchronous"):
        expected = reconstruct_rows(images[:, y0 : y0 + rows].compute(), angles, nz)
        got = stored.data[:, y0 : y0 + rows].values
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
