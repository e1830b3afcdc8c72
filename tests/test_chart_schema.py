"""The Helm chart's `pipeline.config` schema is derived from PipelineConfig (deploy/chart_schema.py): they agree,
a config `cryocloud run` refuses also fails the chart's schema (and `helm template` where Helm is present),
and a config it accepts passes both."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import jsonschema
import pydantic
import pytest
from test_deploy_helm import HAVE_SDK, HELM_BIN, SCHEMA, HelmFailed, helm, merged

from cryocloud.pipeline import PipelineConfig
from cryocloud.submit import chart_schema_with_config

ROOT = Path(__file__).resolve().parents[1]


def chart_errors(config: dict) -> list[str]:
    """Messages of the chart schema's errors for `pipeline.config` = `config`, with those inside anyOf branches."""
    validator = jsonschema.Draft7Validator(SCHEMA)
    errors = list(validator.iter_errors(merged({"pipeline": {"config": config}})))
    return [e.message for error in errors for e in [error, *error.context]]


def test_chart_schema_is_derived_from_pipeline_config():
    assert chart_schema_with_config(SCHEMA) == SCHEMA, "run: python deploy/chart_schema.py"
    script = runpy.run_path(str(ROOT / "deploy" / "chart_schema.py"))
    assert script["main"](["--check"]) == 0
    config = SCHEMA["properties"]["pipeline"]["properties"]["config"]
    fields = set(PipelineConfig.model_fields) - {"input", "inputs", "output", "cluster"}
    assert set(config["properties"]) == fields and config["additionalProperties"] is False


GOOD = {"stages": ["simulate", "ctf", "align", "reconstruct"], "reconstruct": {"binning": 2, "filter": "sirt"},
        "storage_options": {"endpoint_url": "http://minio:9000", "client_kwargs": {"region_name": "eu-west-1"}}}
BAD = [
    ({"reconstruct": {"filter": "ramp"}}, "'ramp' is not one of"),
    ({"reconstruct": {"binning": 0}}, "less than the minimum"),
    ({"reconstruct": {"thickness": 64}}, "Additional properties are not allowed"),
    ({"stages": ["reconstruct", "denoize"]}, "'denoize' is not one of"),
    ({"report": "maybe"}, "is not of type 'boolean'"),
    ({"simulate": {"preset": "huge"}}, "'huge' is not one of"),
]


def test_good_config_passes_both():
    assert chart_errors(GOOD) == []
    PipelineConfig.model_validate({**GOOD, "output": "s3://bucket/run"})


@pytest.mark.parametrize("config, message", BAD, ids=[json.dumps(c) for c, _ in BAD])
def test_bad_config_fails_both(config, message):
    errors = chart_errors(config)
    assert any(message in e for e in errors), errors
    with pytest.raises(pydantic.ValidationError):
        PipelineConfig.model_validate({**config, "output": "s3://bucket/run"})


@pytest.mark.parametrize("config", [{"output": "s3://elsewhere"}, {"cluster": {"kind": "local"}},
                                    {"storage_options": {"client_kwargs": {"aws_secret_access_key": "x"}}}, {"storage_options": {"secret": "x"}}])
def test_chart_owned_keys_and_credentials_are_refused(config):
    assert chart_errors(config)


@pytest.mark.slow
@pytest.mark.skipif(not (HAVE_SDK or HELM_BIN), reason="neither helm-python-sdk nor a helm binary is installed")
def test_helm_template_refuses_a_bad_pipeline_config():
    assert helm("template", merged({"pipeline": {"config": GOOD}}))["docs"]
    with pytest.raises(HelmFailed, match="filter"):
        helm("template", merged({"pipeline": {"config": {"reconstruct": {"filter": "ramp"}}}}))
