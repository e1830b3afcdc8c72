"""SerialEM ``.mdoc`` metadata of a tilt series.

An mdoc has ``key = value`` header lines, ``[T = ...]`` title lines (one usually reads
``Tilt axis angle = 85.3, binning = 4 ...``) and one ``[ZValue = n]`` (or ``[FrameSet = n]``)
section per image of the stack, in stack order. Units as SerialEM writes them: TiltAngle and
TiltAxisAngle in degrees (the axis counter-clockwise from image y), ExposureDose in e/A^2,
PixelSpacing in A, Defocus in micrometres (SerialEM's value and sign, kept as written),
DateTime as "dd-Mon-yy  HH:MM:SS".

The acquisition order follows DateTime when every section has one, else the section order.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cryocloud.errors import ModelError, StoreError
from cryocloud.model import Microscope, TiltSeries
from cryocloud.store.textfiles import read_text

_SECTION = re.compile(r"^\[\s*(ZValue|FrameSet)\s*=\s*(-?\d+)\s*\]$")
_TITLE = re.compile(r"^\[\s*T\s*=\s*(.*)\]$")
_AXIS_IN_TITLE = re.compile(r"Tilt\s*axis\s*angle\s*=\s*(-?[\d.]+(?:[eE][-+]?\d+)?)", re.IGNORECASE)
_DATE_FORMATS = ("%d-%b-%y %H:%M:%S", "%d-%b-%Y %H:%M:%S", "%Y-%m-%d %H:%M:%S")


def _parse_datetime(text: str) -> _dt.datetime | None:
    cleaned = " ".join(text.split())
    for fmt in _DATE_FORMATS:
        try:
            return _dt.datetime.strptime(cleaned, fmt)
        except ValueError:
            continue
    return None


@dataclass(frozen=True)
class Mdoc:
    """Parsed mdoc: header, titles and per-image sections in stack order, plus per-tilt arrays.

    Per-tilt arrays (stack order): `tilt_angle` (deg), `exposure_dose` (e/A^2, NaN where
    absent), `defocus_um` (SerialEM's Defocus, um), `pixel_spacing` (A), `date_time` (datetime
    or None), `sub_frame_path` (str or ""), `acquisition_order` (0 = first exposed).
    """

    source: str
    header: dict[str, str]
    titles: list[str]
    sections: list[dict[str, str]] = field(repr=False)

    def _floats(self, key: str) -> np.ndarray:
        out = np.full(len(self.sections), np.nan)
        for i, sec in enumerate(self.sections):
            if key in sec:
                try:
                    out[i] = float(sec[key].split()[0])
                except (ValueError, IndexError):
                    raise StoreError(self.source, f"section {i}: expected a number, got {sec[key]!r}", field=key) from None
        return out

    @property
    def n_tilts(self) -> int:
        return len(self.sections)

    @property
    def tilt_angle(self) -> np.ndarray:
        angles = self._floats("TiltAngle")
        if np.any(np.isnan(angles)):
            raise StoreError(self.source, f"section {int(np.flatnonzero(np.isnan(angles))[0])} has no TiltAngle", field="TiltAngle")
        return angles

    @property
    def exposure_dose(self) -> np.ndarray:
        return self._floats("ExposureDose")

    @property
    def prior_record_dose(self) -> np.ndarray:
        """SerialEM's PriorRecordDose (e/A^2 received before each image; NaN where absent)."""
        return self._floats("PriorRecordDose")

    @property
    def defocus_um(self) -> np.ndarray:
        return self._floats("Defocus")

    @property
    def pixel_spacing(self) -> np.ndarray:
        per_section = self._floats("PixelSpacing")
        header = self.header.get("PixelSpacing")
        if header is not None:
            per_section[np.isnan(per_section)] = float(header)
        return per_section

    @property
    def pixel_size(self) -> float | None:
        """Pixel size (A): the header's PixelSpacing, else the sections' (None when absent)."""
        values = self.pixel_spacing
        return None if np.all(np.isnan(values)) else float(np.nanmedian(values))

    @property
    def date_time(self) -> list[_dt.datetime | None]:
        return [_parse_datetime(sec["DateTime"]) if "DateTime" in sec else None for sec in self.sections]

    @property
    def sub_frame_path(self) -> list[str]:
        return [sec.get("SubFramePath", "") for sec in self.sections]

    @property
    def acquisition_order(self) -> np.ndarray:
        """0 = first exposed: by DateTime when all sections have one (ties keep section order)."""
        times = self.date_time
        if all(t is not None for t in times):
            rank = sorted(range(len(times)), key=lambda i: (times[i], i))
        else:
            rank = list(range(len(times)))
        order = np.empty(len(times), dtype=np.int64)
        order[rank] = np.arange(len(times))
        return order

    @property
    def tilt_axis_angle(self) -> float | None:
        """Tilt axis (deg, counter-clockwise from image y): title line, else TiltAxisAngle keys."""
        for title in self.titles:
            match = _AXIS_IN_TITLE.search(title)
            if match:
                return float(match.group(1))
        for key in ("TiltAxisAngle", "Tilt axis angle"):
            if key in self.header:
                return float(self.header[key])
        values = self._floats("TiltAxisAngle")
        return None if np.all(np.isnan(values)) else float(np.nanmedian(values))

    @property
    def voltage_kv(self) -> float | None:
        return float(self.header["Voltage"]) if "Voltage" in self.header else None

    def to_tilt_series(
        self,
        stack: Any,
        *,
        pixel_size: float | None = None,
        microscope: Microscope | None = None,
        exposure: float | None = None,
    ) -> TiltSeries:
        """TiltSeries from an image stack (tilt, y, x) in mdoc section order.

        `stack` is a numpy/Dask array or an object with `.data` (xarray) such as the Tomogram
        `read_mrc` returns. Pixel size comes from the mdoc unless given; exposure per tilt
        (e/A^2) from ExposureDose unless `exposure` is given (an mdoc without doses, or with all
        zero, needs it); pre-exposure is SerialEM's PriorRecordDose when every section has it
        and the doses come from the mdoc, else the exposure accumulated along the acquisition order.
        """
        array = getattr(getattr(stack, "data", None), "data", stack)
        if getattr(array, "ndim", 0) != 3 or array.shape[0] != self.n_tilts:
            raise StoreError(
                self.source, f"describes {self.n_tilts} images but the stack has shape {getattr(array, 'shape', None)}", field="ZValue"
            )
        doses = self.exposure_dose
        prior = self.prior_record_dose
        pre = None if exposure is not None or np.any(np.isnan(prior)) else prior
        if exposure is not None:
            doses = np.full(self.n_tilts, float(exposure))
        elif np.any(np.isnan(doses)) or not np.any(doses > 0):
            raise StoreError(self.source, "has no ExposureDose per image (or all are 0); pass the exposure per tilt (e/A^2)", field="ExposureDose")
        px = pixel_size if pixel_size is not None else self.pixel_size
        if px is None:
            raise StoreError(self.source, "has no PixelSpacing; pass the pixel size (A)", field="PixelSpacing")
        scope = microscope or (Microscope(voltage_kv=self.voltage_kv) if self.voltage_kv else Microscope())
        try:
            return TiltSeries.from_array(
                array, tilt_angles=self.tilt_angle, pixel_size=px, acquisition_order=self.acquisition_order,
                exposure=doses, pre_exposure=pre, microscope=scope, tilt_axis_angle=self.tilt_axis_angle or 0.0,
            )
        except ModelError as exc:
            raise StoreError(self.source, exc.problem, field=exc.field) from exc


def parse_mdoc(text: str, source: str = "<mdoc>") -> Mdoc:
    """Parse mdoc text (see the module docstring); StoreError on malformed lines."""
    header: dict[str, str] = {}
    titles: list[str] = []
    sections: list[dict[str, str]] = []
    current = header
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if (m := _SECTION.match(line)) is not None:
            current = {}
            sections.append(current)
            continue
        if (m := _TITLE.match(line)) is not None:
            titles.append(m.group(1).strip())
            continue
        if line.startswith("[") and line.endswith("]"):
            current = {}  # other blocks (e.g. [MontSection]) are not images of the stack
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise StoreError(source, f"line {number}: expected 'key = value', got {line!r}", field="line")
        current[key.strip()] = value.strip()
    if not sections:
        raise StoreError(source, "has no [ZValue = n] sections (no images described)", field="ZValue")
    return Mdoc(source, header, titles, sections)


def read_mdoc(url: str | os.PathLike, *, storage_options: dict | None = None) -> Mdoc:
    """Read and parse a SerialEM .mdoc file at a URL."""
    loc, text = read_text(url, storage_options=storage_options)
    return parse_mdoc(text, source=loc.url)
