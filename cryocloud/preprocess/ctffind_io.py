"""CTFFIND4 output text files (per-micrograph CTF fits), parsed and formatted.

CTFFIND4 text: `#` comment lines (version, input, pixel size / voltage / Cs / amplitude contrast,
box and search ranges, column legend) then one row per micrograph with 7 columns:
micrograph number (1-based), defocus 1 (A), defocus 2 (A), azimuth of astigmatism (deg),
additional phase shift (rad), cross correlation, spacing up to which rings were fit (A).
Defocus 1 is the larger (underfocus positive), its azimuth counter-clockwise from +x, which is
our (defocus_u, defocus_v, astigmatism_angle) convention.

Tables are pandas DataFrames with columns TABLE_COLUMNS; header values come back in `.attrs`
(pixel_size, voltage_kv, cs_mm, amplitude_contrast when present). cryocloud adds one comment
line, `# Poor fits (micrograph numbers): 3 7`, naming the micrographs whose fit is poor (a
`poor_fit` column of the table when written; `.attrs["poor_fit"]`, micrograph numbers, when read).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from cryocloud.errors import ModelError, StoreError
from cryocloud.model import Microscope, TiltSeries

TABLE_COLUMNS = ("micrograph", "defocus_u", "defocus_v", "astigmatism_angle", "phase_shift", "score", "fit_resolution_a")

_HEADER_PATTERNS = {
    "pixel_size": r"Pixel size:\s*([-+\d.eE]+)",
    "voltage_kv": r"acceleration voltage:\s*([-+\d.eE]+)",
    "cs_mm": r"spherical aberration:\s*([-+\d.eE]+)",
    "amplitude_contrast": r"amplitude contrast:\s*([-+\d.eE]+)",
}
_POOR = "# Poor fits (micrograph numbers):"


def parse_ctffind(text: str, source: str = "<ctffind>") -> pd.DataFrame:
    """Parse CTFFIND4 output text into a table (see the module docstring)."""
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split()
        if len(fields) != len(TABLE_COLUMNS):
            raise StoreError(source, f"line {number}: expected {len(TABLE_COLUMNS)} columns, got {len(fields)}", field="columns")
        try:
            rows.append([float(f) for f in fields])
        except ValueError:
            raise StoreError(source, f"line {number}: expected numbers, got {stripped!r}", field="columns") from None
    if not rows:
        raise StoreError(source, "has no fit rows (expected one line of 7 numbers per micrograph)", field="rows")
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    table["micrograph"] = table["micrograph"].astype(int)
    for key, pattern in _HEADER_PATTERNS.items():
        match = re.search(pattern, header)
        if match:
            table.attrs[key] = float(match.group(1))
    poor = [line[len(_POOR):].split() for line in text.splitlines() if line.startswith(_POOR)]
    if poor:
        try:
            table.attrs["poor_fit"] = [int(v) for v in poor[0]]
        except ValueError:
            raise StoreError(source, f"expected micrograph numbers after {_POOR!r}, got {' '.join(poor[0])!r}", field="poor_fit") from None
    return table


def format_ctffind(
    table: pd.DataFrame,
    *,
    pixel_size_a: float,
    microscope: Microscope,
    input_name: str = "tilt_series",
    box: int = 256,
    resolution_range_a: tuple[float, float] = (30.0, 5.0),
    defocus_range_a: tuple[float, float] = (5000.0, 70000.0),
) -> str:
    """CTFFIND4-format text of a table with columns defocus_u, defocus_v, astigmatism_angle,
    score, fit_resolution_a (phase_shift, micrograph and poor_fit optional). `resolution_range_a`:
    the band actually fitted (A; CtfSearch.resolution_range_a, never beyond Nyquist)."""
    missing = [c for c in ("defocus_u", "defocus_v", "astigmatism_angle", "score", "fit_resolution_a") if c not in table]
    if missing:
        raise ModelError(missing[0], "column is missing from the CTF table")
    n = len(table)
    lines = [
        "# Output from CTFFind version 4.1.14 compatible (cryocloud)",
        f"# Input file: {input_name} ; Number of micrographs: {n}",
        f"# Pixel size: {pixel_size_a:.3f} Angstroms ; acceleration voltage: {microscope.voltage_kv:.1f} keV ; "
        f"spherical aberration: {microscope.cs_mm:.2f} mm ; amplitude contrast: {microscope.amplitude_contrast:.2f}",
        f"# Box size: {box} pixels ; min. res.: {resolution_range_a[0]:.1f} Angstroms ; max. res.: {resolution_range_a[1]:.1f} "
        f"Angstroms ; min. def.: {defocus_range_a[0]:.1f} um; max. def. {defocus_range_a[1]:.1f} um",
        "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; #4 - azimuth of astigmatism; "
        "#5 - additional phase shift [radians]; #6 - cross correlation; #7 - spacing (in Angstroms) up to which CTF rings were fit successfully",
    ]
    micrograph = table["micrograph"] if "micrograph" in table else np.arange(1, n + 1)
    if "poor_fit" in table and table["poor_fit"].any():
        lines.append(f"{_POOR} " + " ".join(str(int(m)) for m in np.asarray(micrograph)[table["poor_fit"].to_numpy(dtype=bool)]))
    phase = table["phase_shift"] if "phase_shift" in table else np.zeros(n)
    for i in range(n):
        values = [
            float(micrograph.iloc[i] if hasattr(micrograph, "iloc") else micrograph[i]),
            table["defocus_u"].iloc[i], table["defocus_v"].iloc[i], table["astigmatism_angle"].iloc[i],
            float(phase.iloc[i] if hasattr(phase, "iloc") else phase[i]), table["score"].iloc[i], table["fit_resolution_a"].iloc[i],
        ]
        lines.append(" ".join(f"{v:.6f}" for v in values))
    return "\n".join(lines) + "\n"


def apply_ctf_table(ts: TiltSeries, table: pd.DataFrame, *, source: str = "CTF table") -> TiltSeries:
    """Copy of `ts` with defocus_u/v and astigmatism_angle from a table whose rows follow the
    tilt order of `ts` (CTFFIND micrograph n = tilt n-1 of the stack)."""
    if len(table) != ts.n_tilts:
        raise ModelError("micrograph", f"{source} has {len(table)} rows for {ts.n_tilts} tilts", source=source)
    order = np.argsort(table["micrograph"].to_numpy()) if "micrograph" in table else np.arange(len(table))
    rows = table.iloc[order]
    return ts.with_per_tilt(
        defocus_u=rows["defocus_u"].to_numpy(), defocus_v=rows["defocus_v"].to_numpy(), astigmatism_angle=rows["astigmatism_angle"].to_numpy()
    )
