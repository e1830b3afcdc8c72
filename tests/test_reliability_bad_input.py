"""Bad-input corpus: every case goes through the CLI and must give exit 2, a message that names the
file and the field / expectation, no modified input (hashes before and after) and no output that
looks complete (an OME-Zarr without its multiscales metadata or a `.partial` file is not).

Each case builds its inputs under `in/` and names its outputs under `out/` (or an S3 bucket).
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from badinput import (
    ANGLES, MDOC_HEADER, Case, check_bad_input, complete_looking_outputs, edit_attrs, first_chunk, mdoc_section, mrc_file,
    stack_with_tlt, text_file, tomo_zarr, ts_zarr,
)
from cryocloud.cli import main

pytestmark = pytest.mark.slow  # the bad-input corpus: one CLI run per case


# ------------------------------------------------------------------------------------- the cases
# each returns (argv, fragments the error message must contain)
def truncated_chunk(c: Case):
    url = ts_zarr(c)
    chunk = first_chunk(url)
    chunk.write_bytes(chunk.read_bytes()[:10])
    return ["convert", url, str(c.out / "ts.mrc")], ["chunk", "truncated or corrupt"]


def corrupt_chunk(c: Case):
    url = ts_zarr(c)
    chunk = first_chunk(url)
    chunk.write_bytes(bytes(np.random.default_rng(3).integers(0, 256, chunk.stat().st_size, dtype=np.uint8)))
    return ["reconstruct", url, str(c.out / "tomo.zarr"), "--thickness", "8"], ["chunk", "truncated or corrupt"]


def missing_multiscales(c: Case):
    url = ts_zarr(c)
    edit_attrs(url, lambda a: a.pop("multiscales"))
    return ["reconstruct", url, str(c.out / "tomo.zarr")], ["ts.zarr", "multiscales", "incomplete"]


def wrong_axes(c: Case):
    url = ts_zarr(c)
    edit_attrs(url, lambda a: a["multiscales"][0].update(axes=[{"name": n, "type": "space"} for n in "abc"]))
    return ["reconstruct", url, str(c.out / "tomo.zarr")], ["ts.zarr", "multiscales.axes", "expected ('tilt', 'y', 'x')"]


def missing_dataset(c: Case):
    url = ts_zarr(c)
    edit_attrs(url, lambda a: a["multiscales"][0]["datasets"][0].update(path="7"))
    return ["reconstruct", url, str(c.out / "tomo.zarr")], ["ts.zarr", "multiscales.datasets", "'7'"]


def negative_scale(c: Case):
    url = ts_zarr(c)
    edit_attrs(url, lambda a: a["multiscales"][0]["datasets"][0]["coordinateTransformations"][0].update(scale=[1.0, -4.0, -4.0]))
    return ["reconstruct", url, str(c.out / "tomo.zarr")], ["ts.zarr", "pixel_size", "positive scale"]


def unknown_unit(c: Case):
    url = tomo_zarr(c)
    edit_attrs(url, lambda a: [ax.update(unit="parsec") for ax in a["multiscales"][0]["axes"]])
    return ["convert", url, str(c.out / "t.mrc")], ["tomo.zarr", "multiscales.axes.unit", "parsec"]


def wrong_kind(c: Case):
    url = tomo_zarr(c)
    return ["reconstruct", url, str(c.out / "tomo.zarr")], ["tomo.zarr", "expected ('tilt', 'y', 'x')"]


def invalid_cryocloud_block(c: Case):
    url = ts_zarr(c)
    edit_attrs(url, lambda a: a["cryocloud"].update(pixel_size=-1))
    return ["reconstruct", url, str(c.out / "tomo.zarr")], ["ts.zarr", "cryocloud", "pixel_size"]


def tilt_angles_missing_in_block(c: Case):
    url = ts_zarr(c)
    edit_attrs(url, lambda a: a["cryocloud"].update(per_tilt={}))
    return ["reconstruct", url, str(c.out / "tomo.zarr")], ["ts.zarr", "cryocloud", "tilt_angle"]


def contradictory_tilt_count(c: Case):
    url = ts_zarr(c)
    edit_attrs(url, lambda a: a["cryocloud"]["per_tilt"].update({k: v[:3] for k, v in a["cryocloud"]["per_tilt"].items()}))
    return ["reconstruct", url, str(c.out / "tomo.zarr")], ["ts.zarr", "per_tilt", "3 values for 5 tilts"]


def tlt_count_mismatch(c: Case):
    stack, tlt = stack_with_tlt(c, "-10\n0\n10\n")
    return ["convert", stack, str(c.out / "ts.zarr"), "--tilt-angles", tlt], ["stack.tlt", "tilt_angle", "3 angles but 5 images"]


def tlt_out_of_range(c: Case):
    stack, tlt = stack_with_tlt(c, "-120\n-60\n0\n60\n120\n")
    return ["convert", stack, str(c.out / "ts.zarr"), "--tilt-angles", tlt], ["stack.tlt", "tilt_angle", "[-90, 90]"]


def tlt_not_numbers(c: Case):
    stack, tlt = stack_with_tlt(c, "-20\n-10\nzero\n10\n20\n")
    return ["convert", stack, str(c.out / "ts.zarr"), "--tilt-angles", tlt], ["stack.tlt", "line 3", "tilt_angle"]


def mdoc_count_mismatch(c: Case):
    stack = mrc_file(c, "stack.mrc", np.ones((3, 16, 16), np.float32))
    mdoc = text_file(c, "stack.mrc.mdoc", MDOC_HEADER + mdoc_section(0, "-10") + mdoc_section(1, "10"))
    return ["convert", stack, str(c.out / "ts.zarr"), "--mdoc", mdoc], ["stack.mrc.mdoc", "ZValue", "2 images", "(3, 16, 16)"]


def mdoc_pixel_size_contradicts_header(c: Case):
    stack = mrc_file(c, "stack.mrc", np.ones((2, 16, 16), np.float32), voxel=8.0)
    mdoc = text_file(c, "stack.mrc.mdoc", MDOC_HEADER + mdoc_section(0, "-10") + mdoc_section(1, "10"))
    return ["convert", stack, str(c.out / "ts.zarr"), "--mdoc", mdoc], ["stack.mrc.mdoc", "PixelSpacing", "4 A contradicts", "8 A"]


def mdoc_missing_tilt_angle(c: Case):
    stack = mrc_file(c, "stack.mrc", np.zeros((2, 16, 16), np.float32) + 1)
    text = MDOC_HEADER + mdoc_section(0, "-10") + "[ZValue = 1]\nExposureDose = 3.0\n\n"
    mdoc = text_file(c, "stack.mrc.mdoc", text)
    return ["convert", stack, str(c.out / "ts.zarr"), "--mdoc", mdoc], ["stack.mrc.mdoc", "TiltAngle", "section 1"]


def mdoc_not_a_number(c: Case):
    stack = mrc_file(c, "stack.mrc", np.zeros((2, 16, 16), np.float32) + 1)
    mdoc = text_file(c, "stack.mrc.mdoc", MDOC_HEADER + mdoc_section(0, "-10") + mdoc_section(1, "ten"))
    return ["convert", stack, str(c.out / "ts.zarr"), "--mdoc", mdoc], ["stack.mrc.mdoc", "TiltAngle", "expected a number"]


def mdoc_no_sections(c: Case):
    stack = mrc_file(c, "stack.mrc", np.zeros((2, 16, 16), np.float32) + 1)
    mdoc = text_file(c, "stack.mrc.mdoc", "this is not an mdoc\n")
    return ["convert", stack, str(c.out / "ts.zarr"), "--mdoc", mdoc], ["stack.mrc.mdoc"]


def nan_in_tilt_series(c: Case):
    data = np.ones((len(ANGLES), 16, 16), np.float32)
    data[2, 5, 5] = np.nan
    url = ts_zarr(c, data=data)
    return ["reconstruct", url, str(c.out / "tomo.zarr"), "--thickness", "8"], ["ts.zarr", "NaN or infinite", "chunk"]


def inf_in_mrc(c: Case):
    data = np.ones((4, 16, 16), np.float32)
    data[1, 2, 3] = np.inf
    mrc = mrc_file(c, "vol.mrc", data)
    return ["convert", mrc, str(c.out / "vol.zarr")], ["vol.mrc", "NaN or infinite"]


def zero_size_mrc(c: Case):
    mrc = mrc_file(c, "empty.mrc", np.zeros((0, 16, 16), np.float32))
    return ["convert", mrc, str(c.out / "empty.zarr")], ["empty.mrc", "shape", "empty"]


def zero_size_zarr(c: Case):
    url = str(c.inp / "empty.zarr")
    import zarr

    group = zarr.open_group(url, mode="w", zarr_format=2)
    group.create_array("0", shape=(0, 16, 16), chunks=(1, 16, 16), dtype="float32")
    ok = json.loads(json.dumps(tomo_attrs()))
    group.attrs.update(ok)
    return ["convert", url, str(c.out / "empty.mrc")], ["empty.zarr", "shape", "empty"]


def tomo_attrs() -> dict:
    from cryocloud.store.ngff import multiscales_attrs
    from cryocloud.store.images import TOMOGRAM_AXES

    return multiscales_attrs(TOMOGRAM_AXES, 1, 4.0, (True, True, True), "0.4", "x")


def anisotropic_pixels(c: Case):
    url = tomo_zarr(c)
    edit_attrs(url, lambda a: a["multiscales"][0]["datasets"][0]["coordinateTransformations"][0].update(scale=[4.0, 4.0, 6.0]))
    return ["convert", url, str(c.out / "t.mrc")], ["tomo.zarr", "pixel_size", "4", "6"]


def template_pixel_mismatch(c: Case):
    tomo = tomo_zarr(c)
    template = mrc_file(c, "template.mrc", np.ones((8, 8, 8), np.float32), voxel=400.0)
    return ["match", tomo, template, str(c.out / "match")], ["template.mrc", "400 A", "larger than the tomogram"]


def complex_dtype(c: Case):
    url = str(c.inp / "complex.zarr")
    import zarr

    group = zarr.open_group(url, mode="w", zarr_format=2)
    group.create_array("0", shape=(4, 8, 8), chunks=(4, 8, 8), dtype="complex64")
    group["0"][:] = 1 + 1j
    group.attrs.update(tomo_attrs())
    return ["convert", url, str(c.out / "c.mrc")], ["complex.zarr", "dtype", "complex64"]


def mrc_bad_header(c: Case):
    path = c.inp / "junk.mrc"
    path.write_bytes(b"not an mrc file at all" * 3)
    return ["convert", str(path), str(c.out / "junk.zarr")], ["junk.mrc", "MRC"]


def particles_csv_malformed(c: Case):
    tomo = tomo_zarr(c)
    table = text_file(c, "particles.csv", "x,y,z\n1,2\n3,four,5\n")
    return ["average", tomo, table, str(c.out / "avg")], ["particles.csv"]


def star_malformed(c: Case):
    star = text_file(c, "picks.star", "data_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n1.0 2.0\n")
    decisions = text_file(c, "decisions.csv", "index,accept\n0,1\n")
    return ["curate", "apply", star, decisions, str(c.out / "accepted.csv"), "--tomogram", tomo_zarr(c)], ["picks.star", "rlnCoordinateZ"]


def ndjson_malformed(c: Case):
    picks = text_file(c, "picks.ndjson", '{"type": "orientedPoint", "location": {"x": 1, "y": 2}}\nnot json\n')
    decisions = text_file(c, "decisions.csv", "index,accept\n0,1\n")
    return ["curate", "apply", picks, decisions, str(c.out / "accepted.csv"), "--tomogram", tomo_zarr(c)], ["picks.ndjson line 1", "location"]


def yaml_malformed(c: Case):
    cfg = text_file(c, "config.yaml", "input: [unclosed\noutput: x\n")
    return ["run", cfg, "--output", str(c.out / "run")], ["config.yaml", "YAML"]


def yaml_unknown_key(c: Case):
    cfg = text_file(c, "config.yaml", f"output: {c.out / 'run'}\nreconstruct:\n  thicknes_px: 32\n")
    return ["run", cfg], ["config.yaml", "reconstruct.thicknes_px", "Extra inputs are not permitted"]


def yaml_wrong_type(c: Case):
    cfg = text_file(c, "config.yaml", f"output: {c.out / 'run'}\nreconstruct:\n  binning: two\n")
    return ["run", cfg], ["config.yaml", "reconstruct.binning", "integer"]


def yaml_python_tag(c: Case):
    marker = c.out / "pwned"
    cfg = text_file(c, "config.yaml", f"output: !!python/object/apply:os.system ['touch {marker}']\n")
    return ["run", cfg], ["config.yaml", "YAML", "python/object"]


def local_url_missing(c: Case):
    return ["reconstruct", str(c.inp / "nowhere.zarr"), str(c.out / "tomo.zarr")], ["nowhere.zarr", "does not exist"]


def unsupported_scheme(c: Case):
    return ["info", "ftp://example.org/ts.zarr"], ["ftp://example.org/ts.zarr", "url", "unsupported URL scheme"]


def s3_key_missing(c: Case):
    return (["info", f"{c.s3.url}/nothing.zarr", "--endpoint-url", c.s3.storage_options["endpoint_url"]],
            [f"{c.s3.url}/nothing.zarr", "does not exist"])


def s3_bucket_missing_on_write(c: Case):
    url = tomo_zarr(c)
    return (["convert", url, "s3://no-such-bucket-cryocloud/t.zarr", "--endpoint-url", c.s3.storage_options["endpoint_url"]],
            ["s3://no-such-bucket-cryocloud", "bucket"])


def output_under_a_file(c: Case):
    url = ts_zarr(c)
    blocker = c.out / "blocker"
    blocker.write_text("a regular file, not a folder")
    return ["reconstruct", url, str(blocker / "tomo.zarr")], ["blocker", "not a folder"]


def template_larger_than_tomogram(c: Case):
    tomo = tomo_zarr(c, shape=(12, 12, 12))
    g = np.indices((32, 32, 32)) - 16
    template = mrc_file(c, "big.mrc", (np.sum(g**2, axis=0) < 14**2).astype(np.float32))
    return ["match", tomo, template, str(c.out / "match")], ["big.mrc", "field 'template'", "32 voxels", "12 voxels"]


def convert_stack_without_angles(c: Case):
    stack = mrc_file(c, "ts.st", np.random.default_rng(8).normal(size=(5, 16, 16)).astype(np.float32))
    return ["convert", stack, str(c.out / "ts.zarr")], ["ts.st", "field 'tilt_angle'", "tilt-series stack", "--as-volume"]


def convert_mrc_with_mdoc_beside_without_angles(c: Case):
    stack = mrc_file(c, "stack.mrc", np.random.default_rng(9).normal(size=(2, 16, 16)).astype(np.float32))
    text_file(c, "stack.mrc.mdoc", MDOC_HEADER + mdoc_section(0, "-10") + mdoc_section(1, "10"))
    return ["convert", stack, str(c.out / "ts.zarr")], ["stack.mrc", "tilt angles beside it", "stack.mrc.mdoc", "--mdoc"]


CASES = [
    truncated_chunk, corrupt_chunk, missing_multiscales, wrong_axes, missing_dataset, negative_scale, unknown_unit,
    wrong_kind, invalid_cryocloud_block, tilt_angles_missing_in_block, contradictory_tilt_count, tlt_count_mismatch,
    tlt_out_of_range, tlt_not_numbers, mdoc_count_mismatch, mdoc_pixel_size_contradicts_header, mdoc_missing_tilt_angle, mdoc_not_a_number,
    mdoc_no_sections, nan_in_tilt_series, inf_in_mrc, zero_size_mrc, zero_size_zarr, anisotropic_pixels,
    template_pixel_mismatch, complex_dtype, mrc_bad_header, particles_csv_malformed, star_malformed, ndjson_malformed, yaml_malformed, yaml_unknown_key,
    yaml_wrong_type, yaml_python_tag, local_url_missing, unsupported_scheme, s3_key_missing,
    s3_bucket_missing_on_write, output_under_a_file, template_larger_than_tomogram, convert_stack_without_angles,
    convert_mrc_with_mdoc_beside_without_angles,
]


@pytest.mark.parametrize("make", CASES, ids=[f.__name__ for f in CASES])
def test_bad_input_is_a_clear_user_error(make, tmp_path, capsys, request, small_cluster):
    check_bad_input(make, tmp_path, capsys, request)


def test_corpus_has_at_least_60_cases():
    """Every corpus file (tests/test_reliability_bad_input*.py) together: at least 60 cases, no name twice."""
    modules = [importlib.import_module(p.stem) for p in sorted(Path(__file__).parent.glob("test_reliability_bad_input*.py"))]
    names = [f.__name__ for module in modules for f in module.CASES]
    assert len(modules) >= 3
    assert len(names) >= 60, len(names)
    assert len(set(names)) == len(names)


def test_yaml_python_tag_runs_nothing(tmp_path, capsys):
    """The python tag is refused by the loader: the command in it never runs."""
    marker = tmp_path / "pwned"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"output: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["run", str(cfg)]) == 2
    assert not marker.exists()


def test_copy_of_input_is_not_an_output(tmp_path):
    """The helper itself: a finished OME-Zarr under out/ is reported as complete."""
    case = Case(tmp_path / "in", tmp_path / "out")
    case.inp.mkdir()
    case.out.mkdir()
    shutil.copytree(tomo_zarr(case), case.out / "t.zarr")
    assert complete_looking_outputs(case.out) == [str(case.out / "t.zarr")]
