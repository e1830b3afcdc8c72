"""deploy/: the Kubernetes manifests validate, the kustomization builds what `cryocloud submit` builds,
and the image is pinned and unprivileged."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cryocloud.pipeline import PipelineConfig, load_config
from cryocloud.submit import RUN_AS_USER, SCRATCH_DIR, JobSpec, check_config, manifests

from k8s_validation import check_pod_security, check_workers_match_dask, load_all, validate

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(p for p in DEPLOY.glob("*.yaml") if p.name not in ("kustomization.yaml", "run.yaml"))
# what deploy/ holds, as `cryocloud submit` builds it (the header of deploy/daskjob.yaml says so)
DEPLOY_SPEC = JobSpec(name="cryocloud", namespace="cryocloud", max_workers=8, credentials_secret="cryocloud-credentials")


def kustomize(folder: Path) -> list[dict]:
    """The objects `kubectl kustomize` builds from the features deploy/kustomization.yaml uses."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert set(k) <= {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "generatorOptions"}
    docs = [d for r in k["resources"] for d in load_all((folder / r).read_text())]
    assert k["generatorOptions"]["disableNameSuffixHash"] is True
    for gen in k.get("configMapGenerator", []):
        data = {Path(f).name: (folder / f).read_text() for f in gen["files"]}
        labels = gen.get("options", {}).get("labels")
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"], **({"labels": labels} if labels else {})}, "data": data})
    for d in docs:
        d["metadata"]["namespace"] = k["namespace"]
    return docs


def by_kind(docs: list[dict]) -> dict[str, dict]:
    out = {d["kind"]: d for d in docs}
    assert len(out) == len(docs), "one object of each kind expected"
    return out


def same_objects(built: list[dict], expected: list[dict]) -> None:
    """Equal objects; ConfigMaps compare their pipeline config as validated configs (comments differ)."""
    built, expected = by_kind(built), by_kind(expected)
    assert set(built) == set(expected)
    for kind in built:
        a, b = copy.deepcopy(built[kind]), copy.deepcopy(expected[kind])
        if kind == "ConfigMap":
            a_cfg = {k: yaml.safe_load(v) for k, v in a.pop("data").items()}
            b_cfg = {k: yaml.safe_load(v) for k, v in b.pop("data").items()}
            assert set(a_cfg) == set(b_cfg)
            for key in a_cfg:
                assert PipelineConfig(**a_cfg[key]) == PipelineConfig(**b_cfg[key]), key
        assert a == b, kind


@pytest.mark.slow
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_in_deploy_validates(path):
    docs = load_all(path.read_text())
    assert docs
    for doc in docs:
        validate(doc)


@pytest.mark.slow
def test_validator_rejects_what_an_api_server_rejects():
    job = yaml.safe_load((DEPLOY / "daskjob.yaml").read_text())
    typo = copy.deepcopy(job)
    worker = typo["spec"]["cluster"]["spec"]["worker"]
    worker["spec"]["containers"][0]["resouces"] = worker["spec"]["containers"][0].pop("resources")
    with pytest.raises(jsonschema.ValidationError, match="resouces"):
        validate(typo)
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["cluster"]["spec"]["worker"]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate(wrong_type)
    no_job = copy.deepcopy(job)
    del no_job["spec"]["job"]
    with pytest.raises(jsonschema.ValidationError, match="'job' is a required property"):
        validate(no_job)
    bad_name = copy.deepcopy(job)
    bad_name["metadata"]["name"] = "Cryo_Cloud"
    with pytest.raises(jsonschema.ValidationError, match="name"):
        validate(bad_name)
    sa = yaml.safe_load((DEPLOY / "serviceaccount.yaml").read_text())
    sa["automountToken"] = False
    with pytest.raises(jsonschema.ValidationError, match="automountToken"):
        validate(sa)


@pytest.mark.slow
def test_kustomization_builds_what_cryocloud_submit_builds():
    built = kustomize(DEPLOY)
    for doc in built:
        validate(doc)
    same_objects(built, manifests(load_config(DEPLOY / "run.yaml"), DEPLOY_SPEC))
    job = by_kind(built)["DaskJob"]
    check_pod_security(job)
    check_workers_match_dask(job)
    config_volume = next(v for v in job["spec"]["job"]["spec"]["volumes"] if v["name"] == "config")
    assert config_volume["configMap"]["name"] == by_kind(built)["ConfigMap"]["metadata"]["name"]
    assert by_kind(built)["DaskAutoscaler"]["spec"]["cluster"] == job["metadata"]["name"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
def test_kubectl_kustomize_matches_and_validates():
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=120, check=True).stdout
    built = load_all(out)
    for doc in built:
        validate(doc)
    same_objects(built, kustomize(DEPLOY))


def test_run_config_is_runnable_on_a_cluster():
    cfg = load_config(DEPLOY / "run.yaml")
    check_config(cfg, "deploy/run.yaml")
    assert cfg.cluster == {"kind": "address"}
    assert "key" not in (cfg.storage_options or {})


def test_dockerfile_is_slim_pinned_and_unprivileged():
    text = (DEPLOY / "Dockerfile").read_text()
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert bases and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", bases[0]), bases
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    assert re.search(r"pip install --constraint constraints\.txt \"\.\[s3,k8s\]\"", text)
    assert "COPY deploy/constraints.txt ./constraints.txt" in text
    (user,) = re.findall(r"^USER (\S+)$", text, re.M)
    assert user == f"{RUN_AS_USER}:{RUN_AS_USER}"
    env = dict(re.findall(r"(\w+)=(\S+)", text.split("ENV PATH", 1)[1].split("USER", 1)[0]))
    for var in ("HOME", "DASK_TEMPORARY_DIRECTORY", "MPLCONFIGDIR", "NUMBA_CACHE_DIR", "XDG_CACHE_HOME"):
        assert env[var].startswith(SCRATCH_DIR), var
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") :].count("!cryocloud/") == 1 and "!deploy/constraints.txt" in ignore


def test_constraints_pin_every_runtime_dependency():
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and re.fullmatch(r"[A-Za-z0-9_.+!-]+", version), line
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for text in [*project["dependencies"], *extras["s3"], *extras["k8s"]]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in deploy/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} does not satisfy {req.specifier}"
