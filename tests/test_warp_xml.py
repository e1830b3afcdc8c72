"""Warp tilt-series XML (cryocloud.store.warp) on the real TS_017 XML, checked against the same acquisition's SerialEM
mdoc and .tlt, and the sign conventions against Warp's own projection (WarpLib/TiltSeries.cs GetPositionInAllTilts)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryocloud.cli import main
from cryocloud.errors import StoreError
from cryocloud.geometry import (
    aligned_to_raw,
    point_defocus,
    project_points,
    relion_euler_to_matrix,
)
from cryocloud.store import read_mdoc, read_tilt_series, read_tlt
from cryocloud.store.warp import read_warp_xml

TS017 = Path(__file__).parent / "data" / "real" / "cryocat_ts017"


def _grid_centre(root: ET.Element, name: str) -> np.ndarray:
    grid = root.find(name)
    w, h = int(grid.get("Width")), int(grid.get("Height"))
    return np.array([float(n.get("Value")) for n in grid.iter("Node") if (int(n.get("X")), int(n.get("Y"))) == (w // 2, h // 2)])


def test_real_warp_xml_agrees_with_the_mdoc_and_tlt():
    warp = read_warp_xml(TS017 / "017.xml")
    mdoc = read_mdoc(str(TS017 / "017.mdoc"))
    np.testing.assert_allclose(warp.tilt_angles, read_tlt(str(TS017 / "017.tlt")), atol=0.05)  # Warp rounds to whole degrees
    assert not warp.angles_inverted and warp.use_tilt.all() and len(warp.movie_paths) == 60
    assert warp.tilt_axis_angle == pytest.approx(83.22321) and abs(warp.tilt_axis_angle - mdoc.tilt_axis_angle) < 0.5  # refined vs nominal
    assert warp.pixel_size_a == pytest.approx(1.971) and warp.microscope.voltage_kv == 300.0
    order = np.argsort(warp.tilt_angles)  # the mdoc lists its sections by angle here: compare in angle order
    mdoc_order = np.argsort(mdoc.tilt_angle)
    np.testing.assert_array_equal(warp.acquisition_order[order], mdoc.acquisition_order[mdoc_order])
    np.testing.assert_allclose(warp.exposure, mdoc.exposure_dose[mdoc_order][np.argsort(order)], atol=2e-4)
    assert warp.pre_exposure[warp.acquisition_order == 0] == pytest.approx(0.0, abs=1e-6)
    root = ET.fromstring((TS017 / "017.xml").read_bytes())
    defocus_um = np.array([float(n.get("Value")) for n in root.find("GridCTF").iter("Node")])
    np.testing.assert_allclose(warp.defocus_u, (defocus_um + 0.01914939) * 1e4, atol=1e-3)
    np.testing.assert_allclose(warp.defocus_v, (defocus_um - 0.01914939) * 1e4, atol=1e-3)
    np.testing.assert_array_equal(warp.astigmatism_angle, 164.0)
    offset_x = np.array([float(v) for v in root.find("AxisOffsetX").text.split()])
    np.testing.assert_allclose(warp.shifts_a[:, 0], offset_x - _grid_centre(root, "GridMovementX"), atol=1e-6)
    assert warp.not_applied["GridVolumeWarpZ"] > 0 and warp.not_applied["GridMovementY away from the centre (A)"] > 0


@pytest.mark.parametrize("inverted", [False, True])
def test_reader_signs_reproduce_warps_projection(tmp_path, inverted):
    """Warp's projection (Euler(0, Angles, -AxisAngle) = RELION's matrix, + AxisOffset; defocus GridCTF + z', z' with
    the flipped matrix and -z when AreAnglesInverted) equals cryocloud's geometry with what the reader returns, with
    the tomogram mirrored in z when the angles are not inverted."""
    text = (TS017 / "017.xml").read_bytes().decode("utf-16")
    if inverted:
        text = text.replace('AreAnglesInverted="False"', 'AreAnglesInverted="True"')
    (tmp_path / "ts.xml").write_text(text, encoding="utf-16")
    warp = read_warp_xml(tmp_path / "ts.xml")
    root = ET.fromstring(text.encode("utf-16"))
    angles = np.array([float(v) for v in root.find("Angles").text.split()])
    axis = float(root.find("AxisAngle").text.split()[0])
    offsets = np.stack([[float(v) for v in root.find(f"AxisOffset{a}").text.split()] for a in "XY"], 1)
    moves = np.stack([_grid_centre(root, f"GridMovement{a}") for a in "XY"], 1)
    defocus_a = np.array([float(n.get("Value")) for n in root.find("GridCTF").iter("Node")]) * 1e4
    rng = np.random.default_rng(0)
    warp_points = rng.uniform(-800, 800, (6, 3))  # relative to Warp's volume centre (A)
    ours = warp_points if inverted else warp_points * [1, 1, -1]
    for t in range(0, 60, 7):
        image = (relion_euler_to_matrix(0.0, angles[t], -axis) @ warp_points.T).T[:, :2] + offsets[t] - moves[t]
        flipped = relion_euler_to_matrix(0.0, -angles[t], -axis) @ (warp_points * [1, 1, -1]).T if inverted else None
        z_rot = flipped.T[:, 2] if inverted else (relion_euler_to_matrix(0.0, angles[t], -axis) @ warp_points.T).T[:, 2]
        np.testing.assert_allclose(aligned_to_raw(project_points(ours, warp.tilt_angles[t]), warp.tilt_axis_angle, warp.shifts_a[t]), image, atol=1e-6)
        mean_defocus = 0.5 * (warp.defocus_u[t] + warp.defocus_v[t])
        np.testing.assert_allclose(point_defocus(ours, warp.tilt_angles[t], mean_defocus), defocus_a[t] + z_rot, atol=1e-3)


@pytest.mark.slow
def test_convert_with_a_warp_xml_and_bad_input(tmp_path, capsys):
    stack = np.random.default_rng(1).normal(size=(60, 12, 16)).astype(np.float32)
    with mrcfile.new(tmp_path / "017.mrc") as mrc:
        mrc.set_data(stack)
    assert main(["convert", str(tmp_path / "017.mrc"), str(tmp_path / "ts.zarr"), "--warp-xml", str(TS017 / "017.xml")]) == 0
    assert "not applied: GridMovementX" in " ".join(capsys.readouterr().out.split())
    ts = read_tilt_series(str(tmp_path / "ts.zarr"))
    warp = read_warp_xml(TS017 / "017.xml")
    assert ts.pixel_size == pytest.approx(1.971) and ts.tilt_axis_angle == pytest.approx(warp.tilt_axis_angle)
    np.testing.assert_allclose(ts.per_tilt("defocus_u"), warp.defocus_u)
    np.testing.assert_allclose(ts.per_tilt("shift_y"), warp.shifts_a[:, 1])
    np.testing.assert_allclose(ts.per_tilt("pre_exposure"), warp.pre_exposure)
    np.testing.assert_array_equal(ts.data.values, stack)
    with mrcfile.new(tmp_path / "short.mrc") as mrc:
        mrc.set_data(stack[:59])
    assert main(["convert", str(tmp_path / "short.mrc"), str(tmp_path / "ts2.zarr"), "--warp-xml", str(TS017 / "017.xml")]) == 2
    err = capsys.readouterr().err
    assert "017.xml" in err and "59 images" in err and "Traceback" not in err
    (tmp_path / "bad.xml").write_text("<TiltSeries><Angles>1\n2</Angles><AxisAngle>85</AxisAngle></TiltSeries>")
    with pytest.raises(StoreError, match="AxisAngle"):
        read_warp_xml(tmp_path / "bad.xml")


@pytest.mark.parametrize("block, element, attribute", [("CTF", "Param", "Value"), ("CTF", "Param", "Name"), ("GridCTF", "Node", "Value")])
def test_a_param_or_node_without_its_attribute_is_named(tmp_path, block, element, attribute):
    root = ET.parse(TS017 / "017.xml").getroot()
    del next(root.find(block).iter(element)).attrib[attribute]
    ET.ElementTree(root).write(tmp_path / "017.xml")
    with pytest.raises(StoreError, match=f"<{block}> has a {element} without"):
        read_warp_xml(tmp_path / "017.xml")
