"""AreTomo alignment files (.aln), read and written with the `alnfile` package.

An .aln holds, per aligned tilt image, ROT (the tilt axis, deg), GMAG, TX, TY (shifts, pixels of the
raw stack), ..., TILT (the tilt angle used to reconstruct, deg), and a header with RawSize (x, y, images
of the raw stack), the excluded images (DarkFrame: raw index, angle) and local patch alignments.

Convention, as AreTomo3 itself exports it to IMOD (AreTomo/ImodUtil/CSaveXF.cpp: a11 = cos(-ROT),
a12 = -sin(-ROT), a21 = sin(-ROT), a22 = cos(-ROT), (dx, dy) = A (-TX, -TY)), as RELION 5's AreTomo import
reads it (tomography_python_programs/align_tilt_series/aretomo: rlnTomoZRot = ROT, rlnTomoYTilt = TILT,
specimen shifts = (TX, TY), the roles of its IMOD import's .xf rotation and -A^-1 d) and as alnfile converts
it (df_to_xf, the same matrix as CSaveXF):
ROT is cryocloud's `tilt_axis_angle` (counter-clockwise from image y) and (TX, TY) x pixel size its
per-tilt shift_x / shift_y (geometry.aligned_to_raw). cryocloud holds one tilt axis per series, so a ROT
that changes from tilt to tilt is refused, as are a magnification (GMAG != 1) and a BetaOffset (tilt about
x); local (patch) alignments are not applied, and `AreTomoAlignment.n_patches` says when there were some.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from alnfile.data_model import AlnData, TiltImageAlignmentParameters

from cryocloud.errors import StoreError
from cryocloud.model import TiltSeries
from cryocloud.store.textfiles import read_text, write_text


@dataclass(frozen=True)
class AreTomoAlignment:
    """One .aln: `tilt_angles` (deg), `tilt_axis_angle` (deg), `shifts_px` (n, 2) of the aligned images,
    `raw_indices` (n,) their positions in the raw stack of `raw_size` (x, y, images), the raw stack's
    `raw_tilt_angles` (every image, dark ones too), `n_patches` of the local alignment (not applied)."""

    tilt_angles: np.ndarray
    tilt_axis_angle: float
    shifts_px: np.ndarray
    raw_indices: np.ndarray
    raw_size: tuple[int, int, int]
    raw_tilt_angles: np.ndarray
    n_patches: int = 0

    def apply_to(self, raw: TiltSeries, *, source: str = "aln") -> TiltSeries:
        """The raw stack `raw` (all `raw_size[2]` images in stack order) reduced to the aligned images, with the
        .aln's tilt angles, tilt axis and shifts (A, at `raw`'s pixel size); `source` names the .aln in errors."""
        if raw.n_tilts != self.raw_size[2]:
            raise StoreError(source, f"describes a raw stack of {self.raw_size[2]} images, the tilt series has {raw.n_tilts}", field="RawSize")
        ts = raw.select_tilts(self.raw_indices)
        ts = ts.with_per_tilt(tilt_angle=self.tilt_angles, shift_x=self.shifts_px[:, 0] * raw.pixel_size, shift_y=self.shifts_px[:, 1] * raw.pixel_size)
        return TiltSeries(ts.data, ts.microscope, float(self.tilt_axis_angle))


def read_aln(url: str | os.PathLike, *, storage_options: dict | None = None) -> AreTomoAlignment:
    """The global alignment of an AreTomo .aln file (see the module docstring for what is refused)."""
    loc, text = read_text(url, storage_options=storage_options)
    try:
        aln = AlnData.from_string(text)
    except (ValueError, IndexError, TypeError) as exc:
        raise StoreError(loc.url, f"is not a readable AreTomo .aln file ({exc})") from exc
    rows = aln.GlobalAlignments
    if not rows or aln.RawSize is None:
        raise StoreError(loc.url, "has no global alignment table (# SEC ROT GMAG TX TY ... TILT) or no # RawSize", field="GlobalAlignment")
    rot = np.array([r.rot for r in rows])
    if np.ptp(rot) > 1e-3:
        raise StoreError(loc.url, f"ROT changes from tilt to tilt ({rot.min():.4f}..{rot.max():.4f} deg); expected one tilt axis", field="ROT")
    gmag = np.array([r.gmag for r in rows])
    if np.any(np.abs(gmag - 1.0) > 1e-4):
        raise StoreError(loc.url, f"GMAG is {gmag.min():.5f}..{gmag.max():.5f}; magnification changes are not supported (expected 1)", field="GMAG")
    if abs(aln.BetaOffset or 0.0) > 1e-6:
        raise StoreError(loc.url, f"BetaOffset is {aln.BetaOffset}; tilts about the image x axis are not supported (expected 0)", field="BetaOffset")
    raw_size = aln.RawSize  # (width, height, images), ints: alnfile's model validates them
    dark = {d.section_idx: d.angle for d in aln.DarkFrames}
    kept = np.array([i for i in range(raw_size[2]) if i not in dark])
    if kept.size != len(rows) or any(i >= raw_size[2] for i in dark):
        raise StoreError(loc.url, f"RawSize holds {raw_size[2]} images, {len(dark)} dark, but {len(rows)} are aligned", field="DarkFrame")
    angles = np.array([r.tilt for r in rows])
    raw_angles = np.empty(raw_size[2])
    raw_angles[kept] = angles
    for i, angle in dark.items():
        raw_angles[i] = angle
    return AreTomoAlignment(
        tilt_angles=angles, tilt_axis_angle=float(rot[0]), shifts_px=np.array([[r.tx, r.ty] for r in rows]), raw_indices=kept,
        raw_size=raw_size, raw_tilt_angles=raw_angles, n_patches=int(aln.NumPatches or 0),
    )


def write_aln(
    url: str | os.PathLike, *, tilt_angles, tilt_axis_angle: float, shifts_px: np.ndarray, image_size_xy: tuple[int, int],
    overwrite: bool = False, storage_options: dict | None = None,
) -> None:
    """Write an AreTomo .aln (global alignment, no dark frames, no patches) of tilt angles (deg), one tilt axis
    (deg) and raw-image shifts (n, 2) in pixels of images `image_size_xy` (x, y)."""
    angles = np.asarray(tilt_angles, dtype=np.float64).reshape(-1)
    shifts = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    if shifts.shape[0] != angles.size:
        raise StoreError(str(url), f"got {angles.size} tilt angles and {shifts.shape[0]} shifts; expected one of each per tilt", field="TX")
    aln = AlnData(
        RawSize=(int(image_size_xy[0]), int(image_size_xy[1]), angles.size),
        GlobalAlignments=[TiltImageAlignmentParameters(sec=i, rot=float(tilt_axis_angle), tx=float(s[0]), ty=float(s[1]), tilt=float(a))
                          for i, (a, s) in enumerate(zip(angles, shifts))],
    )
    write_text(url, str(aln), overwrite=overwrite, storage_options=storage_options)
