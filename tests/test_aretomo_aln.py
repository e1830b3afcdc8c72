"""AreTomo .aln files (cryocloud.store.aretomo, with alnfile): a real AreTomo file read, the convention against
alnfile's own AreTomo -> IMOD conversion, our alignment -> .aln -> the same alignment, `align` writing one and
`convert --aln` taking one."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
from alnfile import df_to_xf
from alnfile import read as alnfile_read

from cryocloud.alignment.outputs import write_alignment
from cryocloud.alignment.result import AlignmentResult
from cryocloud.cli import main
from cryocloud.errors import StoreError
from cryocloud.geometry import aligned_to_raw, raw_to_aligned
from cryocloud.model import TiltSeries
from cryocloud.store import read_tilt_series, read_xf
from cryocloud.store.aretomo import read_aln, write_aln
from cryocloud.store.tiltfiles import xf_from_alignments

REAL_ALN = Path(__file__).parent / "data" / "real" / "aretomo_aln" / "global_no_local.aln"


def test_real_aretomo_file_and_the_imod_convention():
    aln = read_aln(REAL_ALN)
    assert aln.tilt_axis_angle == -95.404 and aln.raw_size == (4096, 4096, 61) and aln.n_patches == 0
    assert aln.tilt_angles[0] == -63.20 and aln.tilt_angles[-1] == 56.79 and len(aln.tilt_angles) == 61
    np.testing.assert_array_equal(aln.shifts_px[0], [9.220, 103.933])
    np.testing.assert_array_equal(aln.raw_indices, np.arange(61))
    # cryocloud's .xf of the alignment (geometry.xf_from_alignment: ROT = tilt axis, (TX, TY) = raw-image shift)
    # is the one alnfile makes of the file (df_to_xf: A = R(-ROT), d = -A (TX, TY)) and AreTomo3's own IMOD export
    # (AreTomo/ImodUtil/CSaveXF.cpp, transcribed)
    rot = np.deg2rad(-aln.tilt_axis_angle)
    a = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    aretomo = np.array([[*a.ravel(), *(a @ -s)] for s in aln.shifts_px])
    np.testing.assert_allclose(xf_from_alignments(aln.tilt_axis_angle, aln.shifts_px), aretomo, atol=1e-9)
    theirs = df_to_xf(alnfile_read(REAL_ALN))
    ours = xf_from_alignments(aln.tilt_axis_angle, aln.shifts_px)
    np.testing.assert_allclose(ours, np.concatenate([theirs[:, :, :2].reshape(-1, 4), theirs[:, :, 2]], axis=1), atol=1e-9)
    # the aligned image's centre sits at the shift in the raw image, and the .xf takes it back to the centre
    for row, shift in zip(ours[:3], aln.shifts_px[:3]):
        raw = aligned_to_raw(np.zeros((1, 2)), aln.tilt_axis_angle, shift)[0]
        np.testing.assert_allclose(row[:4].reshape(2, 2) @ raw + row[4:], 0.0, atol=1e-9)


def test_alignment_round_trip_and_refusals(tmp_path):
    rng = np.random.default_rng(0)
    angles, shifts = np.arange(-60.0, 61.0, 3.0), rng.normal(0, 15, (41, 2))
    write_aln(tmp_path / "ts.aln", tilt_angles=angles, tilt_axis_angle=84.7312, shifts_px=shifts, image_size_xy=(512, 480))
    back = read_aln(tmp_path / "ts.aln")
    assert back.tilt_axis_angle == pytest.approx(84.7312, abs=5e-5) and back.raw_size == (512, 480, 41)
    np.testing.assert_allclose(back.tilt_angles, angles, atol=5e-3)  # TILT has 2 decimals, TX/TY 3
    np.testing.assert_allclose(back.shifts_px, shifts, atol=5e-4)
    points = rng.normal(0, 100, (5, 2))
    np.testing.assert_allclose(raw_to_aligned(aligned_to_raw(points, 84.7312, shifts[3]), back.tilt_axis_angle, back.shifts_px[3]), points, atol=2e-3)

    text = (tmp_path / "ts.aln").read_text()
    (tmp_path / "rot.aln").write_text(text.replace("   84.7312", "   84.9000", 1))
    with pytest.raises(StoreError, match="ROT"):
        read_aln(tmp_path / "rot.aln")
    (tmp_path / "beta.aln").write_text(text.replace("# BetaOffset =     0.00", "# BetaOffset =     2.00"))
    with pytest.raises(StoreError, match="BetaOffset"):
        read_aln(tmp_path / "beta.aln")
    (tmp_path / "junk.aln").write_text("not an alignment\n")
    with pytest.raises(StoreError, match="junk.aln"):
        read_aln(tmp_path / "junk.aln")


@pytest.mark.slow
def test_align_writes_the_aln_beside_the_xf(tmp_path):
    rng = np.random.default_rng(1)
    angles = np.arange(-30.0, 31.0, 10.0)
    ts = TiltSeries.from_array(rng.normal(size=(7, 40, 48)).astype(np.float32), tilt_angles=angles, pixel_size=5.0)
    result = AlignmentResult(tilt_axis_angle_deg=-86.5, shifts_a=rng.normal(0, 20, (7, 2)), tilt_offset_deg=1.5, residuals=np.full(7, np.nan),
                             tilt_angles_deg=angles, pixel_size_a=5.0, method="none", binning=1)
    urls = write_alignment(ts, result, str(tmp_path / "aligned.zarr"), parameters={})
    assert urls["aln"] == str(tmp_path / "aligned.aln")
    aln = read_aln(urls["aln"])
    assert aln.tilt_axis_angle == pytest.approx(-86.5, abs=5e-5) and aln.raw_size == (48, 40, 7)
    np.testing.assert_allclose(aln.tilt_angles, angles + 1.5, atol=5e-3)
    np.testing.assert_allclose(aln.shifts_px * 5.0, result.shifts_a, atol=5e-3)
    np.testing.assert_allclose(xf_from_alignments(aln.tilt_axis_angle, aln.shifts_px), read_xf(urls["xf"]), atol=2e-3)


def test_convert_takes_the_alignment_from_an_aln(tmp_path, capsys):
    rng = np.random.default_rng(2)
    stack = rng.normal(size=(6, 32, 36)).astype(np.float32)
    with mrcfile.new(tmp_path / "raw.mrc") as mrc:
        mrc.set_data(stack)
        mrc.voxel_size = 4.0
    kept = [0, 1, 3, 4, 5]  # raw image 2 excluded by AreTomo (a dark frame)
    shifts = rng.normal(0, 5, (5, 2))
    write_aln(tmp_path / "raw.aln", tilt_angles=[-20.5, -10.5, 9.5, 19.5, 29.5], tilt_axis_angle=87.25, shifts_px=shifts, image_size_xy=(36, 32))
    text = (tmp_path / "raw.aln").read_text().replace("# RawSize = 36 32 5", "# RawSize = 36 32 6\n# DarkFrame =     2    3     0.00")
    (tmp_path / "raw.aln").write_text(text)
    assert main(["convert", str(tmp_path / "raw.mrc"), str(tmp_path / "ts.zarr"), "--aln", str(tmp_path / "raw.aln")]) == 0
    ts = read_tilt_series(str(tmp_path / "ts.zarr"))
    assert ts.tilt_axis_angle == pytest.approx(87.25) and ts.n_tilts == 5
    np.testing.assert_allclose(ts.tilt_angles, [-20.5, -10.5, 9.5, 19.5, 29.5])
    np.testing.assert_allclose(np.stack([ts.per_tilt("shift_x"), ts.per_tilt("shift_y")], 1), np.round(shifts, 3) * 4.0, atol=1e-9)
    np.testing.assert_array_equal(ts.data.values, stack[kept])
    (tmp_path / "short.aln").write_text(text.replace("# RawSize = 36 32 6", "# RawSize = 36 32 7"))
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "raw.mrc"), str(tmp_path / "ts2.zarr"), "--aln", str(tmp_path / "short.aln")]) == 2
    err = capsys.readouterr().err
    assert "short.aln" in err and "Traceback" not in err
