"""`cryocloud submit`: the manifests it prints validate and run the config; bad configs and options fail clearly."""

from __future__ import annotations

import dask
import pytest
import yaml
from dask_kubernetes.constants import VALID_CLUSTER_NAME
from distributed import LocalCluster

from cryocloud.cli import main
from cryocloud.cluster import connect
from cryocloud.errors import CryocloudError
from cryocloud.pipeline import PipelineConfig
from cryocloud.submit import JobSpec, job_name, memory_bytes

from k8s_validation import arg_after, check_pod_security, check_workers_match_dask, load_all, pods, validate

pytestmark = pytest.mark.slow  # starts local Dask clusters with worker processes

CONFIG = {
    "input": "s3://cryoet-data-portal-public/10000/TS_01/Reconstructions/VoxelSpacing13.480/Tomograms/100/TS_01.zarr",
    "output": "s3://lab-bucket/runs/ts01",
    "stages": ["input", "reconstruct"],
    "reconstruct": {"binning": 2, "filter": "sirt"},
    "storage_options": {"anon": False, "client_kwargs": {"region_name": "us-west-2"}},
    "cluster": {"kind": "local", "n_workers": 4},
}


def write(tmp_path, data, name="ts01 run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def flat(text: str) -> str:
    """The CLI's error message as one line (the console wraps long lines)."""
    return " ".join(text.split())


def dry_run(capsys, *args) -> list[dict]:
    assert main(["submit", *map(str, args), "--dry-run"]) == 0
    return load_all(capsys.readouterr().out)


def test_dry_run_manifests_validate_and_carry_the_options(tmp_path, capsys):
    docs = dry_run(capsys, write(tmp_path, CONFIG), "--namespace", "cryo", "--image", "registry.example/cryocloud:1.2",
                   "--workers", "3", "--max-workers", "12", "--worker-cpu", "4", "--worker-memory", "16Gi",
                   "--credentials-secret", "s3-creds")
    for doc in docs:
        validate(doc)
    kinds = {d["kind"]: d for d in docs}
    assert sorted(kinds) == ["ConfigMap", "DaskAutoscaler", "DaskJob", "ServiceAccount"]
    assert {d["metadata"]["namespace"] for d in docs} == {"cryo"}
    job = kinds["DaskJob"]
    name = job["metadata"]["name"]
    assert name == "cryocloud-ts01-run" and VALID_CLUSTER_NAME.match(name)
    check_pod_security(job)
    check_workers_match_dask(job)
    cluster = job["spec"]["cluster"]["spec"]
    assert cluster["worker"]["replicas"] == 3
    (worker,) = cluster["worker"]["spec"]["containers"]
    assert worker["resources"] == {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "16Gi"}}
    assert arg_after(worker["args"], "--memory-limit") == "16Gi" and memory_bytes("16Gi") == 16 * 2**30
    assert kinds["DaskAutoscaler"]["spec"] == {"cluster": name, "minimum": 3, "maximum": 12}
    for role, pod in pods(job).items():
        assert pod["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"], role
        (container,) = pod["containers"]
        assert container["image"] == "registry.example/cryocloud:1.2", role
        assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}], role
    runner = pods(job)["job"]
    assert runner["restartPolicy"] == "Never"
    assert runner["containers"][0]["args"] == ["cryocloud", "run", "/config/run.yaml"]
    (mount,) = [m for m in runner["containers"][0]["volumeMounts"] if m["name"] == "config"]
    (volume,) = [v for v in runner["volumes"] if v["name"] == "config"]
    assert mount == {"name": "config", "mountPath": "/config", "readOnly": True}
    assert volume["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    # the mounted config is the user's, joined to the DaskJob's scheduler instead of a local cluster
    mounted = PipelineConfig(**yaml.safe_load(kinds["ConfigMap"]["data"]["run.yaml"]))
    assert mounted == PipelineConfig(**{**CONFIG, "cluster": {"kind": "address"}})


def test_no_autoscaler_without_max_workers_and_no_secret_without_one(tmp_path, capsys):
    docs = dry_run(capsys, write(tmp_path, CONFIG), "--name", "nightly")
    assert [d["kind"] for d in docs] == ["ServiceAccount", "ConfigMap", "DaskJob"]
    job = docs[2]
    assert job["metadata"]["name"] == "nightly" and docs[1]["metadata"]["name"] == "nightly-config"
    assert all("envFrom" not in c for pod in pods(job).values() for c in pod["containers"])


def test_the_mounted_config_joins_the_scheduler_the_operator_announces(tmp_path, capsys):
    """What the runner pod does: read run.yaml and connect() with DASK_SCHEDULER_ADDRESS set."""
    docs = dry_run(capsys, write(tmp_path, CONFIG))
    cfg = PipelineConfig(**yaml.safe_load(docs[1]["data"]["run.yaml"]))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        with dask.config.set({"scheduler-address": cluster.scheduler_address}):
            with connect(**cfg.cluster) as client:
                assert client.scheduler.address == cluster.scheduler_address
                assert client.submit(lambda x: x + 1, 1).result() == 2
        # without the operator's address the job fails loudly instead of computing on the runner pod alone
        with pytest.raises(CryocloudError, match="no address is set"):
            connect(**cfg.cluster)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"output": "results/run1"}, "field 'output'"),
        ({"input": "/data/ts01.zarr"}, "field 'input'"),
        ({"storage_options": {"key": "AKIA0000", "secret": "x"}}, "field 'storage_options.key'"),
        ({"storage_options": {"client_kwargs": {"aws_secret_access_key": "x"}}}, "storage_options.client_kwargs.aws_secret_access_key"),
        ({"reconstruct": {"binning": 0}}, "reconstruct.binning"),
    ],
)
def test_configs_a_cluster_cannot_run_are_refused(tmp_path, capsys, change, field):
    path = write(tmp_path, {**CONFIG, **change})
    assert main(["submit", str(path), "--dry-run"]) == 2
    err = flat(capsys.readouterr().err)
    assert path.name in err and field in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--worker-memory", "8GB"], "worker_memory"),
        (["--worker-memory", "500m"], "worker_memory"),
        (["--workers", "0"], "workers"),
        (["--workers", "4", "--max-workers", "2"], "max_workers"),
        (["--name", "Cryo_Job"], "job name 'Cryo_Job'"),
    ],
)
def test_bad_options_are_refused(tmp_path, capsys, args, message):
    assert main(["submit", str(write(tmp_path, CONFIG)), "--dry-run", *args]) == 2
    assert message in flat(capsys.readouterr().err)


def test_memory_quantities_mean_the_same_bytes_to_kubernetes_and_dask():
    kubernetes_bytes = {"8Gi": 8 * 2**30, "1.5Gi": 1.5 * 2**30, "500Mi": 500 * 2**20, "500M": 500e6, "2G": 2e9, "1Ki": 1024, "1k": 1000, "3Ti": 3 * 2**40, "4096": 4096}
    for quantity, expected in kubernetes_bytes.items():
        assert memory_bytes(quantity) == expected, quantity
    for bad in ("8GB", "8gi", "1e9", "-1Gi", "", "8 Gi"):
        with pytest.raises(CryocloudError, match="memory quantity"):
            memory_bytes(bad)


def test_job_names_are_valid_cluster_names():
    for path in ("run.yaml", "TS_01 tomo.yml", "x" * 80 + ".yaml", "___.yaml"):
        name = job_name(path)
        assert VALID_CLUSTER_NAME.match(name), name
        JobSpec(name=name)
    assert job_name("TS_01 tomo.yml") == "cryocloud-ts-01-tomo"


def test_submit_without_a_cluster_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["submit", str(write(tmp_path, CONFIG))]) == 2
    assert "cannot reach the Kubernetes API" in flat(capsys.readouterr().err)
