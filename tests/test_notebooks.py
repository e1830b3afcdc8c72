"""Execute the notebooks in notebooks/ against the local S3 endpoint (moto) and a local Dask cluster.

Notebooks with a dedicated test (a tests/*.py file that names the notebook) are left to it; every
other notebook runs here and must finish without an error. object_storage_matching.ipynb reads a
`cryocloud run` output written to S3 and must find the simulated particles.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbclient
import nbformat
import pytest
from distributed import LocalCluster

from cryocloud.pipeline import PipelineConfig, run_pipeline

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
# the digital twin the matching notebook searches: 12 ribosomes at 16 A voxels, +-60 deg in 3 deg steps
TWIN = {"shape_zyx": [48, 128, 128], "pixel_size_a": 16.0, "n_particles": 12, "tilt_step": 3.0, "seed": 1}


def without_dedicated_test() -> list[Path]:
    others = [p.read_text() for p in Path(__file__).parent.glob("*.py") if p.name != Path(__file__).name]
    return [nb for nb in sorted(NOTEBOOKS.glob("*.ipynb")) if not any(nb.name in text for text in others)]


def execute(path: Path, workdir: Path) -> list:
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    return outputs


def stream_text(outputs: list) -> str:
    return "".join(o.get("text", "") for o in outputs if o.output_type == "stream")


def figures(outputs: list) -> list:
    return [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]


def check_object_storage_matching(outputs: list, cluster: LocalCluster) -> None:
    text = stream_text(outputs)
    assert f"scheduler: {cluster.scheduler_address}" in text  # joined the cluster, did not start its own
    assert "dask.array" in text  # the tomogram was opened lazily
    found, total = map(int, re.search(r"found (\d+) of (\d+) true particles in the region", text).groups())
    assert total >= 4 and found == total
    assert int(re.search(r"(\d+) picks above", text).group(1)) >= found
    assert len(figures(outputs)) == 1


CHECKS = {"object_storage_matching.ipynb": check_object_storage_matching}


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=":0") as c:
        yield c


def test_the_matching_notebook_has_no_dedicated_test_elsewhere():
    assert NOTEBOOKS / "object_storage_matching.ipynb" in without_dedicated_test()


@pytest.mark.slow
@pytest.mark.parametrize("path", without_dedicated_test(), ids=lambda p: p.name)
def test_notebook_executes(path, s3_bucket, cluster, tmp_path, monkeypatch):
    run_url = f"{s3_bucket.url}/runs/twin"
    run_pipeline(PipelineConfig(output=run_url, storage_options=s3_bucket.storage_options, simulate={"preset": "toy", "overrides": TWIN}))
    monkeypatch.setenv("CRYOCLOUD_NOTEBOOK_RUN_URL", run_url)
    monkeypatch.setenv("CRYOCLOUD_NOTEBOOK_STORAGE_OPTIONS", json.dumps(s3_bucket.storage_options))
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
    outputs = execute(path, tmp_path)
    CHECKS.get(path.name, lambda outputs, cluster: None)(outputs, cluster)
    assert not list(tmp_path.iterdir()), "the notebook wrote into its working folder instead of the run URL"
