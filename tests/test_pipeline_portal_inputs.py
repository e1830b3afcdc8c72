"""Portal locations as the input of the stages: a portal tomogram processed in place by `cryocloud run`
(ctf / align / reconstruct skipped, the run's tilt series giving angles and defocus), and the stage
commands (reconstruct, denoise deconv, average, ctf) on portal:// addresses and bucket keys, against a
portal-layout bucket on the moto S3 server (`portal_layout.publish_toy_run`). The portal is only read.
"""

from __future__ import annotations

import dask
import numpy as np
import pytest
from portal_layout import portal_objects, publish_toy_run

from cryocloud.cli import main
from cryocloud.errors import CryocloudError
from cryocloud.pick.evaluate import f_beta
from cryocloud.pipeline import PipelineConfig, run_pipeline
from cryocloud.store import read_tomogram
from cryocloud.store.portal import PORTAL_BUCKET
from cryocloud.store.portal.copick import from_copick

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end

DS, RUN = "10001", "TS_01"
STAGES = dict(denoise={"tile": 32, "overlap": 8}, match={"angular_increment_deg": 45.0, "subvolume": 64}, peaks={"n_false": None, "number": 8},
              report=False)


@pytest.fixture(scope="module")
def portal(s3_endpoint):
    """The toy portal run (raw tilt series, WBP tomogram, ribosome annotation); yields (endpoint, the simulation)."""
    import torch

    torch.set_num_threads(1)
    result = publish_toy_run(s3_endpoint, DS, RUN)
    with dask.config.set({"cryocloud.portal.endpoint_url": s3_endpoint}):
        yield s3_endpoint, result


def test_a_portal_tomogram_is_processed_in_place(portal, tmp_path):
    endpoint, result = portal
    before = portal_objects(endpoint)
    key = f"s3://{PORTAL_BUCKET}/{DS}/{RUN}/Reconstructions/VoxelSpacing10.000/Tomograms/1/{RUN}.zarr"
    out = tmp_path / "o"
    summary = run_pipeline(PipelineConfig(input=key, output=str(out), stages=["denoise", "match", "peaks"], **STAGES))
    assert summary["stages"] == ["input", "denoise", "match", "peaks"]
    assert summary["input"]["kind"] == "tomogram" and summary["input"]["n_tilts"] == 21 and summary["input"]["shape_zyx"] == [64, 64, 64]
    assert not (out / "reconstruct").exists()  # matched on the portal's tomogram, read in place
    run_dir = out / "ExperimentRuns" / RUN
    assert summary["copick"]["tomograms"] == {"cryocloud-deconv": str(run_dir / "VoxelSpacing10.000" / "cryocloud-deconv.zarr")}
    picks = from_copick((run_dir / "Picks" / "cryocloud_0_ribosome.json").read_text())
    assert len(picks) == 8 and f_beta(picks.positions, result.particles.positions, tolerance=60.0)["recall"] >= 0.5
    with pytest.raises(CryocloudError, match=r"\['align', 'reconstruct'\] need a tilt series"):
        run_pipeline(PipelineConfig(input=key, output=str(tmp_path / "o2"), stages=["align", "reconstruct", "match"]))
    assert portal_objects(endpoint) == before



def test_stage_commands_read_portal_addresses(portal, tmp_path, monkeypatch, capsys):
    """reconstruct from portal://DATASET/RUN; denoise deconv of a tomogram's bucket key takes the run's defocus;
    average gets the missing wedge from the run's tilt series; ctf refuses to write next to portal input."""
    from distributed import LocalCluster

    from cryocloud.cli.denoise_cmds import stored_defocus
    from cryocloud.store import read_mrc, write_particles_csv

    endpoint, result = portal
    before = portal_objects(endpoint)
    key = f"s3://{PORTAL_BUCKET}/{DS}/{RUN}/Reconstructions/VoxelSpacing10.000/Tomograms/1/{RUN}.zarr"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        flags = ["--endpoint-url", endpoint, "--scheduler", cluster.scheduler_address]
        assert main(["reconstruct", f"portal://{DS}/{RUN}", str(tmp_path / "rec.zarr"), "--binning", "2", *flags]) == 0
        assert main(["denoise", "deconv", key, str(tmp_path / "dn.zarr"), "--tile", "32", "--overlap", "8", *flags]) == 0
    rec = read_tomogram(str(tmp_path / "rec.zarr"))
    assert rec.pixel_size == 20.0 and rec.shape[1:] == (32, 32)
    true_defocus = float(np.mean(0.5 * (result.truth.defocus_u_a + result.truth.defocus_v_a)))
    assert stored_defocus(str(tmp_path / "dn.zarr"), None) == pytest.approx(true_defocus)
    write_particles_csv(result.particles, str(tmp_path / "particles.csv"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)  # `average` reads through the SDK's endpoint variable
    assert main(["average", f"portal://{DS}/{RUN}", str(tmp_path / "particles.csv"), str(tmp_path / "avg"), "--box", "16", "--iterations", "1"]) == 0
    assert read_mrc(str(tmp_path / "avg" / "average.mrc")).shape == (16, 16, 16)
    capsys.readouterr()
    assert main(["ctf", f"portal://{DS}/{RUN}/tiltseries", "--endpoint-url", endpoint]) == 2
    assert "'--output'" in capsys.readouterr().err
    assert portal_objects(endpoint) == before
