"""Bad-input corpus, degenerate numbers: constant, all-zero or NaN templates, tomograms and tilt series; empty
particle lists and lists with every particle outside the tomogram; a 2D or 4D MRC where a volume or a tilt
series is expected; masks and references of the wrong shape; an unreachable S3 endpoint. Every case goes
through the CLI (tests/badinput.py): exit 2, one error line naming the file (or URL), the field and what was
expected, no traceback, inputs unchanged, no output that looks complete.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest

from badinput import Case, check_bad_input, mrc_file, text_file, tomo_zarr, ts_zarr
from cryocloud.cli import main
from cryocloud.model import Particles, TiltSeries, Tomogram
from cryocloud.pick.angles import uniform_rotations
from cryocloud.pick.formats import write_picks
from cryocloud.pick.results import run_match
from cryocloud.pick.template import prepare_template
from cryocloud.store import write_tilt_series, write_tomogram

pytestmark = pytest.mark.slow  # the bad-input corpus: one CLI run per case

TILTS = np.arange(-60.0, 61.0, 20.0)  # the missing wedge `average` needs


def sphere(n: int = 8, radius: float = 3.0) -> np.ndarray:
    """A uniform ball (n, n, n) float32 of `radius` voxels around the box centre: a template with contrast."""
    r = np.indices((n, n, n)) - n // 2
    return (np.sum(r**2, axis=0) <= radius**2).astype(np.float32)


def noise(shape=(16, 16, 16)) -> np.ndarray:
    return np.random.default_rng(4).normal(size=shape).astype(np.float32)


def tomo_with_tilts(c: Case, data: np.ndarray, name: str = "tomo.zarr") -> str:
    """A tomogram OME-Zarr (4 A voxels) that records the tilt angles it was made from (`average` needs them)."""
    url = str(c.inp / name)
    write_tomogram(Tomogram.from_array(data, pixel_size=4.0, tilt_angles=TILTS), url, levels=1)
    return url


def em_file(c: Case, name: str, data: np.ndarray) -> str:
    """A TOM / PyTom EM file: 512-byte header (little-endian PC, float32, nx ny nz) and the data, x fastest."""
    header = bytearray(512)
    header[0], header[3] = 6, 5
    header[4:16] = np.array(data.shape[::-1], dtype="<i4").tobytes()
    path = c.inp / name
    path.write_bytes(bytes(header) + data.astype("<f4").tobytes())
    return str(path)


def closed_endpoint() -> str:
    """http://127.0.0.1:PORT where nothing listens (a port the OS handed out and took back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ------------------------------------------------------------------------------------- the cases
# each returns (argv, fragments the error message must contain)
def match_zero_template(c: Case):
    template = mrc_file(c, "zero.mrc", np.zeros((8, 8, 8), np.float32))
    return ["match", tomo_zarr(c), template, str(c.out / "match")], ["zero.mrc", "field 'template'", "constant (every voxel 0)"]


def match_nan_template(c: Case):
    data = sphere()
    data[4, 4, 4] = np.nan
    template = em_file(c, "nan.em", data)
    return (["match", tomo_zarr(c), template, str(c.out / "match"), "--template-voxel-size", "4"],
            ["nan.em", "field 'template'", "NaN or infinite"])


def match_template_constant_under_mask(c: Case):
    template = mrc_file(c, "ball.mrc", sphere(radius=3.5))
    return (["match", tomo_zarr(c), template, str(c.out / "match"), "--mask-radius", "2"],
            ["ball.mrc", "field 'mask_radius'", "constant under its mask"])


def match_4d_template(c: Case):
    template = mrc_file(c, "stack.mrc", np.stack([sphere(), sphere()]))
    return ["match", tomo_zarr(c), template, str(c.out / "match")], ["stack.mrc", "field 'shape'", "stack of 2 volumes", "4D"]


def match_constant_tomogram(c: Case):
    tomo = tomo_zarr(c, data=np.full((16, 16, 16), 3.0, np.float32))
    template = mrc_file(c, "ball.mrc", sphere())
    return ["match", tomo, template, str(c.out / "match")], ["tomo.zarr", "field 'data'", "the tomogram is constant (every value 3)"]


def match_2d_tomogram(c: Case):
    image = mrc_file(c, "slice.mrc", noise((16, 16)))
    template = mrc_file(c, "ball.mrc", sphere())
    return ["match", image, template, str(c.out / "match")], ["slice.mrc", "field 'shape'", "2D image", "expected a volume"]


def match_mask_wrong_shape(c: Case):
    mask = tomo_zarr(c, "mask.zarr", data=np.ones((8, 16, 16), np.float32))
    template = mrc_file(c, "ball.mrc", sphere())
    return (["match", tomo_zarr(c), template, str(c.out / "match"), "--tomogram-mask", mask],
            ["mask.zarr", "field 'tomogram_mask'", "(8, 16, 16)", "expected the tomogram's (16, 16, 16)"])


