"""Portal tilt-series alignments (``RUN/Alignments/ID/``) and acquisition records (``RUN/Frames/*.mdoc``).

``alignment_metadata.json`` (field names as in the portal's alignment schema and the
cryoet-alignment package's portal model): ``alignment_type`` (GLOBAL / LOCAL), ``format``
(IMOD, ARETOMO3, ...), ``tilt_offset`` (deg), ``x_rotation_offset`` (deg), ``volume_offset``
{x, y, z} and ``volume_dimension`` {x, y, z} (A), ``per_section_alignment_parameters``
[{``z_index``, ``tilt_angle`` (deg), ``volume_x_rotation`` (deg), ``in_plane_rotation`` (2x2),
``x_offset``, ``y_offset`` (pixels of the tilt series)}]. Next to it the IMOD files: ``.xf``
(raw -> aligned, see `cryocloud.store.tiltfiles`), ``.tlt`` (refined angles), ``.xtilt``.

Conventions: ``in_plane_rotation`` is the tilt-axis rotation R(axis) and (x_offset, y_offset) the
shift applied after it (the AreTomo convention), which is exactly cryocloud's raw-image model
``raw = R(axis) aligned + shift`` (`cryocloud.geometry.aligned_to_raw`): the axis angle is
atan2(R10, R00) and the shift is the offset, in pixels. An .xf row A, d maps to R = A^T and
offset = -A^T d (`cryocloud.geometry.alignment_from_xf` gives the same pair).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

import numpy as np

from cryocloud.errors import StoreError
from cryocloud.model import TiltSeries
from cryocloud.store.location import Location
from cryocloud.store.mdoc import Mdoc, parse_mdoc
from cryocloud.store.location import PORTAL_BUCKET
from cryocloud.store.portal.address import portal_options
from cryocloud.store.portal.layout import PortalRun, portal_run, read_json
from cryocloud.store.tiltfiles import alignments_from_xf, read_tlt, read_xf


@dataclass(frozen=True)
class PortalAlignment:
    """One alignment of a run, per tilt image in stack order (z_index 0..n-1).

    `tilt_axis_angles` (deg, counter-clockwise from image y), `shifts_px` (n, 2: x, y in pixels of
    the tilt series), `tilt_angles` (deg, refined), `x_tilt` (deg), `included` (False where the
    section was excluded: no parameters), and `source` ("json" or "xf").
    """

    url: str
    alignment_type: str
    tilt_angles: np.ndarray
    tilt_axis_angles: np.ndarray
    shifts_px: np.ndarray
    x_tilt: np.ndarray
    included: np.ndarray
    source: str
    tilt_offset: float = 0.0
    volume_offset_a: tuple[float, float, float] = (0.0, 0.0, 0.0)
    metadata: dict = field(default_factory=dict, compare=False, repr=False)

    def apply(self, ts: TiltSeries, *, pixel_size_a: float, drop_excluded: bool = False) -> TiltSeries:
        """`ts` with the alignment as per-tilt `shift_x`, `shift_y` (A) and the median tilt-axis angle.

        `pixel_size_a` is the pixel size (A) of the tilt series the shifts were measured on (level 0,
        the tilt series' ``pixel_spacing``), whatever pyramid level `ts` was read at. The refined
        angles replace `tilt_angle` where the alignment has them for every tilt. Sections the
        alignment leaves out (no parameters, including any after its last z_index) are an error
        unless `drop_excluded`, which keeps only the aligned tilts.
        """
        n = self.tilt_angles.size
        if n > ts.n_tilts:
            raise StoreError(self.url, f"has {n} sections for a tilt series of {ts.n_tilts} images", field="per_section_alignment_parameters")
        included = np.concatenate([self.included, np.zeros(ts.n_tilts - n, dtype=bool)])
        keep = np.flatnonzero(included)
        if keep.size < ts.n_tilts:
            if not drop_excluded:
                missing = np.flatnonzero(~included).tolist()
                raise StoreError(self.url, f"excludes sections {missing}; pass drop_excluded=True to keep only the aligned tilts", field="per_section_alignment_parameters")
            ts = ts.select_tilts(keep)
        shifts = self.shifts_px[keep] * float(pixel_size_a)
        aligned = ts.with_per_tilt(shift_x=shifts[:, 0], shift_y=shifts[:, 1])
        if np.all(np.isfinite(self.tilt_angles[keep])):
            aligned = aligned.with_per_tilt(tilt_angle=self.tilt_angles[keep])
        return TiltSeries(aligned.data, aligned.microscope, float(np.median(self.tilt_axis_angles[keep])))


def _float(where: str, value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise StoreError(where, f"expected a number, got {value!r}", field=name) from None
    if not np.isfinite(number):
        raise StoreError(where, f"expected a finite number, got {value!r}", field=name)
    return number


def _from_sections(url: str, meta: dict, n_tilts: int) -> dict[str, np.ndarray]:
    sections = meta.get("per_section_alignment_parameters")
    if not isinstance(sections, list) or not sections:
        raise StoreError(url, "expected a non-empty list of per-tilt parameters", field="per_section_alignment_parameters")
    out = {k: np.full(n_tilts, np.nan) for k in ("tilt", "axis", "sx", "sy", "xtilt")}
    for i, s in enumerate(sections):
        name = f"per_section_alignment_parameters[{i}]"
        if not isinstance(s, dict) or not isinstance(s.get("z_index"), int) or not 0 <= s["z_index"] < n_tilts:
            raise StoreError(url, f"expected an object with an integer z_index in 0..{n_tilts - 1}", field=name)
        rot = np.asarray(s.get("in_plane_rotation", np.eye(2)), dtype=np.float64)
        if rot.shape != (2, 2) or not np.allclose(rot @ rot.T, np.eye(2), atol=1e-3):
            raise StoreError(url, f"expected a 2x2 rotation matrix, got {s.get('in_plane_rotation')!r}", field=f"{name}.in_plane_rotation")
        z = s["z_index"]
        out["axis"][z] = np.rad2deg(np.arctan2(rot[1, 0], rot[0, 0]))
        out["sx"][z] = _float(url, s.get("x_offset", 0.0), f"{name}.x_offset")
        out["sy"][z] = _float(url, s.get("y_offset", 0.0), f"{name}.y_offset")
        out["tilt"][z] = _float(url, s.get("tilt_angle"), f"{name}.tilt_angle")
        out["xtilt"][z] = _float(url, s.get("volume_x_rotation", 0.0), f"{name}.volume_x_rotation")
    return out


def _from_imod(loc: Location, folder: str, names: list[str], storage_options: dict) -> dict[str, np.ndarray]:
    def url_of(suffix: str) -> str | None:
        hits = [n for n in names if n.endswith(suffix)]
        return f"{loc.protocol}://{hits[0]}" if hits else None

    xf_url = url_of(".xf")
    if xf_url is None:
        raise StoreError(loc.url, "has no per_section_alignment_parameters and its folder no .xf file", field="per_section_alignment_parameters")
    xf = read_xf(xf_url, storage_options=storage_options)
    axis, shifts = alignments_from_xf(xf)
    n = xf.shape[0]
    tlt_url, xtilt_url = url_of(".tlt"), url_of(".xtilt")
    tilt = read_tlt(tlt_url, storage_options=storage_options) if tlt_url else np.full(n, np.nan)
    xtilt = read_tlt(xtilt_url, storage_options=storage_options) if xtilt_url else np.zeros(n)
    for what, values, url in (("tilt_angle", tilt, tlt_url), ("xtilt", xtilt, xtilt_url)):
        if url is not None and values.size != n:  # a missing file's default has n values
            raise StoreError(url, f"has {values.size} lines for the {n} lines of the .xf in {folder}", field=what)
    return {"tilt": tilt, "axis": axis, "sx": shifts[:, 0], "sy": shifts[:, 1], "xtilt": xtilt}


def read_portal_alignment(url: str, n_tilts: int | None = None, *, storage_options: dict | None = None) -> PortalAlignment:
    """The alignment an ``alignment_metadata.json`` URL (s3://...) describes.

    Per-tilt parameters come from ``per_section_alignment_parameters`` when present (`n_tilts`
    sizes them; default: the highest z_index + 1), else from the .xf/.tlt/.xtilt in the same folder.
    """
    options = portal_options(storage_options)
    loc = Location("s3", url[5:] if url.startswith("s3://") else url, options)
    meta = read_json(loc.filesystem(), loc.path)
    folder = posixpath.dirname(loc.path)
    sections = meta.get("per_section_alignment_parameters")
    if sections:
        if n_tilts is None:
            n_tilts = 1 + max(int(s.get("z_index", -1)) if isinstance(s, dict) and isinstance(s.get("z_index"), int) else -1 for s in sections)
        values, source = _from_sections(loc.url, meta, n_tilts), "json"
    else:
        names = [p for p in loc.filesystem().ls(folder, detail=False) if p.endswith((".xf", ".tlt", ".xtilt"))]
        values, source = _from_imod(loc, folder, names, options), "xf"
    offset = meta.get("volume_offset") or {}
    offset_x, offset_y, offset_z = (_float(loc.url, offset.get(k, 0.0), f"volume_offset.{k}") for k in "xyz")
    return PortalAlignment(
        url=loc.url,
        alignment_type=str(meta.get("alignment_type", "")),
        tilt_angles=values["tilt"],
        tilt_axis_angles=values["axis"],
        shifts_px=np.stack([values["sx"], values["sy"]], axis=1),
        x_tilt=values["xtilt"],
        included=np.isfinite(values["axis"]),
        source=source,
        tilt_offset=_float(loc.url, meta.get("tilt_offset", 0.0), "tilt_offset"),
        volume_offset_a=(offset_x, offset_y, offset_z),
        metadata=meta,
    )


def run_alignments(run: PortalRun, *, storage_options: dict | None = None) -> list[PortalAlignment]:
    """Every alignment of a listed run."""
    return [read_portal_alignment(url, storage_options=storage_options) for url in run.alignments]


def read_portal_mdoc(dataset: str, run: str, *, storage_options: dict | None = None, bucket: str = PORTAL_BUCKET) -> Mdoc:
    """The SerialEM mdoc in the run's ``Frames/`` folder (the one file ending in .mdoc)."""
    loc = Location("s3", f"{bucket}/{dataset}/{run}/Frames", portal_options(storage_options))
    fs = loc.filesystem()
    try:
        names = sorted(p for p in fs.ls(loc.path, detail=False) if p.lower().endswith(".mdoc"))
    except FileNotFoundError:
        names = []
    if not names:
        raise StoreError(loc.url, f"run '{run}' has no .mdoc in its Frames folder", field="Frames")
    if len(names) > 1:
        raise StoreError(loc.url, f"holds {len(names)} .mdoc files ({', '.join(posixpath.basename(n) for n in names)}); expected one", field="Frames")
    return parse_mdoc(fs.cat_file(names[0]).decode("utf-8", errors="replace"), source=f"s3://{names[0]}")


def portal_run_alignments(dataset: str, run: str, *, storage_options: dict | None = None, bucket: str = PORTAL_BUCKET) -> list[PortalAlignment]:
    """Every alignment of a run, found by listing it."""
    return run_alignments(portal_run(dataset, run, storage_options=storage_options, bucket=bucket), storage_options=storage_options)
