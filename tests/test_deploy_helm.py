"""helm/cryocloud: values.yaml against values.schema.json, bad values rejected, and, where Helm is
available (the helm-python-sdk package, Helm's Go SDK, or a `helm` binary), `helm lint` and
`helm template` whose output validates and equals what `cryocloud submit` builds."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from cryocloud.pipeline import PipelineConfig
from cryocloud.submit import JobSpec, manifests

from k8s_validation import check_pod_security, check_workers_match_dask, load_all, pods, validate

CHART = Path(__file__).resolve().parents[1] / "helm" / "cryocloud"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
HAVE_SDK = importlib.util.find_spec("helm_python") is not None
HELM_BIN = shutil.which("helm")
needs_helm = pytest.mark.skipif(not (HAVE_SDK or HELM_BIN), reason="neither helm-python-sdk nor a helm binary is installed")

# Helm's Go SDK runs in a child process: its runtime stays out of the test process (and its Dask workers).
_SDK = """
import json, sys
import helm_python as helm
req = json.load(sys.stdin)
try:
    if req["op"] == "lint":
        out = helm.lint(req["chart"], req["values"], strict=True, namespace=req["namespace"])
        print(json.dumps({"errors": [str(e) for e in out["errors"]], "messages": out["messages"]}))
    else:
        with helm.Chart.load(req["chart"]) as chart:
            files = chart.render(req["values"], name=req["name"], namespace=req["namespace"], is_install=True)
        print(json.dumps({"text": "\\n---\\n".join(t for f, t in sorted(files.items()) if f.endswith(".yaml"))}))
except helm.HelmError as exc:
    print(json.dumps({"failed": f"{type(exc).__name__}: {exc}"}))