def match_empty_mask(c: Case):
    mask = tomo_zarr(c, "mask.zarr", data=np.zeros((16, 16, 16), np.float32))
    template = mrc_file(c, "ball.mrc", sphere())
    return (["match", tomo_zarr(c), template, str(c.out / "match"), "--tomogram-mask", mask],
            ["mask.zarr", "field 'tomogram_mask'", "no voxel > 0"])


def extract_peaks_constant_score_map(c: Case):
    """A score map of a constant tomogram, as `match` wrote before it refused one: no score varies."""
    tomogram = Tomogram.from_array(np.ones((16, 16, 16), np.float32), pixel_size=4.0)
    run_match(tomogram, prepare_template(sphere(), 4.0, 4.0), uniform_rotations(90.0), str(c.inp / "match"))
    return ["extract-peaks", str(c.inp / "match"), str(c.out / "picks.csv")], ["match.json", "field 'score_std'", "expected a positive number"]


def average_particles_outside(c: Case):
    table = text_file(c, "particles.csv", "x,y,z\n1000,1000,1000\n1200,1000,1000\n")  # the tomogram spans 0..60 A
    return (["average", tomo_with_tilts(c, noise()), table, str(c.out / "avg"), "--box", "8"],
            ["particles.csv", "field 'positions'", "all 2 particles lie outside the tomogram", "x 0..60"])


def average_empty_extract_peaks_list(c: Case):
    """A particle CSV as `extract-peaks` writes it when no score passes the cut-off: the header only."""
    table = str(c.inp / "particles.csv")
    write_picks(Particles.create(np.zeros((0, 3))), table, "csv", pixel_size=4.0, shape_zyx=(16, 16, 16))
    return ["average", tomo_with_tilts(c, noise()), table, str(c.out / "avg"), "--box", "8"], ["particles.csv", "field 'positions'", "0 particles"]


def average_constant_tomogram(c: Case):
    table = text_file(c, "particles.csv", "x,y,z\n20,20,20\n40,40,40\n")
    return (["average", tomo_with_tilts(c, np.zeros((16, 16, 16), np.float32)), table, str(c.out / "avg"), "--box", "8"],
            ["tomo.zarr", "field 'data'", "constant (every value 0)"])


def average_zero_reference(c: Case):
    table = text_file(c, "particles.csv", "x,y,z\n20,20,20\n40,40,40\n")
    reference = mrc_file(c, "ref.mrc", np.zeros((8, 8, 8), np.float32))
    return (["average", tomo_with_tilts(c, noise()), table, str(c.out / "avg"), "--box", "8", "--reference", reference],
            ["ref.mrc", "field 'reference'", "constant"])


def segment_constant_tomogram(c: Case):
    tomo = tomo_zarr(c, data=np.zeros((16, 16, 16), np.float32))
    return ["segment", "membranes", tomo, str(c.out / "membranes.zarr")], ["tomo.zarr", "field 'data'", "the tomogram is constant"]


def segment_2d_mrc(c: Case):
    image = mrc_file(c, "slice.mrc", noise((16, 16)))
    return ["segment", "membranes", image, str(c.out / "membranes.zarr")], ["slice.mrc", "field 'shape'", "2D image"]


def deconv_zero_tomogram(c: Case):
    tomo = tomo_zarr(c, data=np.zeros((16, 16, 16), np.float32))
    return (["denoise", "deconv", tomo, str(c.out / "deconv.zarr"), "--defocus", "30000", "--tile", "16", "--overlap", "4"],
            ["tomo.zarr", "field 'data'", "the tomogram is constant (every value 0)"])


def deconv_nan_tomogram(c: Case):
    data = noise()
    data[3, 4, 5] = np.nan
    tomo = tomo_zarr(c, data=data)
    return (["denoise", "deconv", tomo, str(c.out / "deconv.zarr"), "--defocus", "30000", "--tile", "16", "--overlap", "4"],
            ["tomo.zarr", "NaN or infinite"])


def curate_picks_outside(c: Case):
    picks = text_file(c, "picks.csv", "x,y,z\n20,20,500\n")  # z beyond the tomogram's 0..60 A
    return (["curate", "gallery", picks, tomo_zarr(c), str(c.out / "gallery"), "--box", "8"],
            ["picks.csv", "field 'positions'", "all 1 particles lie outside", "z 500..500"])


def curate_empty_extract_peaks_list(c: Case):
    """An ndjson pick list as `extract-peaks` writes it when no score passes the cut-off: no line."""
    picks = str(c.inp / "picks.ndjson")
    write_picks(Particles.create(np.zeros((0, 3))), picks, "ndjson", pixel_size=4.0, shape_zyx=(16, 16, 16))
    return ["curate", "gallery", picks, tomo_zarr(c), str(c.out / "gallery"), "--box", "8"], ["picks.ndjson", "field 'picks'", "empty"]


