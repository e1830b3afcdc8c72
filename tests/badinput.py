"""The bad-input harness shared by the corpus files (tests/test_reliability_bad_input*.py).

A case is a function `make(case: Case) -> (argv, fragments)`: it builds its inputs under `case.inp`, names
its outputs under `case.out` (or an S3 bucket) and returns the CLI arguments and the fragments the one
`error:` line must contain. `check_bad_input` runs it through the CLI and asserts: exit 2, exactly one
error line holding every fragment, no traceback, inputs byte-identical (sha256 before and after), no output
that looks complete (an OME-Zarr without its multiscales metadata or a `.partial` file is not), and the case's
bucket (inputs the case put there included) unchanged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mrcfile
import numpy as np

from cryocloud.cli import main
from cryocloud.errors import StoreError
from cryocloud.model import TiltSeries, Tomogram
from cryocloud.store import resolve, write_tilt_series, write_tomogram
from cryocloud.store.ngff import open_image

ANGLES = np.arange(-40.0, 41.0, 20.0)  # 5 tilts


@dataclass
class Case:
    """Inputs under `inp`, outputs under `out`; `s3` a test bucket when the case needs one."""

    inp: Path
    out: Path
    s3: object = None


def ts_zarr(case: Case, name: str = "ts.zarr", data: np.ndarray | None = None, **kw) -> str:
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(len(ANGLES), 16, 16)).astype(np.float32) if data is None else data
    ts = TiltSeries.from_array(arr, tilt_angles=ANGLES, pixel_size=kw.pop("pixel_size", 4.0))
    url = str(case.inp / name)
    write_tilt_series(ts, url, levels=1, **kw)
    return url


def tomo_zarr(case: Case, name: str = "tomo.zarr", shape=(16, 16, 16), data: np.ndarray | None = None) -> str:
    arr = np.random.default_rng(1).normal(size=shape).astype(np.float32) if data is None else data
    url = str(case.inp / name)
    write_tomogram(Tomogram.from_array(arr, pixel_size=4.0), url, levels=1)
    return url


def mrc_file(case: Case, name: str, data: np.ndarray, voxel: float = 4.0) -> str:
    path = case.inp / name
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = voxel
    return str(path)


def text_file(case: Case, name: str, text: str) -> str:
    path = case.inp / name
    path.write_text(text)
    return str(path)


def edit_attrs(url: str, edit: Callable[[dict], None]) -> None:
    path = Path(url) / ".zattrs"
    attrs = json.loads(path.read_text())
    edit(attrs)
    path.write_text(json.dumps(attrs))


def first_chunk(url: str) -> Path:
    return next(p for p in sorted((Path(url) / "0").rglob("*")) if p.is_file() and not p.name.startswith("."))


def stack_with_tlt(case: Case, angles_text: str, n: int = 5) -> list[str]:
    stack = mrc_file(case, "stack.mrc", np.random.default_rng(2).normal(size=(n, 16, 16)).astype(np.float32))
    tlt = text_file(case, "stack.tlt", angles_text)
    return [stack, tlt]


MDOC_HEADER = "PixelSpacing = 4.0\nImageFile = stack.mrc\n\n"


def mdoc_section(z: int, angle: str) -> str:
    return f"[ZValue = {z}]\nTiltAngle = {angle}\nExposureDose = 3.0\nPixelSpacing = 4.0\n\n"


# ---------------------------------------------------------------------------------------- checks
def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (relative path -> digest)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def complete_looking_outputs(root: Path) -> list[str]:
    """Outputs under `root` a reader would take as finished: readable OME-Zarr images and plain files
    outside an OME-Zarr (a `.partial` MRC and the case's own blocker file excepted)."""
    found = []
    for zarr_dir in sorted(root.rglob("*.zarr")):
        try:
            open_image(resolve(str(zarr_dir)))
            found.append(str(zarr_dir))
        except StoreError:
            pass
    for p in sorted(root.rglob("*")):
        if p.is_file() and ".zarr" not in p.relative_to(root).as_posix() and not p.name.endswith(".partial") and p.name != "blocker":
            found.append(str(p))
    return found


def bucket_state(bucket) -> dict[str, tuple]:
    """Every object of a test bucket: key -> (size, ETag)."""
    return {key: (info.get("size"), info.get("ETag")) for key, info in bucket.fs().find(bucket.url, detail=True).items()}


def check_bad_input(make: Callable, tmp_path: Path, capsys, request) -> None:
    """Run one case (see the module docstring); cases whose name starts with `s3_` get `case.s3`."""
    case = Case(tmp_path / "in", tmp_path / "out")
    case.inp.mkdir()
    case.out.mkdir()
    if make.__name__.startswith("s3_"):
        case.s3 = request.getfixturevalue("s3_bucket")
    argv, fragments = make(case)
    before = tree_hashes(case.inp)
    bucket_before = bucket_state(case.s3) if case.s3 is not None else None
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}; stderr: {err}"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    message = errors[0]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "Traceback" not in err
    assert tree_hashes(case.inp) == before, "an input was modified"
    assert complete_looking_outputs(case.out) == []
    if case.s3 is not None:
        assert bucket_state(case.s3) == bucket_before, "the bucket was written to"
