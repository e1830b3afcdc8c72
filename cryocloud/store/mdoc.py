"""SerialEM ``.mdoc`` metadata of a tilt series, parsed with the `mdocfile` library.

An mdoc has ``key = value`` header lines, ``[T = ...]`` title lines (one usually reads
``Tilt axis angle = 85.3, binning = 4 ...``) and one ``[ZValue = n]`` (or ``[FrameSet = n]``)
section per image: section ZValue = n describes image n of the stack. Sections may be listed in any
order; they are taken in ZValue order, which must number the images 0..N-1 once each (duplicates,
gaps and negative values are refused). ``[MontSection = n]`` blocks describe montage sections, not
images, and are left out. Units as SerialEM writes them: TiltAngle and TiltAxisAngle in degrees
(the axis counter-clockwise from image y), ExposureDose in e/A^2, PixelSpacing in A, Defocus in
micrometres (SerialEM's value and sign, kept as written), DateTime as "dd-Mon-yy  HH:MM:SS".

The acquisition order follows DateTime when every section has one, else the ZValue order.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydantic
from mdocfile.data_models import MdocGlobalData, MdocSectionData
from mdocfile.utils import find_section_entries, find_title_entries

from cryocloud.errors import ModelError, StoreError
from cryocloud.model import Microscope, TiltSeries
from cryocloud.store.textfiles import read_text

# mdocfile logs a warning per section for keys it has no field for (kept as extras) and for the
# FrameDosesAndNumber alias: both are normal in SerialEM files and lose nothing, so not for stderr.
logging.getLogger("mdocfile").setLevel(logging.ERROR)

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
    """Parsed mdoc: header, titles and the image sections in stack (ZValue) order, plus per-tilt arrays.

    `header` and `sections` are mdocfile models (typed SerialEM keys as attributes, other keys as
    string extras); `kind` is the sections' label, "ZValue" or "FrameSet": sections[n] is
    [kind = n]. Per-tilt arrays (stack order): `tilt_angle` (deg), `exposure_dose` (e/A^2, NaN
    where absent), `defocus_um` (SerialEM's Defocus, um), `pixel_spacing` (A), `date_time`
    (datetime or None), `sub_frame_path` (str or ""), `acquisition_order` (0 = first exposed).
    """

    source: str
    header: MdocGlobalData
    titles: list[str]
    sections: list[MdocSectionData] = field(repr=False)
    kind: str = "ZValue"

    def _where(self, i: int) -> str:
        return f"section {i} [{self.kind} = {i}]"

    def _floats(self, key: str) -> np.ndarray:
        out = np.full(len(self.sections), np.nan)
        for i, sec in enumerate(self.sections):
            value = getattr(sec, key, None)  # typed by mdocfile, or a string extra (TiltAxisAngle)
            if value is not None:
                try:
                    out[i] = float(value)
                except ValueError:
                    raise StoreError(self.source, f"{self._where(i)}: expected a number, got {value!r}", field=key) from None
        return out

    @property
    def n_tilts(self) -> int:
        return len(self.sections)

    @property
    def tilt_angle(self) -> np.ndarray:
        angles = self._floats("TiltAngle")
        if np.any(np.isnan(angles)):
            raise StoreError(self.source, f"{self._where(int(np.flatnonzero(np.isnan(angles))[0]))} has no TiltAngle", field="TiltAngle")
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
        if self.header.PixelSpacing is not None:
            per_section[np.isnan(per_section)] = self.header.PixelSpacing
        return per_section

    @property
    def pixel_size(self) -> float | None:
        """Pixel size (A): the header's PixelSpacing, else the sections' (None when absent)."""
        values = self.pixel_spacing
        return None if np.all(np.isnan(values)) else float(np.nanmedian(values))

    @property
    def date_time(self) -> list[_dt.datetime | None]:
        return [_parse_datetime(sec.DateTime) if sec.DateTime else None for sec in self.sections]

    @property
    def sub_frame_path(self) -> list[str]:
        # mdocfile makes SubFramePath a path object; an empty value becomes ".", which names no movie
        paths = [str(sec.SubFramePath) if sec.SubFramePath is not None else "" for sec in self.sections]
        return ["" if p == "." else p for p in paths]

    @property
    def gain_reference(self) -> str | None:
        """Base name of SerialEM's GainReference (the gain of unnormalised frames; header or sections),
        None when absent; StoreError when sections name different files."""
        extras = [self.header.model_extra or {}] + [sec.model_extra or {} for sec in self.sections]
        names = {str(e["GainReference"]).strip().replace("\\", "/").rsplit("/", 1)[-1] for e in extras if e.get("GainReference")}
        names.discard("")
        if len(names) > 1:
            raise StoreError(self.source, f"names {len(names)} different gain references ({', '.join(sorted(names))}); "
                             "expected one per tilt series", field="GainReference")
        return names.pop() if names else None

    @property
    def acquisition_order(self) -> np.ndarray:
        """0 = first exposed: by DateTime when all sections have one (ties keep stack order)."""
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
        extras = self.header.model_extra or {}
        for key in ("TiltAxisAngle", "Tilt axis angle"):
            if key in extras:
                try:
                    return float(extras[key])
                except ValueError:
                    raise StoreError(self.source, f"header: expected a number, got {extras[key]!r}", field=key) from None
        values = self._floats("TiltAxisAngle")
        return None if np.all(np.isnan(values)) else float(np.nanmedian(values))

    @property
    def voltage_kv(self) -> float | None:
        return self.header.Voltage

    def to_tilt_series(
        self,
        stack: Any,
        *,
        pixel_size: float | None = None,
        microscope: Microscope | None = None,
        exposure: float | None = None,
    ) -> TiltSeries:
        """TiltSeries from an image stack (tilt, y, x): image n gets section [ZValue = n].

        `stack` is a numpy/Dask array or an object with `.data` (xarray) such as the Tomogram
        `read_mrc` returns. Pixel size comes from the mdoc unless given; exposure per tilt
        (e/A^2) from ExposureDose unless `exposure` is given (an mdoc without doses, or with all
        zero, needs it); pre-exposure is SerialEM's PriorRecordDose when every section has it
        and the doses come from the mdoc, else the exposure accumulated along the acquisition order.
        """
        array = getattr(getattr(stack, "data", None), "data", stack)
        shape = getattr(array, "shape", None)
        if getattr(array, "ndim", 0) == 3 and shape is not None and self.n_tilts > shape[0]:
            raise StoreError(
                self.source, f"section [{self.kind} = {shape[0]}]: beyond the stack of shape {shape}: the mdoc describes "
                f"{self.n_tilts} images, {self.kind} 0..{shape[0] - 1} fit", field=self.kind,
            )
        if getattr(array, "ndim", 0) != 3 or shape is None or shape[0] != self.n_tilts:
            raise StoreError(self.source, f"describes {self.n_tilts} images but the stack has shape {shape}", field=self.kind)
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


_BLOCK = re.compile(r"^\[\s*(\w+)\s*=\s*(.*?)\s*\]$")
_EXPECTED = {"float_parsing": "a number", "int_parsing": "an integer", "int_from_float": "an integer", "bool_parsing": "0 or 1"}


def _model(source: str, where: str, parse: Any, lines: list[str]) -> Any:
    """mdocfile's model of some lines (`parse`: a from_lines), its errors as a StoreError naming `where`."""
    try:
        return parse(lines)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "line"
        expected = _EXPECTED.get(err["type"], err["msg"])
        raise StoreError(source, f"{where}: expected {expected}, got {err['input']!r}", field=key) from None


def _stack_order(source: str, sections: list[MdocSectionData]) -> tuple[str, list[MdocSectionData]]:
    """(kind, sections sorted by it) where kind is ZValue or FrameSet; StoreError unless the
    values number the images 0..N-1 once each."""
    kinds = {"ZValue" if s.ZValue is not None else "FrameSet" for s in sections}
    if len(kinds) > 1:
        raise StoreError(source, "mixes [ZValue = n] and [FrameSet = n] sections; expected one kind", field="ZValue")
    kind = kinds.pop()
    index = [getattr(s, kind) for s in sections]
    for z in index:
        if z < 0:
            raise StoreError(source, f"section [{kind} = {z}]: negative; expected the stack index of its image (0 = first)", field=kind)
    counts = Counter(index)
    for z in index:
        if counts[z] > 1:
            raise StoreError(source, f"section [{kind} = {z}]: listed {counts[z]} times; expected one section per image", field=kind)
    if max(index) >= len(index):  # distinct and not negative: then one of 0..N-1 is missing
        gap = next(m for m in range(len(index)) if m not in counts)
        after = min(z for z in index if z > gap)
        raise StoreError(
            source, f"section [{kind} = {after}]: no section has {kind} = {gap}; expected {kind} 0..{len(index) - 1} "
            "without gaps (one section per image of the stack)", field=kind,
        )
    return kind, [s for _, s in sorted(zip(index, sections), key=lambda pair: pair[0])]


def parse_mdoc(text: str, source: str = "<mdoc>") -> Mdoc:
    """Parse mdoc text with mdocfile (see the module docstring); StoreError on a malformed line or
    value, or ZValues that do not number the images 0..N-1 once each.

    The text is split into header and sections here, with mdocfile's own section finder, rather
    than by `mdocfile.Mdoc.from_lines`, so that an error can name its section.
    """
    lines = [_BLOCK.sub(r"[\1 = \2]", line.strip()) for line in text.splitlines()]  # mdocfile finds "[ZValue = n]" spelled so
    starts = find_section_entries(lines)
    n_head = starts[0] if starts else len(lines)
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        whole = not line.startswith("[") or _BLOCK.match(line) is not None  # not a half-written "[ZValue = 3"
        if number <= n_head and not line.startswith("[T ="):  # mdocfile splits a header line at its one "="
            malformed = line.count("=") != 1 or not whole
        else:  # mdocfile would skip a section line without "=" without a word
            malformed = "=" not in line or not whole
        if malformed:
            raise StoreError(source, f"line {number}: expected 'key = value', got {line!r}", field="line")
    head = lines[:n_head]
    header = _model(source, "header", MdocGlobalData.from_lines, head)
    titles = [head[i].removeprefix("[T =").removesuffix("]").strip() for i in find_title_entries(head)]
    sections = [_model(source, f"section {lines[a]}", MdocSectionData.from_lines, lines[a:b]) for a, b in zip(starts, [*starts[1:], len(lines)])]
    images = [s for s in sections if s.ZValue is not None or s.FrameSet is not None]  # not [MontSection = n]
    if not images:
        raise StoreError(source, "has no [ZValue = n] sections (no images described)", field="ZValue")
    kind, ordered = _stack_order(source, images)
    return Mdoc(source, header, titles, ordered, kind)


def read_mdoc(url: str | os.PathLike, *, storage_options: dict | None = None) -> Mdoc:
    """Read and parse a SerialEM .mdoc file at a URL."""
    loc, text = read_text(url, storage_options=storage_options)
    return parse_mdoc(text, source=loc.url)
