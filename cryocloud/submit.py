"""`cryocloud run` on Kubernetes: the manifests of a DaskJob of the dask-kubernetes operator, and their submission.

A job is four objects in one namespace:
  ServiceAccount  `cryocloud`: no API token mounted (the pods never call the Kubernetes API);
                  cloud credentials come from workload identity annotations on it, or from a Secret.
  ConfigMap       `<name>-config`: the pipeline config as `run.yaml`, with `cluster.kind: address` so
                  the job joins the scheduler the operator starts (it injects DASK_SCHEDULER_ADDRESS).
  DaskJob         `<name>`: the runner pod runs `cryocloud run /config/run.yaml`; the scheduler and
                  the workers run `dask scheduler` / `dask worker` from the same image. Each worker's
                  Dask memory limit equals its container memory limit.
  DaskAutoscaler  `<name>` (only when max_workers > workers): the operator scales between the two.

`manifests()` builds them as plain dicts (the same objects deploy/ and helm/cryocloud/ hold);
`submit()` creates them through the Kubernetes API (kr8s) and follows the job to its end.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from cryocloud import __version__
from cryocloud.errors import CryocloudError
from cryocloud.pipeline import PipelineConfig

DASK_API = "kubernetes.dask.org/v1"
DEFAULT_IMAGE = f"cryocloud/cryocloud:{__version__}"
CONFIG_DIR = "/config"
CONFIG_FILE = "run.yaml"
SCRATCH_DIR = "/tmp"  # the only writable path: the root filesystem is read-only
RUN_AS_USER = 10001  # the image's `cryocloud` user (deploy/Dockerfile)
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
WORKER_DASHBOARD_PORT = 8788
FINAL_STATES = ("Successful", "Failed")

# Kubernetes memory quantities Dask's parse_bytes reads the same way (no milli-bytes, no exponents).
_MEMORY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")
# A DaskJob name is also the DaskCluster's, and `<name>-scheduler` must be a DNS-1035 service name.
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,51}[a-z0-9])?$")
_CREDENTIAL_KEY = re.compile(r"(^key$|_key$|_key_id$|secret|password|token|credential|connection_string|sas)", re.I)
_REMOTE_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "abfss", "adl")


@dataclass(frozen=True)
class JobSpec:
    """Where and how a pipeline job runs. Memory is a Kubernetes quantity (e.g. "8Gi"); cpu in cores."""

    name: str
    namespace: str = "default"
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    workers: int = 2
    max_workers: int | None = None
    worker_cpu: int = 2
    worker_memory: str = "8Gi"
    worker_gpus: int = 0
    scheduler_cpu: str = "1"
    scheduler_memory: str = "2Gi"
    runner_cpu: str = "1"
    runner_memory: str = "2Gi"
    scratch_size: str = "20Gi"
    service_account: str = "cryocloud"
    credentials_secret: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise CryocloudError(
                f"job name {self.name!r}: expected lowercase letters, digits and '-', starting with a letter, "
                "at most 53 characters (the scheduler Service is <name>-scheduler)"
            )
        for what, value in (("workers", self.workers), ("worker_cpu", self.worker_cpu)):
            if value < 1:
                raise CryocloudError(f"{what}: expected a positive integer, got {value}")
        if self.worker_gpus < 0:
            raise CryocloudError(f"worker_gpus: expected 0 or more, got {self.worker_gpus}")
        if self.max_workers is not None and self.max_workers < self.workers:
            raise CryocloudError(f"max_workers: expected at least workers ({self.workers}), got {self.max_workers}")
        for what in ("worker_memory", "scheduler_memory", "runner_memory", "scratch_size"):
            memory_bytes(getattr(self, what), what)


def memory_bytes(quantity: str, what: str = "memory") -> int:
    """Bytes of a Kubernetes memory quantity ("8Gi" -> 8589934592).

    The quantities accepted here mean the same bytes to Kubernetes and to Dask's parse_bytes, so a
    worker gets the container's memory limit verbatim as its `--memory-limit`.
    """
    from dask.utils import parse_bytes

    if not isinstance(quantity, str) or not _MEMORY.match(quantity):
        raise CryocloudError(f"{what}: expected a Kubernetes memory quantity such as 8Gi or 500M, got {quantity!r}")
    return int(parse_bytes(quantity))


def job_name(config_path: str | Path) -> str:
    """A DaskJob name from a config file name: `cryocloud-<stem>`, lowercased and cut to a valid length."""
    stem = re.sub(r"[^a-z0-9]+", "-", Path(config_path).stem.lower()).strip("-")
    return f"cryocloud-{stem}"[:53].rstrip("-") if stem else "cryocloud"


def _credential_keys(options: Any, prefix: str = "storage_options") -> list[str]:
    if not isinstance(options, dict):
        return []
    found = []
    for key, value in options.items():
        path = f"{prefix}.{key}"
        if _CREDENTIAL_KEY.search(str(key)) and value not in (None, False, ""):
            found.append(path)
        found += _credential_keys(value, path)
    return found


def check_config(config: PipelineConfig, source: str) -> None:
    """Refuse a config a cluster cannot run: local paths (pods have no shared disk) or inline credentials."""
    if "://" not in config.output or config.output.split("://", 1)[0] not in _REMOTE_SCHEMES:
        raise CryocloudError(
            f"{source}: field 'output': a job on Kubernetes writes to object storage; "
            f"expected an s3://, gs:// or az:// URL, got {config.output!r}"
        )
    if config.input and "://" not in config.input:
        raise CryocloudError(f"{source}: field 'input': expected a URL the cluster can read (s3://...), got a local path {config.input!r}")
    leaked = _credential_keys(config.storage_options)
    if leaked:
        raise CryocloudError(
            f"{source}: field '{leaked[0]}': credentials never go into the config; put them in a Secret "
            "(--credentials-secret) or use workload identity on the ServiceAccount"
        )


def job_config(config: PipelineConfig) -> dict:
    """The config the runner pod reads: the user's, joined to the DaskJob's scheduler."""
    data = config.model_dump(mode="json", exclude_defaults=True)
    data["cluster"] = {"kind": "address"}
    return data


def _labels(spec: JobSpec, component: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": "cryocloud", "app.kubernetes.io/instance": spec.name}
    if component:
        labels["app.kubernetes.io/component"] = component
    return labels


def _resources(cpu: str | int, memory: str, gpus: int = 0) -> dict:
    limits: dict[str, Any] = {"memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)  # the DaskJob CRD types quantities as strings
    return {"requests": {"cpu": str(cpu), "memory": memory}, "limits": limits}


CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}


def _container(spec: JobSpec, name: str, args: list[str], resources: dict, ports: list[dict], mounts: list[dict]) -> dict:
    container: dict[str, Any] = {
        "name": name,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "args": args,
        "resources": resources,
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH_DIR}, *mounts],
    }
    if ports:
        container["ports"] = ports
    if spec.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.credentials_secret}}]
    return container


def _pod(spec: JobSpec, container: dict, volumes: list[dict] = (), restart_never: bool = False) -> dict:
    pod: dict[str, Any] = {
        "serviceAccountName": spec.service_account,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": spec.scratch_size}}, *volumes],
    }
    if restart_never:
        pod["restartPolicy"] = "Never"
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    return pod


def _port(name: str, number: int) -> dict:
    return {"name": name, "containerPort": number, "protocol": "TCP"}


def daskjob(spec: JobSpec) -> dict:
    """The DaskJob: runner pod, scheduler pod and Service, worker group."""
    config_volume = {"name": "config", "configMap": {"name": f"{spec.name}-config"}}
    config_mount = {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}
    runner = _container(
        spec, "job", ["cryocloud", "run", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        _resources(spec.runner_cpu, spec.runner_memory), [], [config_mount],
    )
    probe = {"httpGet": {"port": "http-dashboard", "path": "/health"}}
    scheduler = _container(
        spec, "scheduler",
        ["dask", "scheduler", "--port", str(SCHEDULER_PORT), "--dashboard-address", f":{DASHBOARD_PORT}"],
        _resources(spec.scheduler_cpu, spec.scheduler_memory),
        [_port("tcp-comm", SCHEDULER_PORT), _port("http-dashboard", DASHBOARD_PORT)], [],
    )
    scheduler["readinessProbe"] = {**probe, "initialDelaySeconds": 5, "periodSeconds": 10}
    scheduler["livenessProbe"] = {**probe, "initialDelaySeconds": 15, "periodSeconds": 20}
    worker = _container(
        spec, "worker",
        [
            "dask", "worker", "--name", "$(DASK_WORKER_NAME)",
            "--nthreads", str(spec.worker_cpu),
            "--memory-limit", spec.worker_memory,
            "--dashboard-address", f":{WORKER_DASHBOARD_PORT}",
        ],
        _resources(spec.worker_cpu, spec.worker_memory, spec.worker_gpus),
        [_port("http-dashboard", WORKER_DASHBOARD_PORT)], [],
    )
    service = {
        "type": "ClusterIP",
        "selector": {"dask.org/cluster-name": spec.name, "dask.org/component": "scheduler"},
        "ports": [
            {"name": "tcp-comm", "protocol": "TCP", "port": SCHEDULER_PORT, "targetPort": "tcp-comm"},
            {"name": "http-dashboard", "protocol": "TCP", "port": DASHBOARD_PORT, "targetPort": "http-dashboard"},
        ],
    }
    return {
        "apiVersion": DASK_API,
        "kind": "DaskJob",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": _labels(spec)},
        "spec": {
            "job": {"spec": _pod(spec, runner, [config_volume], restart_never=True)},
            "cluster": {
                "spec": {
                    "worker": {"replicas": spec.workers, "spec": _pod(spec, worker)},
                    "scheduler": {"spec": _pod(spec, scheduler), "service": service},
                }
            },
        },
    }


def manifests(config: PipelineConfig, spec: JobSpec) -> list[dict]:
    """ServiceAccount, ConfigMap, DaskJob and (with max_workers) DaskAutoscaler for one pipeline run."""
    meta = {"namespace": spec.namespace, "labels": _labels(spec)}
    docs = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": spec.service_account, "namespace": spec.namespace, "labels": {"app.kubernetes.io/name": "cryocloud"}},
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{spec.name}-config", **meta},
            "data": {CONFIG_FILE: yaml.safe_dump(job_config(config), sort_keys=False)},
        },
        daskjob(spec),
    ]
    if spec.max_workers is not None and spec.max_workers > spec.workers:
        docs.append({
            "apiVersion": DASK_API,
            "kind": "DaskAutoscaler",
            "metadata": {"name": spec.name, **meta},
            "spec": {"cluster": spec.name, "minimum": spec.workers, "maximum": spec.max_workers},
        })
    return docs


class _Dumper(yaml.SafeDumper):
    """Writes shared sub-objects out in full: manifests read better without YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(docs: list[dict]) -> str:
    """A multi-document YAML stream, as `kubectl apply -f -` reads it."""
    return "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=False) for d in docs)


