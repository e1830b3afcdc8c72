import dask
import dask.array as da
import pytest
from distributed import LocalCluster

from cryocloud.cluster import ClusterError, cluster_settings, connect, describe

pytestmark = pytest.mark.slow  # starts local Dask clusters with worker processes


def test_defaults_come_from_dask_config():
    s = cluster_settings()
    assert s["kind"] == "local" and s["threads_per_worker"] == 1


def test_env_style_override_and_bad_kind():
    with dask.config.set({"cryocloud.cluster.kind": "nonsense"}):
        with pytest.raises(ClusterError, match="cryocloud.cluster.kind"):
            cluster_settings()


def test_local_cluster_runs_a_graph():
    with connect(n_workers=1, memory_limit="1GiB") as client:
        assert len(client.scheduler_info()["workers"]) == 1
        assert da.ones((100, 100), chunks=10).sum().compute() == 10000
        assert "dashboard" in describe(client)


def test_scheduler_address_from_dask_config_is_joined():
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
        with dask.config.set({"scheduler-address": cluster.scheduler_address}):
            with connect() as client:
                assert client.scheduler.address == cluster.scheduler_address


def test_unreachable_address_is_a_clear_error():
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        connect("tcp://127.0.0.1:9", connect_timeout="2s")


def test_session_closes_the_cluster_it_started_but_not_a_joined_one():
    from cryocloud.cluster import session

    with session(n_workers=1, memory_limit="1GiB") as client:
        cluster = client.cluster
        assert da.ones(10, chunks=5).sum().compute() == 10
    assert cluster.status.name == "closed"
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as running:
        with session(running.scheduler_address):
            pass
        assert running.status.name == "running"
