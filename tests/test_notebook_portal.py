"""Execute notebooks/portal_in_place.ipynb against a portal-layout bucket on the moto S3 endpoint (named by
AWS_ENDPOINT_URL_S3, as a user would point at a copy of the bucket) and a local Dask cluster.

The published run is a `cryocloud run` of the digital twin (12 ribosomes, 16 A voxels): its raw tilt
series, alignment, tomogram and the true particles as the portal's ribosome annotation. The notebook
must find every annotated ribosome of its region and write a copick overlay into the output bucket.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbclient
import nbformat
import numpy as np
import pytest
from distributed import LocalCluster
from portal_layout import create_portal_bucket, output_bucket, portal_objects, portal_run_from_pipeline

from cryocloud.pipeline import PipelineConfig, run_pipeline
from cryocloud.store import open_url
from cryocloud.store.portal.copick import from_copick

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "portal_in_place.ipynb"
TWIN = {"shape_zyx": [48, 128, 128], "pixel_size_a": 16.0, "n_particles": 12, "tilt_step": 3.0, "seed": 1}
DS, RUN = "10001", "TS_026"


@pytest.mark.slow
def test_portal_notebook_processes_a_run_in_place(s3_endpoint, tmp_path, monkeypatch):
    run_dir = tmp_path / "twin"
    run_pipeline(PipelineConfig(output=str(run_dir), stages=["ctf", "align", "reconstruct"], report=False,
                                simulate={"preset": "toy", "overrides": TWIN}))
    opts = create_portal_bucket(s3_endpoint)
    published = portal_run_from_pipeline(opts, str(run_dir), DS, RUN)
    before = portal_objects(s3_endpoint)
    out = f"{output_bucket(s3_endpoint)}/results"
    work = tmp_path / "work"
    work.mkdir()
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=":0") as cluster:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
        monkeypatch.setenv("CRYOCLOUD_NOTEBOOK_PORTAL_RUN", f"portal://{DS}/{RUN}")
        monkeypatch.setenv("CRYOCLOUD_NOTEBOOK_OUTPUT_URL", out)
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
        nb = nbformat.read(NOTEBOOK, as_version=4)
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"scheduler: {cluster.scheduler_address}" in text  # joined the cluster, did not start its own
    assert text.count("dask.array") == 2  # tilt series and tomogram opened lazily
    assert "tomogram 1: 16.000 A, size (z, y, x) (48, 128, 128), WBP" in text
    assert "annotation ribosome v1.0 at 16.000 A: ['OrientedPoint']" in text
    assert "alignment (json): tilt axis" in text
    found, total = map(int, re.search(r"found (\d+) of (\d+) portal ribosome annotations in the region", text).groups())
    in_region = int(np.sum(published["positions"][:, 1] <= 63 * 16.0))
    assert total == in_region >= 4 and found == total
    n_picks = int(re.search(r"(\d+) picks above", text).group(1))
    assert f"{n_picks} picks written" in text and n_picks >= found
    # the copick overlay in the output bucket, and nothing written into the working folder or the portal
    storage = {"endpoint_url": s3_endpoint}
    with open_url(f"{out}/ExperimentRuns/{RUN}/Picks/cryocloud_1_ribosome.json", "r", storage_options=storage) as fh:
        picks = from_copick(fh.read())
    assert len(picks) == n_picks and set(picks.tomogram) == {RUN}
    with open_url(f"{out}/copick_config.json", "r", storage_options=storage) as fh:
        config = json.load(fh)
    assert config["config_type"] == "cryoet_data_portal" and config["dataset_ids"] == [int(DS)] and config["overlay_root"] == out
    assert config["pickable_objects"][0]["name"] == "ribosome"
    with open_url(f"{out}/ExperimentRuns/{RUN}/VoxelSpacing16.000/tm-scores.zarr/.zattrs", "r", storage_options=storage) as fh:
        assert "multiscales" in json.load(fh)
    figures = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(figures) == 2
    assert not list(work.iterdir()), "the notebook wrote into its working folder instead of the output URL"
    assert portal_objects(s3_endpoint) == before  # the portal was only read