"""


class HelmFailed(Exception):
    pass


def helm(op: str, values: dict, name: str = "cryo", namespace: str = "lab") -> dict:
    """`helm lint --strict` ({"errors": [...]}) or `helm template` ({"docs": [...]}) of the chart."""
    if HAVE_SDK:
        req = {"op": op, "chart": str(CHART), "values": values, "name": name, "namespace": namespace}
        proc = subprocess.run([sys.executable, "-c", _SDK], input=json.dumps(req), capture_output=True, text=True, timeout=120, check=True)
        out = json.loads(proc.stdout)
        if "failed" in out:
            raise HelmFailed(out["failed"])
        return out if op == "lint" else {"docs": load_all(out["text"])}
    values_file = CHART.parent / f".values-{name}.json"
    try:
        values_file.write_text(json.dumps(values))
        args = ["lint", "--strict", str(CHART)] if op == "lint" else ["template", name, str(CHART)]
        proc = subprocess.run([HELM_BIN, *args, "-n", namespace, "-f", str(values_file)], capture_output=True, text=True, timeout=120)
    finally:
        values_file.unlink(missing_ok=True)
    if op == "lint":
        return {"errors": [] if proc.returncode == 0 else [proc.stdout + proc.stderr]}
    if proc.returncode:
        raise HelmFailed(proc.stderr)
    return {"docs": load_all(proc.stdout)}


def merged(overrides: dict) -> dict:
    """values.yaml with `overrides` merged in, as `helm -f` does."""
    def merge(a, b):
        return {**a, **{k: merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v for k, v in b.items()}}
    return merge(copy.deepcopy(VALUES), overrides)


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


def test_values_yaml_validates_against_its_schema():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.validate(VALUES, SCHEMA, cls=jsonschema.Draft7Validator)


BAD_VALUES = [
    ({"worker": {"memory": "8GB"}}, "8GB"),
    ({"worker": {"memory": "500m"}}, "500m"),
    ({"worker": {"replicas": 0}}, "0"),
    ({"worker": {"cpu": "2"}}, "'2'"),
    ({"worker": {"gpus": -1}}, "-1"),
    ({"workers": 4}, "workers"),
    ({"image": {"pullPolicy": "Sometimes"}}, "Sometimes"),
    ({"pipeline": {"output": "results/run1"}}, "results/run1"),
    ({"pipeline": {"input": "/data/ts.zarr"}}, "/data/ts.zarr"),
    ({"pipeline": {"config": {"cluster": {"kind": "local"}}}}, "cluster"),
    ({"pipeline": {"config": {"storage_options": {"key": "AKIA0000", "secret": "x"}}}}, "key"),
    ({"pipeline": {"config": {"storage_options": {"client_kwargs": {"aws_secret_access_key": "x"}}}}}, "aws_secret_access_key"),
    ({"tolerations": [{"key": "gpu", "effect": "Sometimes"}]}, "Sometimes"),
    ({"credentials": {"secretName": "My_Secret"}}, "My_Secret"),
    ({"scheduler": {"cpu": "one"}}, "one"),
    ({"autoscaling": {"enabled": "yes"}}, "yes"),
]


@pytest.mark.parametrize("overrides, shown", BAD_VALUES, ids=[json.dumps(o)[:60] for o, _ in BAD_VALUES])
def test_bad_values_fail_the_schema(overrides, shown):
    with pytest.raises(jsonschema.ValidationError) as info:
        jsonschema.validate(merged(overrides), SCHEMA, cls=jsonschema.Draft7Validator)
    assert shown in str(info.value)


def test_templates_use_only_values_that_exist():
    """Every `.Values.a.b` in the templates is in values.yaml and in the schema (static check of the chart)."""
    used = set()
    for path in (CHART / "templates").iterdir():
        used |= set(re.findall(r"\.Values((?:\.\w+)+)", path.read_text()))
    assert len(used) > 20
    for ref in sorted(used):
        node, schema = VALUES, SCHEMA
        for key in ref.strip(".").split("."):
            assert isinstance(node, dict) and key in node, f".Values{ref} is not in values.yaml"
            node = node[key]
            schema = schema["properties"][key]
            if "$ref" in schema:
                schema = SCHEMA["definitions"][schema["$ref"].rsplit("/", 1)[1]]


@needs_helm
def test_helm_lint_strict_passes():
    assert helm("lint", VALUES)["errors"] == []


@pytest.mark.slow
@needs_helm
def test_default_install_validates_and_is_locked_down():
    docs = helm("template", VALUES)["docs"]
    kinds = by_kind(docs)
    assert sorted(kinds) == ["ConfigMap", "DaskJob", "ServiceAccount"]
    for doc in docs:
        validate(doc)
        assert doc["metadata"]["namespace"] == "lab"
    check_pod_security(kinds["DaskJob"])
    check_workers_match_dask(kinds["DaskJob"])
    assert kinds["ServiceAccount"]["automountServiceAccountToken"] is False


@pytest.mark.slow
@needs_helm
def test_chart_installs_what_cryocloud_submit_builds():
    toleration = {"key": "dedicated", "operator": "Equal", "value": "cryo", "effect": "NoSchedule"}
    values = merged({
        "image": {"repository": "registry.example/cryocloud", "tag": "1.2"},
        "pipeline": {"input": "s3://lab/ts01.zarr", "output": "s3://lab/runs/ts01", "config": {"stages": ["input", "reconstruct"], "reconstruct": {"binning": 2}}},
        "worker": {"replicas": 3, "cpu": 4, "memory": "16Gi", "gpus": 1},
        "autoscaling": {"enabled": True, "minimum": 3, "maximum": 12},
        "credentials": {"secretName": "s3-creds"},
        "nodeSelector": {"pool": "cryo"},
        "tolerations": [toleration],
    })
    rendered = by_kind(helm("template", values, name="ts01")["docs"])
    for doc in rendered.values():
        validate(doc)
    config = PipelineConfig(input="s3://lab/ts01.zarr", output="s3://lab/runs/ts01", stages=["input", "reconstruct"], reconstruct={"binning": 2})
    spec = JobSpec(name="ts01", namespace="lab", image="registry.example/cryocloud:1.2", workers=3, max_workers=12, worker_cpu=4,
                   worker_memory="16Gi", worker_gpus=1, credentials_secret="s3-creds", node_selector={"pool": "cryo"}, tolerations=[toleration])
    built = by_kind(manifests(config, spec))
    assert rendered["DaskJob"]["spec"] == built["DaskJob"]["spec"]
    assert rendered["DaskAutoscaler"]["spec"] == built["DaskAutoscaler"]["spec"]
    run = lambda doc: PipelineConfig(**yaml.safe_load(doc["data"]["run.yaml"]))  # noqa: E731
    assert run(rendered["ConfigMap"]) == run(built["ConfigMap"])
    (worker,) = pods(rendered["DaskJob"])["worker"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.slow
@needs_helm
def test_worker_placement_applies_to_workers_only():
    gpu = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    values = merged({"nodeSelector": {"pool": "cryo"}, "worker": {"gpus": 1, "nodeSelector": {"accelerator": "a100"}, "tolerations": [gpu]}})
    job = by_kind(helm("template", values)["docs"])["DaskJob"]
    validate(job)
    placed = pods(job)
    assert placed["worker"]["nodeSelector"] == {"pool": "cryo", "accelerator": "a100"} and placed["worker"]["tolerations"] == [gpu]
    for role in ("job", "scheduler"):
        assert placed[role]["nodeSelector"] == {"pool": "cryo"} and "tolerations" not in placed[role], role


@needs_helm
def test_without_the_operator_a_batch_job_runs_a_local_cluster():
    values = merged({"operator": {"enabled": False}, "autoscaling": {"enabled": True}, "worker": {"cpu": 8, "memory": "32Gi", "gpus": 1, "nodeSelector": {"accelerator": "a100"}}})
    kinds = by_kind(helm("template", values)["docs"])
    assert sorted(kinds) == ["ConfigMap", "Job", "ServiceAccount"]
    for doc in kinds.values():
        validate(doc)
    job = kinds["Job"]
    check_pod_security(job)
    pod = pods(job)["job"]
    (runner,) = pod["containers"]
    assert runner["args"] == ["cryocloud", "run", "/config/run.yaml"] and pod["restartPolicy"] == "Never"
    assert runner["resources"] == {"requests": {"cpu": "8", "memory": "32Gi"}, "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"}}
    assert pod["nodeSelector"] == {"accelerator": "a100"}
    cfg = PipelineConfig(**yaml.safe_load(kinds["ConfigMap"]["data"]["run.yaml"]))
    assert cfg.cluster == {"kind": "local", "n_workers": 8, "threads_per_worker": 1, "memory_limit": "auto"}
    assert job["spec"]["backoffLimit"] == 0


@needs_helm
@pytest.mark.parametrize(
    "overrides, name, message",
    [
        ({"worker": {"memory": "8GB"}}, "cryo", "/worker/memory"),
        ({"pipeline": {"config": {"storage_options": {"secret": "x"}}}}, "cryo", "invalid propertyName 'secret'"),
        ({"autoscaling": {"enabled": True, "minimum": 5, "maximum": 2}}, "cryo", "autoscaling.minimum must not exceed autoscaling.maximum"),
        ({}, "Cryo_Run", 'release name "Cryo_Run"'),
    ],
)
def test_helm_refuses_bad_installs(overrides, name, message):
    with pytest.raises(HelmFailed, match=re.escape(message)):
        helm("template", merged(overrides), name=name)
