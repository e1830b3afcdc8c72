"""Bad-input corpus, part 2: outputs onto, inside or over an input, and lost chunks.

No command may write where its input is (`cryocloud.store.guard`), whatever `--overwrite` says, and a chunk
missing from an image cryocloud wrote is an error naming the array and the chunk key, never zeros. Each case
goes through the CLI and the shared checks of tests/badinput.py (exit 2, one line naming the file and the
field, inputs byte-identical, nothing complete-looking written).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from badinput import (
    Case, check_bad_input, mrc_file, text_file, tomo_zarr, ts_zarr,
)

pytestmark = pytest.mark.slow  # the bad-input corpus: one CLI run per case


# ------------------------------------------------------------------------------ outputs over inputs
def reconstruct_onto_input_with_overwrite(c: Case):
    url = ts_zarr(c)
    return ["reconstruct", url, url, "--overwrite"], ["ts.zarr", "field 'output'", "is the input"]


def reconstruct_inside_input(c: Case):
    url = ts_zarr(c)
    return ["reconstruct", url, f"{url}/tomo.zarr"], ["ts.zarr/tomo.zarr", "field 'output'", "lies inside the input"]


def convert_over_the_input_folder(c: Case):
    url = ts_zarr(c)
    return ["convert", url, str(c.inp), "--overwrite"], ["field 'output'", "holds the input", "ts.zarr"]


def output_through_a_symlink_to_the_input(c: Case):
    url = ts_zarr(c)
    link = c.out / "link"
    os.symlink(url, link)  # out/link -> in/ts.zarr: resolved, it is the input
    return ["reconstruct", url, str(link), "--overwrite"], ["field 'output'", "is the input", "ts.zarr"]


def output_under_a_symlinked_parent(c: Case):
    url = ts_zarr(c)
    os.symlink(url, c.out / "parent")
    return ["dose-weight", url, str(c.out / "parent" / "weighted.zarr")], ["field 'output'", "lies inside the input"]


def relative_and_dotted_output_path(c: Case):
    url = ts_zarr(c)
    dotted = f"{c.inp}/../in/./ts.zarr"
    return ["ctf-correct", url, dotted, "--overwrite"], ["field 'output'", "is the input"]


def denoise_in_place(c: Case):
    url = tomo_zarr(c)
    return ["denoise", "deconv", url, url, "--overwrite", "--defocus", "3"], ["tomo.zarr", "field 'output'", "is the input"]


def match_output_inside_tomogram(c: Case):
    tomo = tomo_zarr(c)
    template = mrc_file(c, "template.mrc", np.pad(np.ones((4, 4, 4), np.float32), 2))
    return ["match", tomo, template, f"{tomo}/match"], ["tomo.zarr/match", "field 'output'", "lies inside"]


def match_output_is_the_template(c: Case):
    tomo = tomo_zarr(c)
    template = mrc_file(c, "template.mrc", np.pad(np.ones((4, 4, 4), np.float32), 2))
    return ["match", tomo, template, template], ["template.mrc", "field 'output'", "is the input"]


def segment_output_inside_tomogram_not_labels(c: Case):
    tomo = tomo_zarr(c)
    return ["segment", "membranes", tomo, f"{tomo}/membranes.zarr"], ["field 'output'", "lies inside the input"]


def align_xf_inside_input(c: Case):
    url = ts_zarr(c)
    return ["align", url, str(c.out / "aligned.zarr"), "--xf", f"{url}/ts.xf"], ["ts.zarr/ts.xf", "field 'output'", "lies inside"]


def average_output_is_the_particles_file(c: Case):
    tomo = tomo_zarr(c)
    table = text_file(c, "particles.csv", "x,y,z\n32,32,32\n")
    return ["average", tomo, table, str(c.inp)], ["field 'output'", "holds the input"]


def curate_apply_over_decisions(c: Case):
    picks = text_file(c, "picks.csv", "x,y,z\n1,2,3\n")
    decisions = text_file(c, "decisions.csv", "index,accept\n0,1\n")
    return ["curate", "apply", picks, decisions, decisions], ["decisions.csv", "field 'output'", "is the input"]


def train_picker_model_inside_tomogram(c: Case):
    tomo = tomo_zarr(c)
    picks = text_file(c, "picks.csv", "x,y,z\n32,32,32\n")
    return ["train-picker", tomo, picks, f"{tomo}/model", "--radius", "20"], ["tomo.zarr/model", "field 'output'", "lies inside"]


def watch_output_inside_watched_folder(c: Case):
    incoming = c.inp / "frames"
    incoming.mkdir()
    return ["watch", str(incoming), str(incoming / "processed"), "--timeout", "1"], ["frames/processed", "field 'output'", "lies inside"]


def pipeline_output_inside_its_input(c: Case):
    url = ts_zarr(c)
    cfg = text_file(c, "config.yaml", f"input: {url}\noutput: {url}/run\n")
    return ["run", cfg], ["ts.zarr/run", "field 'output'", "lies inside the input"]


def pipeline_output_holds_its_template(c: Case):
    url = ts_zarr(c)
    template = mrc_file(c, "template.mrc", np.pad(np.ones((4, 4, 4), np.float32), 2))
    cfg = text_file(c, "config.yaml", f"input: {url}\nmatch:\n  template: {template}\n")
    return ["run", cfg, "--output", str(c.inp)], ["field 'output'", "holds the input"]


def s3_output_inside_input(c: Case):
    from cryocloud.store import write_tilt_series
    from badinput import ANGLES
    from cryocloud.model import TiltSeries

    url = f"{c.s3.url}/ts.zarr"
    ts = TiltSeries.from_array(np.ones((len(ANGLES), 16, 16), np.float32), tilt_angles=ANGLES, pixel_size=4.0)
    write_tilt_series(ts, url, levels=1, storage_options=c.s3.storage_options)
    endpoint = c.s3.storage_options["endpoint_url"]
    # another spelling of the same key: s3a scheme, doubled and trailing slashes
    inside = url.replace("s3://", "s3a://").replace("/ts.zarr", "//ts.zarr/") + "tomo.zarr"
    return ["reconstruct", url, inside, "--endpoint-url", endpoint], ["field 'output'", "lies inside the input", "ts.zarr"]


# ------------------------------------------------------------------------------------ lost chunks
def _delete_chunk(url: str, level: str = "0", index: int = 1) -> str:
    from pathlib import Path

    chunks = sorted(p for p in (Path(url) / level).rglob("*") if p.is_file() and not p.name.startswith("."))
    chunk = chunks[index]
    chunk.unlink()
    return chunk.relative_to(Path(url) / level).as_posix()


def tilt_series_chunk_deleted(c: Case):
    url = ts_zarr(c, data=np.random.default_rng(4).normal(size=(5, 16, 16)).astype(np.float32))
    key = _delete_chunk(url)
    return ["reconstruct", url, str(c.out / "tomo.zarr"), "--thickness", "8"], ["ts.zarr/0", key, "field 'chunk'", "missing"]


def tomogram_chunk_deleted(c: Case):
    from cryocloud.model import Tomogram
    from cryocloud.store import write_tomogram

    url = str(c.inp / "tomo.zarr")
    data = np.random.default_rng(5).normal(size=(8, 16, 16)).astype(np.float32)
    write_tomogram(Tomogram.from_array(data, pixel_size=4.0), url, levels=1, chunks=(8, 8, 8))
    key = _delete_chunk(url)
    return ["convert", url, str(c.out / "tomo.mrc")], ["tomo.zarr/0", key, "missing"]


def lower_level_chunk_deleted(c: Case):
    from cryocloud.model import Tomogram
    from cryocloud.store import write_tomogram

    url = str(c.inp / "tomo.zarr")
    data = np.random.default_rng(6).normal(size=(32, 32, 32)).astype(np.float32)
    write_tomogram(Tomogram.from_array(data, pixel_size=4.0), url, levels=2, chunks=(8, 8, 8))
    key = _delete_chunk(url, level="1", index=3)
    return ["denoise", "deconv", url, str(c.out / "d.zarr"), "--defocus", "3"], ["tomo.zarr/1", key, "missing"]


def s3_chunk_deleted(c: Case):
    from cryocloud.model import Tomogram
    from cryocloud.store import write_tomogram

    url = f"{c.s3.url}/tomo.zarr"
    data = np.random.default_rng(7).normal(size=(8, 16, 16)).astype(np.float32)
    write_tomogram(Tomogram.from_array(data, pixel_size=4.0), url, levels=1, chunks=(8, 8, 8), storage_options=c.s3.storage_options)
    fs = c.s3.fs()
    chunk = sorted(k for k in fs.find(f"{c.s3.url}/tomo.zarr/0") if not k.rsplit("/", 1)[-1].startswith("."))[0]
    fs.rm(chunk)
    return ["convert", url, str(c.out / "tomo.mrc"), "--endpoint-url", c.s3.storage_options["endpoint_url"]], ["tomo.zarr/0", "missing"]


CASES = [
    reconstruct_onto_input_with_overwrite, reconstruct_inside_input, convert_over_the_input_folder,
    output_through_a_symlink_to_the_input, output_under_a_symlinked_parent, relative_and_dotted_output_path, denoise_in_place,
    match_output_inside_tomogram, match_output_is_the_template, segment_output_inside_tomogram_not_labels, align_xf_inside_input,
    average_output_is_the_particles_file, curate_apply_over_decisions, train_picker_model_inside_tomogram,
    watch_output_inside_watched_folder, pipeline_output_inside_its_input, pipeline_output_holds_its_template, s3_output_inside_input,
    tilt_series_chunk_deleted, tomogram_chunk_deleted, lower_level_chunk_deleted, s3_chunk_deleted,
]


@pytest.mark.parametrize("make", CASES, ids=[f.__name__ for f in CASES])
def test_bad_input_is_a_clear_user_error(make, tmp_path, capsys, request, small_cluster):
    check_bad_input(make, tmp_path, capsys, request)
