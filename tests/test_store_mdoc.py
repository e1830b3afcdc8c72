"""SerialEM .mdoc reading: sections are taken in ZValue (= stack index) order, whatever order the
file lists them in; ZValues that do not number the images 0..N-1 once each are refused."""

from __future__ import annotations

import re

import mdocfile
import mrcfile
import numpy as np
import pytest

from cryocloud.cli import main
from cryocloud.errors import StoreError
from cryocloud.store import parse_mdoc, read_mdoc, read_tilt_series, read_tlt

REAL_MDOCS = ["tiltstack_ts01_mdoc/TS_01.mrc.mdoc", "cryocat_ts017/017.mdoc"]


def write_stack(path, n: int, pixel_size: float = 4.0) -> None:
    """A stack whose image k is filled with the value k (so each image is recognisable)."""
    data = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 8, 8)).copy()
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = pixel_size


def section(z: int, angle: float, dose: float = 3.0, minute: int = 0) -> str:
    return (f"[ZValue = {z}]\nTiltAngle = {angle}\nExposureDose = {dose}\nPixelSpacing = 4.0\n"
            f"DateTime = 01-Jan-24  10:{minute:02d}:00\n\n")


def shuffle_sections(text: str, order: list[int]) -> str:
    """The mdoc text with its sections listed in `order` (indices into the sections as written)."""
    head, *sections = re.split(r"(?=^\[ZValue)", text, flags=re.MULTILINE)
    assert len(sections) == len(order)
    return head + "".join(sections[i].rstrip("\n") + "\n\n" for i in order)


def test_shuffled_sections_give_each_image_its_own_angle(tmp_path):
    angles = np.array([0.0, 3.0, -3.0, 6.0, -6.0])  # ZValue k -> angle, dose, time of image k
    doses = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    minutes = [0, 1, 2, 3, 4]
    listed = [3, 0, 4, 1, 2]
    write_stack(tmp_path / "stack.mrc", 5)
    text = "PixelSpacing = 4.0\n\n" + "".join(section(z, angles[z], doses[z], minutes[z]) for z in listed)
    (tmp_path / "stack.mrc.mdoc").write_text(text)
    out = tmp_path / "ts.zarr"
    assert main(["convert", str(tmp_path / "stack.mrc"), str(out), "--mdoc", str(tmp_path / "stack.mrc.mdoc")]) == 0
    ts = read_tilt_series(str(out))
    image = ts.data.values.mean(axis=(1, 2)).round().astype(int)  # which image of the stack each tilt holds
    assert sorted(image) == list(range(5))
    np.testing.assert_array_equal(ts.tilt_angles, angles[image])
    np.testing.assert_array_equal(ts.per_tilt("exposure"), doses[image])
    np.testing.assert_array_equal(ts.per_tilt("acquisition_order"), np.array(minutes)[image])


@pytest.mark.parametrize(
    ("listed", "n_images", "section_name", "problem"),
    [
        ([0, 1, 1, 2], 4, "[ZValue = 1]", "listed 2 times"),
        ([0, 1, 3], 3, "[ZValue = 3]", "no section has ZValue = 2"),
        ([0, 1, 2, 3, 4], 3, "[ZValue = 3]", "beyond the stack"),
        ([-1, 0, 1], 3, "[ZValue = -1]", "negative"),
    ],
    ids=["duplicate", "gap", "beyond_stack", "negative"],
)
def test_bad_zvalues_exit_2_naming_file_field_and_section(tmp_path, capsys, listed, n_images, section_name, problem):
    write_stack(tmp_path / "stack.mrc", n_images)
    mdoc = tmp_path / "stack.mrc.mdoc"
    mdoc.write_text("PixelSpacing = 4.0\n\n" + "".join(section(z, 3.0 * i) for i, z in enumerate(listed)))
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "stack.mrc"), str(tmp_path / "ts.zarr"), "--mdoc", str(mdoc)]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert line.startswith(f"error: {mdoc}: field 'ZValue': section {section_name}: {problem}"), line
    assert not (tmp_path / "ts.zarr").exists()


def test_frame_sets_are_ordered_and_checked_like_zvalues():
    text = "PixelSpacing = 2.0\n\n" + "".join(f"[FrameSet = {k}]\nTiltAngle = {a}\nSubFramePath = X:\\f\\m{k}.tif\n\n"
                                             for k, a in [(2, 20.0), (0, 0.0), (1, 10.0)])
    m = parse_mdoc(text, source="frames.mdoc")
    assert m.kind == "FrameSet"
    np.testing.assert_array_equal(m.tilt_angle, [0.0, 10.0, 20.0])
    assert [p.rsplit("\\", 1)[-1] for p in m.sub_frame_path] == ["m0.tif", "m1.tif", "m2.tif"]
    with pytest.raises(StoreError, match=r"section \[FrameSet = 2\]: listed 2 times") as info:
        parse_mdoc(text.replace("[FrameSet = 1]", "[FrameSet = 2]"), source="frames.mdoc")
    assert info.value.field == "FrameSet"


@pytest.mark.parametrize("name", REAL_MDOCS)
def test_real_mdocs_read_in_zvalue_order_whatever_the_listing(real_data, name):
    path = real_data / name
    reference = mdocfile.read(path).sort_values("ZValue")
    m = read_mdoc(path)
    assert m.n_tilts == len(reference) == reference["ZValue"].max() + 1
    np.testing.assert_array_equal(m.tilt_angle, reference["TiltAngle"].to_numpy())
    text = path.read_text()
    reversed_listing = parse_mdoc(shuffle_sections(text, list(range(m.n_tilts))[::-1]), source=name)
    for attribute in ("tilt_angle", "exposure_dose", "defocus_um", "acquisition_order"):
        np.testing.assert_array_equal(getattr(reversed_listing, attribute), getattr(m, attribute))
    assert reversed_listing.sub_frame_path == m.sub_frame_path


def test_real_017_mdoc_converts_with_the_angles_of_its_tlt(real_data, tmp_path, caplog):
    folder = real_data / "cryocat_ts017"
    tlt = read_tlt(folder / "017.tlt")
    assert tlt.size == 60
    write_stack(tmp_path / "017.mrc", 60, pixel_size=1.971)
    out = tmp_path / "ts.zarr"
    assert main(["convert", str(tmp_path / "017.mrc"), str(out), "--mdoc", str(folder / "017.mdoc"), "--levels", "1"]) == 0
    assert [r.getMessage() for r in caplog.records if r.name == "mdocfile"] == []  # its per-section warnings: not for stderr
    ts = read_tilt_series(str(out))
    image = ts.data.values.mean(axis=(1, 2)).round().astype(int)
    np.testing.assert_allclose(ts.tilt_angles, tlt[image], atol=0.006)  # the .tlt has 2 decimals
