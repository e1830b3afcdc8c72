"""EM files (TOM toolbox / PyTom .em, `cryocloud.store.em`): the real PyTom template read against numpy on its raw
bytes and against the MRC crop PyTom ships of it; axis order and data types; damaged files (one StoreError naming
the file and the field; exit 2 from `info` and `match`); `read_volume`, `info` on EM and atomic models."""

from __future__ import annotations

import json

import gemmi
import mrcfile
import numpy as np
import pytest

from badinput import Case, check_bad_input, tomo_zarr
from cryocloud.cli import main
from cryocloud.errors import ModelError, StoreError
from cryocloud.pick.template import read_map
from cryocloud.store import em_info, is_em, is_mrc, read_em, read_volume
from test_pick_match import REAL

EM = REAL / "pytom_templates" / "human_ribo_21A.em"
MRC = REAL / "pytom_templates" / "emd_5592_21A.mrc"
MODEL = REAL / "pytme_pub_6s47" / "6s47_cropped.cif.gz"


def raw_em(data: np.ndarray, code: int, machine: int = 6) -> bytes:
    """An EM file's bytes as TOM documents them: 512-byte header (byte 0 machine, byte 3 data type, bytes 4-15
    nx ny nz int32 little-endian), then `data` (z, y, x) little-endian with x fastest."""
    header = bytearray(512)
    header[0], header[3] = machine, code
    header[4:16] = np.array(data.shape[::-1], dtype="<i4").tobytes()
    return bytes(header) + data.astype(data.dtype.newbyteorder("<")).tobytes()


def test_the_real_em_template_reads_as_numpy_reads_its_bytes():
    raw = EM.read_bytes()
    assert raw[0] == 6 and raw[3] == 5  # PC byte order, float32
    nx, ny, nz = np.frombuffer(raw[4:16], dtype="<i4")
    independent = np.frombuffer(raw, dtype="<f4", offset=512).reshape(nz, ny, nx)
    volume = read_em(EM)
    assert volume.shape == (32, 32, 32) and volume.dtype == np.float32
    np.testing.assert_array_equal(volume, independent)
    as_map, px = read_map(str(EM), voxel_size=21.0)
    assert px == 21.0 and as_map.dtype == np.float32 and as_map.flags.writeable
    np.testing.assert_array_equal(as_map, independent)
    with pytest.raises(ModelError, match="voxel_size"):
        read_map(str(EM))  # EM stores no voxel size


@pytest.mark.filterwarnings("ignore:Map ID string not found")  # PyTom's MRC lacks the MAP id; mrcfile reads it permissively
def test_the_real_em_template_holds_pytoms_mrc_crop_of_it():
    """PyTom's emd_5592_21A.mrc (read by mrcfile) is the central 20^3 of human_ribo_21A.em, which is zero outside:
    equal voxel for voxel in (z, y, x) order, and unequal once an axis is swapped or flipped."""
    with mrcfile.open(MRC, permissive=True) as mrc:
        crop = np.array(mrc.data)
    volume = np.array(read_em(EM))
    inner = (slice(6, 26),) * 3
    np.testing.assert_array_equal(volume[inner], crop)
    outside = volume.copy()
    outside[inner] = 0
    assert not outside.any()
    assert not np.array_equal(volume.transpose(2, 1, 0)[inner], crop)
    assert not np.array_equal(volume[::-1][inner], crop)


@pytest.mark.parametrize("dtype,code", [(np.int8, 1), (np.int16, 2), (np.int32, 4), (np.float32, 5), (np.float64, 9)])
def test_em_axis_order_and_data_types(tmp_path, dtype, code):
    nz, ny, nx = 3, 4, 5
    values = np.arange(nz * ny * nx).reshape(nz, ny, nx).astype(dtype)  # value = x + nx * (y + ny * z)
    path = tmp_path / "v.EM"
    path.write_bytes(raw_em(values, code))
    volume = read_em(f"file://{path}")
    assert volume.dtype == dtype and volume.shape == (nz, ny, nx)
    assert volume[2, 1, 3] == 3 + nx * (1 + ny * 2)
    assert em_info(path) == {"url": str(path), "format": "EM", "shape": [nz, ny, nx], "dtype": np.dtype(dtype).name, "pixel_size": None}
    assert is_em(path) and is_em("s3://b/T.em/") and not is_mrc(path) and not is_em("t.mrc") and not is_em("t.em.zarr")


def damaged(raw: bytes, kind: str) -> bytes:
    """`raw` (a good EM file) damaged one way."""
    edits = {
        "short": lambda b: b[:100],
        "truncated": lambda b: b[:-4],
        "trailing": lambda b: b + bytes(4),
        "datatype": lambda b: b[:3] + bytes([7]) + b[4:],
        "machine": lambda b: bytes([3]) + b[1:],
        "zero_size": lambda b: b[:4] + bytes(4) + b[8:],
    }
    return edits[kind](raw)


