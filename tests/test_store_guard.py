"""Inputs are never written (cryocloud.store.guard) and lost chunks are never read as zeros (cryocloud.store.ngff).

The CLI cases live in tests/test_reliability_bad_input_guard.py; these tests pin the rules themselves: every
command declares its inputs and outputs, the store edge refuses writes over protected inputs even when an
entry point forgot to name an output, label images may go under an input image's labels/ group, a chunk lost
after an image was opened is reported as missing, and images cryocloud did not write follow the zarr rule.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import typer
import zarr

from cryocloud.cli import app, main
from cryocloud.errors import StoreError
from cryocloud.model import Tomogram
from cryocloud.store import image_info, open_url, read_tomogram, resolve, write_mrc, write_tomogram
from cryocloud.store.guard import overlap, protect, protected_inputs, refuse_input_overlap
from cryocloud.store.ngff import COMPLETION_KEY, open_image
from cryocloud.store.textfiles import write_text


def _commands(group: typer.Typer, prefix: str = "") -> dict[str, object]:
    found = {f"{prefix}{c.name or c.callback.__name__}": c.callback for c in group.registered_commands}
    for sub in group.registered_groups:
        found.update(_commands(sub.typer_instance, f"{prefix}{sub.name} "))
    return found


def test_every_command_declares_its_inputs_and_outputs():
    """A new command that forgets `guarded(...)` fails here, before a user can point it at its own input."""
    import cryocloud.cli  # noqa: F401  (registers the command modules)

    commands = _commands(app)
    assert len(commands) >= 30, sorted(commands)
    undeclared = sorted(name for name, callback in commands.items() if not hasattr(callback, "cryocloud_io"))
    assert undeclared == []
    writers = {name for name, callback in commands.items() if callback.cryocloud_io["outputs"]}
    assert {"reconstruct", "convert", "match", "extract-peaks", "run", "watch", "segment membranes", "denoise deconv"} <= writers


def _tomo(url: str, shape=(8, 16, 16), chunks=(8, 8, 8)) -> np.ndarray:
    data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    write_tomogram(Tomogram.from_array(data, pixel_size=4.0), url, levels=1, chunks=chunks)
    return data


def test_overlap_relations_on_resolved_urls(tmp_path):
    folder = resolve(tmp_path / "in" / "ts.zarr")
    (protected,) = protected_inputs([folder])
    assert overlap(resolve(f"{tmp_path}/in/ts.zarr/"), protected) == "is"
    assert overlap(resolve(f"{tmp_path}/in/x/../ts.zarr/0"), protected) == "lies inside"
    assert overlap(resolve(tmp_path / "in"), protected) == "holds"
    assert overlap(resolve(tmp_path / "in" / "ts.zarr2"), protected) is None  # a sibling sharing the prefix
    s3 = protected_inputs([resolve("s3://bucket/data/ts.zarr")])[0]
    assert overlap(resolve("s3a://bucket//data/ts.zarr/labels"), s3) == "lies inside"
    assert overlap(resolve("s3://bucket/data/ts.zarr.bak"), s3) is None
    assert overlap(resolve(tmp_path / "in" / "ts.zarr"), s3) is None  # another protocol


def test_labels_group_is_allowed_only_when_declared(tmp_path):
    image = resolve(tmp_path / "tomo.zarr")
    refuse_input_overlap([resolve(tmp_path / "tomo.zarr" / "labels" / "membranes")], [image], labels=True)
    with pytest.raises(StoreError, match="lies inside"):
        refuse_input_overlap([resolve(tmp_path / "tomo.zarr" / "labels" / "membranes")], [image])
    with pytest.raises(StoreError, match="lies inside"):  # the labels group itself holds other label images
        refuse_input_overlap([resolve(tmp_path / "tomo.zarr" / "labels")], [image], labels=True)


def test_store_edge_refuses_every_write_path_over_a_protected_input(tmp_path):
    """Writes an entry point did not declare (a figure, a text file, an MRC, an image) are refused while
    the input is protected; the input is untouched and nothing is created."""
    url = str(tmp_path / "in" / "tomo.zarr")
    data = _tomo(url)
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in (tmp_path / "in").rglob("*"))
    tomo = Tomogram.from_array(data, pixel_size=4.0)
    with protect([resolve(url)]):
        with pytest.raises(StoreError, match="field 'output'"):
            write_tomogram(tomo, url, overwrite=True)
        with pytest.raises(StoreError, match="lies inside"):
            write_mrc(tomo, f"{url}/copy.mrc")
        with pytest.raises(StoreError, match="lies inside"):
            write_text(f"{url}/notes.txt", "x")
        with pytest.raises(StoreError, match="lies inside"):
            open_url(f"{url}/figure.png", "wb")
        with pytest.raises(StoreError, match="holds"):
            write_tomogram(tomo, str(tmp_path / "in"), overwrite=True)
        write_text(tmp_path / "elsewhere.txt", "fine")  # outside the input: allowed
    write_text(f"{url}.txt", "fine")  # the protection ends with the block
    assert sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in (tmp_path / "in").rglob("*") if p.name != "tomo.zarr.txt") == before


@pytest.mark.slow
def test_segment_may_write_its_labels_under_the_input_image(tmp_path, capsys):
    """NGFF's own exception: `segment membranes IN.zarr IN.zarr/labels/NAME` leaves the image itself unchanged."""
    url = str(tmp_path / "tomo.zarr")
    _tomo(url, shape=(16, 32, 32), chunks=(16, 32, 32))
    files = {p: p.read_bytes() for p in Path(url).rglob("*") if p.is_file()}
    assert main(["segment", "membranes", url, f"{url}/labels/membranes"]) == 0, capsys.readouterr().err
    assert {p: p.read_bytes() for p in files} == files
    assert (Path(url) / "labels" / "membranes" / ".zattrs").exists()


