import dask.array as da
import numpy as np
from distributed import Client, LocalCluster

from cryocloud.progress import compute, current_client
import pytest

pytestmark = pytest.mark.slow  # starts local Dask clusters with worker processes


def test_compute_local_scheduler_shows_progress_and_returns_results(capsys):
    x = da.arange(1000, chunks=100)
    (total, mean) = compute(x.sum(), x.mean(), description="summing")
    assert total == 499500 and np.isclose(mean, 499.5)
    assert "summing" in capsys.readouterr().err


def test_compute_on_distributed_client_prints_dashboard(capsys):
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster, Client(cluster) as client:
        assert current_client() is client
        (v,) = compute(da.ones((50, 50), chunks=10).sum(), description="ones")
        assert v == 2500
        err = capsys.readouterr().err
        assert "Dask dashboard: http" in err and "ones" in err