def _kr8s_class(doc: dict):
    from kr8s.objects import new_class

    return new_class(doc["kind"], doc["apiVersion"], namespaced=True)


def _api(namespace: str):
    try:
        import kr8s
    except ImportError:
        raise CryocloudError("cryocloud submit needs kr8s: pip install 'cryocloud[k8s]'") from None
    try:
        return kr8s.api(namespace=namespace)
    except Exception as exc:  # kr8s raises ValueError/OSError variants when no kubeconfig or service account is usable
        raise CryocloudError(f"cannot reach the Kubernetes API (KUBECONFIG or in-cluster service account): {exc}") from None


def submit(
    docs: list[dict],
    *,
    follow: bool = True,
    poll_s: float = 5.0,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> str:
    """Create the objects (an existing ServiceAccount is kept) and, with `follow`, wait for the job's end.

    Returns the DaskJob's final `status.jobStatus` ("Successful" or "Failed"), or "Submitted" without `follow`.
    The runner pod's log is streamed while it runs.
    """
    namespace = docs[0]["metadata"]["namespace"]
    api = _api(namespace)
    job = None
    for doc in docs:
        obj = _kr8s_class(doc)(doc, namespace=namespace, api=api)
        if doc["kind"] == "ServiceAccount" and obj.exists():
            continue
        try:
            obj.create()
        except Exception as exc:  # kr8s ServerError carries the API's reason
            raise CryocloudError(f"creating {doc['kind']} {doc['metadata']['name']} in {namespace}: {exc}") from None
        log(f"created {doc['kind']} {namespace}/{doc['metadata']['name']}")
        if doc["kind"] == "DaskJob":
            job = obj
    if not follow:
        return "Submitted"
    return follow_job(job, poll_s=poll_s, log=log)


def follow_job(job: Any, *, poll_s: float, log: Callable[[str], None]) -> str:
    """Print the DaskJob's status changes and its runner's log until the job ends."""
    from kr8s.objects import Pod

    seen, streamed = None, False
    while True:
        job.refresh()
        status = job.raw.get("status", {}) or {}
        state = status.get("jobStatus")
        if state != seen:
            log(f"DaskJob {job.name}: {state or 'pending'}")
            seen = state
        runner = status.get("jobRunnerPodName")
        if state == "Running" and runner and not streamed:
            for line in Pod.get(runner, namespace=job.namespace, api=job.api).logs(follow=True):
                log(line)
            streamed = True
        if state in FINAL_STATES:
            return state
        time.sleep(poll_s)


# ------------------------------------------------------------------------------ chart schema
#: keys of the pipeline config the chart sets from its own values (pipeline.input / output, the cluster)
CHART_OWNED_KEYS = ("input", "inputs", "output", "cluster")
CONFIG_DEFINITION_PREFIX = "pipelineConfig."


def chart_config_schema() -> tuple[dict, dict]:
    """The Helm chart's `pipeline.config` schema derived from `PipelineConfig`'s pydantic JSON schema.

    Returns (schema of `pipeline.config`, definitions to merge into the chart schema's
    ``definitions``). Draft 7 form: pydantic's ``$defs`` become ``definitions`` named
    ``pipelineConfig.<Model>``; the keys the chart owns (input, inputs, output, cluster) are
    removed and refused; ``stages`` items are the known stage names; ``storage_options`` refuses
    credential-like keys at any depth (credentials come from a Secret or workload identity).
    """
    import json

    from cryocloud.pipeline.config import STAGE_NAMES

    raw = json.dumps(PipelineConfig.model_json_schema())
    schema = json.loads(raw.replace('"#/$defs/', f'"#/definitions/{CONFIG_DEFINITION_PREFIX}'))
    definitions = {f"{CONFIG_DEFINITION_PREFIX}{name}": body for name, body in schema.pop("$defs", {}).items()}
    for key in CHART_OWNED_KEYS:
        schema["properties"].pop(key, None)
    schema["propertyNames"] = {"not": {"enum": list(CHART_OWNED_KEYS)}}
    schema["description"] = "further `cryocloud run` config keys (PipelineConfig); input, output and cluster come from the values"
    schema.pop("title", None)
    stages = schema["properties"]["stages"]
    for option in stages.get("anyOf", [stages]):
        if option.get("type") == "array":
            option["items"] = {"type": "string", "enum": list(STAGE_NAMES)}
    no_credentials = {"not": {"pattern": f"(?i){_CREDENTIAL_KEY.pattern}"}}
    definitions[f"{CONFIG_DEFINITION_PREFIX}storageOptions"] = {
        "description": "credentials never go here: use credentials.secretName or workload identity",
        "type": "object",
        "propertyNames": no_credentials,
        "additionalProperties": {"anyOf": [{"$ref": f"#/definitions/{CONFIG_DEFINITION_PREFIX}storageOptions"}, {"not": {"type": "object"}}]},
    }
    schema["properties"]["storage_options"] = {"anyOf": [{"$ref": f"#/definitions/{CONFIG_DEFINITION_PREFIX}storageOptions"}, {"type": "null"}]}
    return schema, definitions


def chart_schema_with_config(chart_schema: dict) -> dict:
    """`chart_schema` (values.schema.json) with `pipeline.config` and its definitions replaced by the derived ones."""
    config, definitions = chart_config_schema()
    out = dict(chart_schema)
    kept = {k: v for k, v in (chart_schema.get("definitions") or {}).items() if not k.startswith(CONFIG_DEFINITION_PREFIX)}
    out["definitions"] = {**kept, **definitions}
    pipeline = dict(out["properties"]["pipeline"])
    pipeline["properties"] = {**pipeline["properties"], "config": config}
    out["properties"] = {**out["properties"], "pipeline": pipeline}
    return out
