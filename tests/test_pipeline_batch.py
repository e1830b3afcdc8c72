"""Batch: several tilt series in one run on a distributed cluster, at most batch.max_concurrent at a time."""

import json

import numpy as np
import pytest
import yaml

from cryocloud.cli import main
from cryocloud.errors import CryocloudError
from cryocloud.pipeline import correlation_with_truth, load_config
from cryocloud.simulate import preset, simulate
from cryocloud.store import read_tomogram, write_tilt_series

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Three toy tilt series (different specimens) in one folder, with their true volumes."""
    folder = tmp_path_factory.mktemp("batch_in")
    truths = {}
    for seed, name in enumerate(("ts_a", "ts_b", "ts_c")):
        result = simulate(preset("toy", n_particles=3, seed=seed))
        write_tilt_series(result.tilt_series, str(folder / f"{name}.zarr"))
        truths[name] = result.volume
    return folder, truths


def _config(tmp_path, **cfg):
    path = tmp_path / "batch.yaml"
    path.write_text(yaml.safe_dump({"stages": ["reconstruct"], "reconstruct": {"thickness_px": 64}, **cfg}))
    return path


def test_prefix_of_tilt_series_runs_concurrently_with_a_bound(inputs, tmp_path):
    folder, truths = inputs
    out = tmp_path / "out"
    cfg = _config(tmp_path, input=str(folder), output=str(out), batch={"max_concurrent": 2})
    assert main(["run", str(cfg), "--workers", "2"]) == 0
    batch = json.loads((out / "batch_summary.json").read_text())
    series = batch["series"]
    assert sorted(series) == ["ts_a", "ts_b", "ts_c"] and all(s["status"] == "done" for s in series.values())
    for name, truth in truths.items():
        tomo = read_tomogram(str(out / name / "reconstruct" / "tomogram.zarr"))
        own = correlation_with_truth(tomo, truth, np.zeros(3))
        others = [correlation_with_truth(tomo, t, np.zeros(3)) for n, t in truths.items() if n != name]
        assert own < -0.1 and all(abs(c) < abs(own) / 2 for c in others)  # each series reconstructed from its own input
        assert (out / name / "report.html").stat().st_size > 10_000
        assert json.loads((out / name / "summary.json").read_text())["stages"] == ["input", "reconstruct"]
    spans = sorted((s["started_s"], s["finished_s"]) for s in series.values())
    assert spans[1][0] < spans[0][1]  # the first two ran at the same time
    assert spans[2][0] >= min(spans[0][1], spans[1][1]) - 0.05  # the third waited for a free slot


def test_failed_series_is_recorded_and_the_others_finish(inputs, tmp_path, capsys):
    folder, _ = inputs
    out = tmp_path / "out"
    missing = str(tmp_path / "nothing.zarr")
    cfg = _config(tmp_path, inputs=[str(folder / "ts_a.zarr"), missing], output=str(out), batch={"max_concurrent": 1})
    assert main(["run", str(cfg), "--workers", "1"]) == 2
    assert "1 of 2 tilt series failed (nothing)" in capsys.readouterr().err
    series = json.loads((out / "batch_summary.json").read_text())["series"]
    assert series["ts_a"]["status"] == "done" and series["nothing"]["status"] == "failed"
    assert "nothing.zarr" in series["nothing"]["error"]
    assert series["nothing"]["started_s"] >= series["ts_a"]["finished_s"] - 0.05  # one at a time
    assert read_tomogram(str(out / "ts_a" / "reconstruct" / "tomogram.zarr")).shape == (64, 64, 64)


def test_batch_config_errors_name_the_key(tmp_path, inputs):
    folder, _ = inputs
    with pytest.raises(CryocloudError, match="either `input` or `inputs`"):
        load_config(_config(tmp_path, input="a.zarr", inputs=["b.zarr"]))
    with pytest.raises(CryocloudError, match="batch.max_concurrent"):
        load_config(_config(tmp_path, batch={"max_concurrent": 0}))
    same = _config(tmp_path, inputs=[str(folder / "ts_a.zarr"), str(tmp_path / "x" / "ts_a.zarr")], output=str(tmp_path / "o"))
    assert main(["run", str(same), "--workers", "1"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["run", str(_config(tmp_path, input=str(empty), output=str(tmp_path / "o2"))), "--workers", "1"]) == 2


def test_series_names_of_portal_addresses_are_their_runs():
    from cryocloud.pipeline.batch import series_name

    assert series_name("portal://10440/TS_5_4") == "TS_5_4"
    assert series_name("portal://10440/TS_5_4/tiltseries") == "TS_5_4"  # not "tiltseries": two runs would collide
    assert series_name("portal://10440/TS_5_4/tiltseries/17") == "TS_5_4_17"
    assert series_name("portal://10441/TS_01/vs/10.0/tomogram/3") == "TS_01_3"
    assert series_name("s3://cryoet-data-portal-public/10440/TS_5_4/TiltSeries/100/TS_5_4.zarr") == "TS_5_4"
    assert series_name("s3://my-bucket/in/ts_a.zarr") == "ts_a" and series_name("/data/ts_b.mrc.mdoc") == "ts_b"
