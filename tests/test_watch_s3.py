"""Live mode on object storage: the watcher follows a bucket prefix on a real S3 endpoint (moto server)."""

import threading

import numpy as np
from distributed import Client
from test_watch import microscope

from cryocloud.pipeline import PipelineConfig
from cryocloud.simulate import preset, simulate
from cryocloud.store import read_tilt_series
from cryocloud.watch import WatchSettings, watch
import pytest

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end


def test_watch_follows_a_bucket_prefix(s3_bucket):
    """Movies and the mdoc arrive in a bucket prefix (which does not exist before the first object); results go to the bucket."""
    coarse = simulate(preset("toy", n_particles=3, frames_per_tilt=4, tilt_step=12.0, seed=4))  # 11 tilts
    fs = s3_bucket.fs()
    prefix = f"{s3_bucket.url[len('s3://'):]}/microscope"
    writer = threading.Thread(target=microscope, args=(lambda name, data: fs.pipe(f"{prefix}/{name}", data), coarse, "ts03"),
                              kwargs={"interval_s": 0.2})
    config = PipelineConfig(stages=[], storage_options=s3_bucket.storage_options)  # motion only: the local test reconstructs
    settings = WatchSettings(poll_s=0.3, quiet_s=30.0, tilts_per_series=11, max_series=1, timeout_s=300)
    with Client(n_workers=1, threads_per_worker=1) as client:
        writer.start()
        try:
            summary = watch(f"s3://{prefix}", f"{s3_bucket.url}/live", config, settings, client)
        finally:
            writer.join()
    series = summary["series"]["ts03"]
    assert series["state"] == "done" and series["n_corrected"] == 11
    assert series["complete_at_s"] - max(series["tilt_corrected_at_s"].values()) < 30.0  # by the tilt count, not the quiet period
    ts = read_tilt_series(f"{s3_bucket.url}/live/ts03/motion/tilt_series.zarr", storage_options=s3_bucket.storage_options)
    np.testing.assert_allclose(ts.tilt_angles, coarse.frames.tilt_angles, atol=0.01)  # sorted by angle, none dropped
    assert np.isfinite(ts.data[5].values).all()
    assert fs.exists(f"{prefix[: -len('microscope')]}live/ts03/report.html")