@pytest.mark.parametrize("kind,field,words", [
    ("short", "header", "100 bytes, shorter than the 512-byte EM header"),
    ("truncated", "size", "header says 32x32x32 (x, y, z) of float32, 131072 bytes of data, but the file holds 131068"),
    ("trailing", "size", "but the file holds 131076"),
    ("datatype", "datatype", "data type code 7 is not one of [1, 2, 4, 5, 9]"),
    ("machine", "machine", "machine code 3"),
    ("zero_size", "size", "header says 0x32x32"),
])
def test_a_damaged_em_file_is_one_store_error_naming_the_file_and_the_field(tmp_path, kind, field, words):
    path = tmp_path / f"{kind}.em"
    path.write_bytes(damaged(EM.read_bytes(), kind))
    for read in (read_em, em_info, lambda url: read_volume(url, pixel_size=21.0)):
        with pytest.raises(StoreError) as err:
            read(path)
        assert err.value.field == field and str(path) in str(err.value) and words in str(err.value)
    with pytest.raises(StoreError, match="does not exist"):
        read_em(tmp_path / "missing.em")


def test_read_volume_reads_em_lazily_with_the_voxel_size_given(tmp_path):
    tomo = read_volume(EM, pixel_size=21.0)
    assert tomo.shape == (32, 32, 32) and tomo.pixel_size == 21.0 and tomo.data.chunks is not None
    np.testing.assert_array_equal(tomo.data.values, read_em(EM))
    with pytest.raises(StoreError, match="store no voxel size") as err:
        read_volume(EM)
    assert err.value.field == "voxel_size"
    with pytest.raises(StoreError, match="EM file with one level"):
        read_volume(EM, level=1, pixel_size=21.0)
    assert read_volume(MRC, pixel_size=21.0).pixel_size == 21.0  # overrides the MRC header's 1.0
    slab = tmp_path / "slab.em"
    slab.write_bytes(raw_em(np.ones((1, 4, 4), np.float32), 5))
    with pytest.raises(StoreError, match="2D image"):
        read_volume(slab, pixel_size=4.0)


@pytest.mark.slow
def test_read_em_from_s3(s3_bucket):
    s3_bucket.fs().put_file(str(EM), f"{s3_bucket.url}/templates/ribo.em")
    url = f"{s3_bucket.url}/templates/ribo.em"
    np.testing.assert_array_equal(read_em(url, storage_options=s3_bucket.storage_options), read_em(EM))
    assert em_info(url, storage_options=s3_bucket.storage_options)["shape"] == [32, 32, 32]
    volume, px = read_map(url, voxel_size=21.0, storage_options=s3_bucket.storage_options)
    assert px == 21.0 and volume.shape == (32, 32, 32)


@pytest.mark.slow
def test_info_shows_em_volumes_and_atomic_models(capsys):
    assert main(["info", str(EM)]) == 0
    text = capsys.readouterr().out
    assert "EM" in text and "pixel size  unknown" in text and "(32, 32, 32) (z, y, x)" in text and "float32" in text
    assert main(["info", str(MODEL), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    st = gemmi.read_structure(str(MODEL))  # gemmi on its own: the first model, no waters, no hydrogens
    st.remove_waters()
    st.remove_hydrogens()
    xyz = np.array([cra.atom.pos.tolist() for cra in st[0].all()])
    assert summary["format"] == "atomic model" and summary["name"] == "6s47_cropped"
    assert summary["atoms"] == len(xyz) == st[0].count_atom_sites()
    assert summary["mass_da"] == pytest.approx(st[0].calculate_mass(), rel=1e-6)
    assert summary["radius_a"] == pytest.approx(np.linalg.norm(xyz - xyz.mean(axis=0), axis=1).max(), rel=1e-6)
    assert main(["info", str(MODEL)]) == 0
    assert f"atoms       {len(xyz)}" in capsys.readouterr().out


# ------------------------------------------------------------ damaged EM files through the CLI (tests/badinput.py)
def _damaged_em(c: Case, kind: str) -> str:
    path = c.inp / f"{kind}.em"
    path.write_bytes(damaged(EM.read_bytes(), kind))
    return str(path)


def info_truncated_em(c: Case):
    return ["info", _damaged_em(c, "truncated")], ["truncated.em", "field 'size'", "131072 bytes of data"]


def info_short_em(c: Case):
    return ["info", _damaged_em(c, "short")], ["short.em", "field 'header'", "shorter than the 512-byte EM header"]


def match_truncated_em_template(c: Case):
    return (["match", tomo_zarr(c), _damaged_em(c, "truncated"), str(c.out / "match"), "--template-voxel-size", "4"],
            ["truncated.em", "field 'size'", "131072 bytes of data"])


def match_em_template_of_unknown_data_type(c: Case):
    return (["match", tomo_zarr(c), _damaged_em(c, "datatype"), str(c.out / "match"), "--template-voxel-size", "4"],
            ["datatype.em", "field 'datatype'", "data type code 7"])


@pytest.mark.parametrize("make", [info_truncated_em, info_short_em, match_truncated_em_template, match_em_template_of_unknown_data_type],
                         ids=lambda f: f.__name__)
def test_damaged_em_through_the_cli(make, tmp_path, capsys, request):
    check_bad_input(make, tmp_path, capsys, request)
