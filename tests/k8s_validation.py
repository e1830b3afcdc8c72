"""Offline validation of Kubernetes manifests, as a strict API server would do it.

Core kinds: the Kubernetes OpenAPI schemas shipped by kubernetes-validate (strict: unknown fields
are errors). dask-kubernetes kinds: the openAPIV3Schema of the CRDs shipped inside the
dask-kubernetes package, made strict the same way (an object with `properties` and no
`additionalProperties` or `x-kubernetes-preserve-unknown-fields` rejects unknown fields, which is
what `kubectl apply` with server-side strict field validation does).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.33"
DASK_GROUP = "kubernetes.dask.org"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def crd_dir() -> Path:
    import dask_kubernetes

    return Path(dask_kubernetes.__file__).parent / "operator" / "deployment" / "helm" / "dask-kubernetes-operator" / "crds"


def _strict(schema: dict) -> dict:
    out = {k: (_strict(v) if isinstance(v, dict) else v) for k, v in schema.items() if k != "properties"}
    if "items" in schema and isinstance(schema["items"], dict):
        out["items"] = _strict(schema["items"])
    if "properties" in schema:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


@functools.cache
def crd_schemas() -> dict[str, dict]:
    """{kind: strict JSON schema of the stored version} for every dask-kubernetes CRD."""
    schemas = {}
    for path in sorted(crd_dir().glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
        schema = _strict(version["schema"]["openAPIV3Schema"])
        schema["properties"].update(apiVersion={"const": f"{DASK_GROUP}/{version['name']}"}, kind={"const": crd["spec"]["names"]["kind"]}, metadata={"type": "object"})
        schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
        schemas[crd["spec"]["names"]["kind"]] = schema
    return schemas


def validate(doc: dict) -> None:
    """Raise jsonschema.ValidationError (or SchemaNotFoundError) if `doc` is not a valid object."""
    name = (doc.get("metadata") or {}).get("name", "")
    if not _NAME.match(name) or len(name) > 253:
        raise jsonschema.ValidationError(f"metadata.name {name!r} is not a valid object name")
    if doc.get("apiVersion", "").startswith(DASK_GROUP + "/"):
        schema = crd_schemas()[doc["kind"]]
        jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)
        # metadata is an ObjectMeta like any object's: check it inside the smallest core object
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}, KUBERNETES_VERSION, strict=True)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def load_all(text: str) -> list[dict]:
    """The non-empty documents of a YAML stream."""
    return [d for d in yaml.safe_load_all(text) if d]


def pods(doc: dict) -> dict[str, dict]:
    """{role: pod spec} of a DaskJob (job, scheduler, worker) or of a batch Job (job)."""
    if doc["kind"] == "Job":
        return {"job": doc["spec"]["template"]["spec"]}
    cluster = doc["spec"]["cluster"]["spec"]
    return {"job": doc["spec"]["job"]["spec"], "scheduler": cluster["scheduler"]["spec"], "worker": cluster["worker"]["spec"]}


def check_pod_security(doc: dict) -> None:
    """Every pod: non-root, no API token; every container: read-only root, no escalation, no capabilities."""
    for role, pod in pods(doc).items():
        assert pod["automountServiceAccountToken"] is False, role
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0, role
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, role
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], role
            assert {"name": "scratch", "mountPath": "/tmp"} in c["volumeMounts"], role


def arg_after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def check_workers_match_dask(job: dict) -> None:
    """Each worker's Dask memory limit is its container memory limit (= request); threads = CPU request."""
    from dask.utils import parse_bytes

    (worker,) = pods(job)["worker"]["containers"]
    resources = worker["resources"]
    assert resources["limits"]["memory"] == resources["requests"]["memory"]
    assert arg_after(worker["args"], "--memory-limit") == resources["limits"]["memory"]
    assert parse_bytes(arg_after(worker["args"], "--memory-limit")) > 0
    assert arg_after(worker["args"], "--nthreads") == str(resources["requests"]["cpu"])