def curate_constant_tomogram(c: Case):
    picks = text_file(c, "picks.csv", "x,y,z\n20,20,20\n40,40,40\n")
    tomo = tomo_zarr(c, data=np.ones((16, 16, 16), np.float32))
    return ["curate", "gallery", picks, tomo, str(c.out / "gallery"), "--box", "8"], ["tomo.zarr", "field 'data'", "constant (every value 1)"]


def reconstruct_single_tilt(c: Case):
    url = str(c.inp / "ts.zarr")
    write_tilt_series(TiltSeries.from_array(noise((1, 16, 16)), tilt_angles=[0.0], pixel_size=4.0), url, levels=1)
    return ["reconstruct", url, str(c.out / "tomo.zarr"), "--thickness", "8"], ["ts.zarr", "field 'tilt_angle'", "at least 2"]


def reconstruct_zero_tilt_series(c: Case):
    url = ts_zarr(c, data=np.zeros((5, 16, 16), np.float32))
    return ["reconstruct", url, str(c.out / "tomo.zarr"), "--thickness", "8"], ["ts.zarr", "field 'data'", "the tilt series is constant"]


def reconstruct_2d_mrc(c: Case):
    image = mrc_file(c, "slice.mrc", noise((16, 16)))
    return ["reconstruct", image, str(c.out / "tomo.zarr")], ["slice.mrc", "field 'format'", "expected an OME-Zarr tilt series"]


def convert_2d_mrc(c: Case):
    image = mrc_file(c, "slice.mrc", noise((16, 16)))
    return ["convert", image, str(c.out / "slice.zarr")], ["slice.mrc", "field 'shape'", "2D image", "expected a volume"]


def convert_4d_mrc(c: Case):
    stack = mrc_file(c, "volumes.mrc", noise((3, 8, 8, 8)))
    return ["convert", stack, str(c.out / "volumes.zarr")], ["volumes.mrc", "field 'shape'", "stack of 3 volumes", "expected one volume"]


def info_portal_unreachable(c: Case):
    return (["info", "portal://10000/TS_026", "--endpoint-url", closed_endpoint()],
            ["s3://cryoet-data-portal-public/10000/TS_026", "cannot be listed", "EndpointConnectionError"])


def portal_ls_unreachable(c: Case):
    return (["portal", "ls", "10000", "--endpoint-url", closed_endpoint()],
            ["s3://cryoet-data-portal-public/10000", "cannot be listed", "EndpointConnectionError"])


CASES = [
    match_zero_template, match_nan_template, match_template_constant_under_mask, match_4d_template, match_constant_tomogram,
    match_2d_tomogram, match_mask_wrong_shape, match_empty_mask, extract_peaks_constant_score_map, average_particles_outside,
    average_empty_extract_peaks_list, average_constant_tomogram, average_zero_reference, segment_constant_tomogram, segment_2d_mrc,
    deconv_zero_tomogram, deconv_nan_tomogram, curate_picks_outside, curate_empty_extract_peaks_list, curate_constant_tomogram,
    reconstruct_single_tilt, reconstruct_zero_tilt_series, reconstruct_2d_mrc, convert_2d_mrc, convert_4d_mrc,
    info_portal_unreachable, portal_ls_unreachable,
]
SLOW = {info_portal_unreachable, portal_ls_unreachable}  # botocore retries a refused connection with backoff (seconds)


@pytest.mark.parametrize(
    "make", [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f for f in CASES], ids=[f.__name__ for f in CASES],
)
def test_degenerate_input_is_a_clear_user_error(make, tmp_path, capsys, request, small_cluster):
    check_bad_input(make, tmp_path, capsys, request)


def test_corpus_has_at_least_14_cases():
    assert len(CASES) >= 14
    assert len({f.__name__ for f in CASES}) == len(CASES)


def test_2d_tomogram_is_not_blamed_on_the_template(tmp_path, capsys):
    """The tomogram is read and refused first: the message names it, not the template."""
    case = Case(tmp_path / "in", tmp_path / "out")
    case.inp.mkdir()
    argv, _ = match_2d_tomogram(case)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "slice.mrc" in err and "ball.mrc" not in err and "template" not in err


def test_contrast_check_reads_the_whole_array_only_when_its_middle_block_is_constant():
    """A volume whose middle block is flat (padding, say) but that has contrast elsewhere is accepted;
    one constant everywhere is refused, lazy or not."""
    import dask.array as da

    from cryocloud.errors import StoreError
    from cryocloud.store import require_contrast

    data = np.zeros((8, 24, 24), np.float32)
    data[0, 0, 0] = 1.0  # only a corner block has contrast
    require_contrast(da.from_array(data, chunks=8), "v.zarr")
    require_contrast(data, "v.zarr")
    with pytest.raises(StoreError, match="v.zarr: field 'data': the volume is constant"):
        require_contrast(da.zeros((8, 24, 24), chunks=8), "v.zarr")