def test_written_images_carry_the_completion_record(tmp_path):
    url = str(tmp_path / "t.zarr")
    _tomo(url, shape=(8, 16, 24), chunks=(8, 8, 8))
    image = open_image(resolve(url))
    assert image.is_strict
    assert image.attrs[COMPLETION_KEY]["chunks_per_level"] == [6]
    assert np.isnan(image.zarr_array(0).fill_value)


def test_chunk_lost_after_opening_is_reported_not_zeros(tmp_path):
    """The listing at open time saw every chunk; one deleted afterwards reads as NaN (the fill value) and is
    then reported as missing by name."""
    url = str(tmp_path / "t.zarr")
    _tomo(url)
    lazy = read_tomogram(url)
    chunk = Path(url) / "0" / "0" / "1" / "0"
    chunk.unlink()
    with pytest.raises(StoreError, match=r"chunk 0/1/0 of .*t\.zarr/0 is missing"):
        lazy.data.compute()


def test_images_cryocloud_did_not_write_follow_the_zarr_rule(tmp_path, capsys):
    """A plain NGFF image (no completion record) written the way ome-zarr-py does (empty chunks skipped): a
    chunk that is not stored is the fill value, and `info` says how many chunks are stored."""
    url = str(tmp_path / "plain.zarr")
    written = tmp_path / "written.zarr"
    data = _tomo(str(written))
    group = zarr.open_group(url, mode="w", zarr_format=2)
    arr = group.create_array("0", shape=data.shape, chunks=(8, 8, 8), dtype="float32", fill_value=0.0)
    arr[:, :8, :] = data[:, :8, :]  # the second row of chunks is never stored
    attrs = dict(open_image(resolve(str(written))).attrs)
    group.attrs.update({"multiscales": attrs["multiscales"]})
    values = read_tomogram(url).data.compute()
    assert np.array_equal(values[:, :8], data[:, :8]) and not values[:, 8:].any()
    info = image_info(url)
    assert not info["every_chunk_stored"]
    assert (info["levels"][0]["n_chunks"], info["levels"][0]["stored_chunks"]) == (4, 2)
    assert main(["info", url]) == 0
    assert "2/4 stored (2 read as the fill value)" in " ".join(capsys.readouterr().out.split())  # rich wraps lines


def test_info_reports_lost_chunks_of_a_cryocloud_image(tmp_path, capsys):
    url = str(tmp_path / "t.zarr")
    _tomo(url)
    os.remove(Path(url) / "0" / "0" / "0" / "1")
    assert main(["info", url]) == 0
    assert "3/4 stored (1 MISSING: data lost)" in " ".join(capsys.readouterr().out.split())
