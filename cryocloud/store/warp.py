"""Warp / WarpTools tilt-series XML (`<TiltSeries>`, UTF-16): tilt angles, tilt axis, shifts, defocus, dose.

What the fields mean, from Warp's own projection (warpem/warp WarpLib/TiltSeries.cs, GetPositionInAllTilts):

    image position (A) = Euler(0, Angles, -AxisAngle) (p - volume centre) + (AxisOffsetX, AxisOffsetY)
                         + image centre - GridMovement(image position)
    defocus (um)       = GridCTF + 1e-4 z'            (z' the rotated z in A; with AreAnglesInverted the
                                                       z' of Euler(0, -Angles, -AxisAngle) applied to (x, y, -z))

Euler(0, t, -a) is RELION's matrix (passive ZYZ) = R_z(a) R_y(-t) as active rotations. In cryocloud's
geometry (R(axis) [R_y(tilt) p]_xy + shift, defocus - z') that is:
- AreAnglesInverted False: tilt = Angles, tilt_axis_angle = AxisAngle, the tomogram Warp's mirrored in z;
- AreAnglesInverted True: tilt = -Angles, the tomogram Warp's own;
both with shift = AxisOffset - GridMovement at the image centre (A), and the defocus convention holding.
Defocus: GridCTF (um, one node per tilt) x 1e4 A, astigmatism GridCTFDefocusDelta (um, U = defocus + delta,
V = defocus - delta) at GridCTFDefocusAngle (deg). Dose: Warp's accumulated dose at the end of each tilt
(the first exposed tilt holds its own exposure), so exposure = the step from the tilt exposed before it and
pre_exposure = Dose - exposure.

Not representable in one tilt series and reported, not applied: GridMovement away from the image centre
(local shifts), GridVolumeWarp (volume deformation), GridAngleX/Y/Z (per-tilt angle corrections). A tilt
axis that changes from tilt to tilt is refused.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import numpy as np

from cryocloud.errors import StoreError
from cryocloud.model import Microscope, TiltSeries
from cryocloud.store.location import open_url, resolve


@dataclass(frozen=True)
class WarpTiltSeries:
    """A Warp tilt-series XML in cryocloud's terms (module docstring), per tilt in the XML's order: `tilt_angles`
    (deg), `shifts_a` (n, 2), `defocus_u`, `defocus_v` (A), `astigmatism_angle` (deg), `exposure`, `pre_exposure`
    (e/A^2), `use_tilt`, `movie_paths`; one `tilt_axis_angle` (deg), `angles_inverted` (the XML's flag), the
    `microscope`, `pixel_size_a` (from the CTF block) and `not_applied`: what the XML holds beyond that (name ->
    largest magnitude: local shifts (A), volume warp (A), angle corrections (deg))."""

    tilt_angles: np.ndarray
    tilt_axis_angle: float
    shifts_a: np.ndarray
    defocus_u: np.ndarray
    defocus_v: np.ndarray
    astigmatism_angle: np.ndarray
    exposure: np.ndarray
    pre_exposure: np.ndarray
    use_tilt: np.ndarray
    movie_paths: list[str]
    angles_inverted: bool
    microscope: Microscope
    pixel_size_a: float | None
    not_applied: dict[str, float] = field(default_factory=dict)

    @property
    def acquisition_order(self) -> np.ndarray:
        """0 = first exposed, from the pre-exposures."""
        return np.argsort(np.argsort(self.pre_exposure, kind="stable"), kind="stable")

    def to_tilt_series(self, images, *, pixel_size: float, name: str = "tilt_series") -> TiltSeries:
        """The tilt series of `images` (tilt, y, x), one per XML entry in its order, at `pixel_size` (A), with this
        geometry, CTF and dose; tilts Warp does not use (UseTilt False) are left out."""
        keep = np.flatnonzero(self.use_tilt)
        ts = TiltSeries.from_array(
            images, tilt_angles=self.tilt_angles, pixel_size=pixel_size, acquisition_order=self.acquisition_order,
            exposure=self.exposure, pre_exposure=self.pre_exposure, microscope=self.microscope, tilt_axis_angle=self.tilt_axis_angle,
            name=name, shift_x=self.shifts_a[:, 0], shift_y=self.shifts_a[:, 1], defocus_u=self.defocus_u, defocus_v=self.defocus_v,
            astigmatism_angle=self.astigmatism_angle,
        )
        return ts if keep.size == ts.n_tilts else ts.select_tilts(keep)


def _lines(root: ET.Element, name: str, source: str, n: int | None = None) -> list[str]:
    element = root.find(name)
    if element is None or element.text is None:
        raise StoreError(source, f"has no <{name}> list", field=name)
    values = [v.strip() for v in element.text.strip().splitlines() if v.strip()]
    if n is not None and len(values) != n:
        raise StoreError(source, f"<{name}> has {len(values)} values, expected one per tilt ({n})", field=name)
    return values


def _numbers(root: ET.Element, name: str, source: str, n: int | None = None) -> np.ndarray:
    values = _lines(root, name, source, n)
    try:
        return np.array([float(v) for v in values])
    except ValueError:
        raise StoreError(source, f"<{name}> holds a value that is not a number", field=name) from None


def _grid(root: ET.Element, name: str, source: str) -> np.ndarray | None:
    """A Warp grid (Depth, Height, Width) of its nodes' values, None when absent."""
    element = root.find(name)
    if element is None:
        return None
    try:
        shape = tuple(int(element.get(k, "1")) for k in ("Depth", "Height", "Width"))
        out = np.zeros(shape)
        for node in element.iter("Node"):
            value = node.get("Value")
            if value is None:
                raise StoreError(source, f"<{name}> has a Node without a Value ({node.attrib})", field=name)
            out[int(node.get("Z", 0)), int(node.get("Y", 0)), int(node.get("X", 0))] = float(value)
    except (TypeError, ValueError, IndexError) as exc:
        raise StoreError(source, f"<{name}> is not a readable grid ({exc})", field=name) from None
    return out


def _params(root: ET.Element, block: str, source: str) -> dict[str, str]:
    """The Name -> Value of a block's <Param> elements ({} when the block is absent)."""
    element = root.find(block)
    params: dict[str, str] = {}
    for param in [] if element is None else element.iter("Param"):
        name, value = param.get("Name"), param.get("Value")
        if name is None or value is None:
            raise StoreError(source, f"<{block}> has a Param without a Name or a Value ({param.attrib})", field=block)
        params[name] = value
    return params


def read_warp_xml(url: str | os.PathLike, *, storage_options: dict | None = None) -> WarpTiltSeries:
    """The tilt series geometry, CTF and dose of a Warp tilt-series XML (see the module docstring)."""
    loc = resolve(url, storage_options)
    with open_url(loc.url, "rb", storage_options=loc.storage_options) as fh:
        raw = fh.read()
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise StoreError(loc.url, f"is not readable XML ({exc})") from exc
    src = loc.url
    if root.tag != "TiltSeries":
        raise StoreError(src, f"has root <{root.tag}>, expected a Warp <TiltSeries>", field="TiltSeries")
    angles = _numbers(root, "Angles", src)
    n = angles.size
    axes = _numbers(root, "AxisAngle", src, n)
    if np.ptp(axes) > 1e-3:
        raise StoreError(src, f"AxisAngle changes from tilt to tilt ({axes.min():.3f}..{axes.max():.3f} deg); expected one tilt axis", field="AxisAngle")
    inverted = root.get("AreAnglesInverted", "False").strip().lower() == "true"
    offsets = np.stack([_numbers(root, "AxisOffsetX", src, n), _numbers(root, "AxisOffsetY", src, n)], axis=1)
    not_applied: dict[str, float] = {}
    movement = [_grid(root, f"GridMovement{a}", src) for a in "XY"]
    centre = np.zeros((n, 2))
    for k, grid in enumerate(movement):
        if grid is None:
            continue
        if grid.shape[0] != n:
            raise StoreError(src, f"<GridMovement{'XY'[k]}> has {grid.shape[0]} tilts, expected {n}", field=f"GridMovement{'XY'[k]}")
        _, h, w = grid.shape
        if h % 2 == 0 or w % 2 == 0:
            raise StoreError(src, f"<GridMovement{'XY'[k]}> is {w} x {h} nodes; expected an odd grid with a node at the image centre",
                             field=f"GridMovement{'XY'[k]}")
        centre[:, k] = grid[:, h // 2, w // 2]
        not_applied[f"GridMovement{'XY'[k]} away from the centre (A)"] = float(np.abs(grid - centre[:, k, None, None]).max())
    for name in ("GridVolumeWarpX", "GridVolumeWarpY", "GridVolumeWarpZ", "GridAngleX", "GridAngleY", "GridAngleZ"):
        grid = _grid(root, name, src)
        if grid is not None:
            not_applied[name] = float(np.abs(grid).max())
    ctf = _params(root, "CTF", src)
    defocus_grid = _grid(root, "GridCTF", src)
    if defocus_grid is None or defocus_grid.shape != (n, 1, 1):
        raise StoreError(src, "has no per-tilt <GridCTF> (one node per tilt, um)", field="GridCTF")
    delta_grid, angle_grid = _grid(root, "GridCTFDefocusDelta", src), _grid(root, "GridCTFDefocusAngle", src)
    delta = delta_grid.reshape(n) if delta_grid is not None else np.full(n, float(ctf.get("DefocusDelta", 0.0)))
    astig = angle_grid.reshape(n) if angle_grid is not None else np.full(n, float(ctf.get("DefocusAngle", 0.0)))
    dose = _numbers(root, "Dose", src, n)
    order = np.argsort(dose, kind="stable")
    exposure = np.empty(n)
    exposure[order] = np.diff(np.concatenate([[0.0], dose[order]]))
    use = np.array([v.lower() == "true" for v in _lines(root, "UseTilt", src, n)])
    movies = _lines(root, "MoviePath", src, n) if root.find("MoviePath") is not None else [""] * n
    try:
        microscope = Microscope(voltage_kv=float(ctf.get("Voltage", 300.0)), cs_mm=float(ctf.get("Cs", 2.7)),
                                amplitude_contrast=float(ctf.get("Amplitude", 0.07)))
    except ValueError as exc:
        raise StoreError(src, f"<CTF> optics are not valid ({exc})", field="CTF") from None
    return WarpTiltSeries(
        tilt_angles=-angles if inverted else angles, tilt_axis_angle=float(axes[0]), shifts_a=offsets - centre,
        defocus_u=(defocus_grid.reshape(n) + delta) * 1e4, defocus_v=(defocus_grid.reshape(n) - delta) * 1e4, astigmatism_angle=astig,
        exposure=exposure, pre_exposure=dose - exposure, use_tilt=use, movie_paths=movies, angles_inverted=inverted,
        microscope=microscope, pixel_size_a=float(ctf["PixelSize"]) if "PixelSize" in ctf else None, not_applied=not_applied,
    )
