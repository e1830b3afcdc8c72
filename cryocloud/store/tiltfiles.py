"""IMOD tilt-angle files (.tlt, .rawtlt: one angle in degrees per line) and transform files (.xf).

An .xf file has one line per tilt image with six numbers ``a11 a12 a21 a22 dx dy`` (dx, dy in
pixels) mapping raw to aligned image coordinates; `cryocloud.geometry.xf_from_alignment` /
`alignment_from_xf` convert a row to and from (tilt-axis angle in degrees, raw-image shift in
pixels).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from cryocloud.errors import StoreError
from cryocloud.geometry import alignment_from_xf, xf_from_alignment
from cryocloud.store.textfiles import read_text, write_text


def _numeric_rows(url, columns: int, what: str, storage_options: dict | None) -> np.ndarray:
    loc, text = read_text(url, storage_options=storage_options)
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            raise StoreError(loc.url, f"line {number}: expected {columns} number(s), got {line.strip()!r}", field=what) from None
        if len(values) != columns or not np.all(np.isfinite(values)):
            raise StoreError(loc.url, f"line {number}: expected {columns} finite number(s), got {line.strip()!r}", field=what)
        rows.append(values)
    if not rows:
        raise StoreError(loc.url, "is empty; expected one line per tilt image", field=what)
    return np.asarray(rows, dtype=np.float64)


def read_tlt(url: str | os.PathLike, *, storage_options: dict | None = None) -> np.ndarray:
    """Tilt angles (deg, one per image in stack order) from a .tlt / .rawtlt file."""
    angles = _numeric_rows(url, 1, "tilt_angle", storage_options)[:, 0]
    if np.any(np.abs(angles) > 90):
        raise StoreError(str(url), f"angles must lie within [-90, 90] degrees, got {angles.min()}..{angles.max()}", field="tilt_angle")
    return angles


def write_tlt(url: str | os.PathLike, angles: Sequence[float], *, overwrite: bool = False, storage_options: dict | None = None) -> None:
    """Write tilt angles (deg), one per line with 4 decimals."""
    write_text(url, "".join(f"{float(a):10.4f}\n" for a in np.asarray(angles).reshape(-1)), overwrite=overwrite, storage_options=storage_options)


def read_xf(url: str | os.PathLike, *, storage_options: dict | None = None) -> np.ndarray:
    """IMOD .xf transforms, shape (n_tilts, 6): a11 a12 a21 a22 dx dy (dx, dy in pixels)."""
    return _numeric_rows(url, 6, "xf", storage_options)


def write_xf(url: str | os.PathLike, xf: np.ndarray, *, overwrite: bool = False, storage_options: dict | None = None) -> None:
    """Write IMOD .xf transforms (n_tilts, 6) in IMOD's layout: 7 decimals for a_ij, 3 for dx, dy (px)."""
    rows = np.asarray(xf, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != 6:
        raise StoreError(str(url), f"expected an array of shape (n_tilts, 6), got {rows.shape}", field="xf")
    text = "".join("%12.7f%12.7f%12.7f%12.7f%12.3f%12.3f\n" % tuple(r) for r in rows)
    write_text(url, text, overwrite=overwrite, storage_options=storage_options)


def alignments_from_xf(xf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-tilt (tilt-axis angles in deg (n,), raw-image shifts in pixels (n, 2)) from .xf rows."""
    pairs = [alignment_from_xf(row) for row in np.asarray(xf, dtype=np.float64)]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]).reshape(-1, 2)


def xf_from_alignments(tilt_axis_angles: Sequence[float] | float, shifts_px: np.ndarray) -> np.ndarray:
    """.xf rows (n, 6) from per-tilt (or one) tilt-axis angle (deg) and raw-image shifts (n, 2) in pixels."""
    shifts = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    angles = np.broadcast_to(np.asarray(tilt_axis_angles, dtype=np.float64), (shifts.shape[0],))
    return np.array([xf_from_alignment(a, s) for a, s in zip(angles, shifts)]).reshape(-1, 6)
