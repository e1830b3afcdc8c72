"""RELION 5 tomography sets: tomograms STAR, one STAR per tilt series, particles STAR, optimisation set.

Layout written by `write_relion5` (paths inside the STAR files are relative to the output folder,
which is where RELION runs, its project directory):

    optimisation_set.star       rlnTomoTomogramsFile, rlnTomoParticlesFile
    tomograms.star              data_global: one row per tilt series
    tilt_series/<name>.star     data_<name>: one row per tilt, in stack order
    tilt_series/<name>.mrcs     the tilt images (rlnMicrographName = "<k>@tilt_series/<name>.mrcs", k from 1)
    particles.star              data_optics, data_particles

Conventions, taken from RELION 5's sources (3dem/relion):
- Projection of tilt f (TomogramSet::loadTomogram -> Tomogram::setProjectionMatrix; the same
  composition is spelled out in TomoBackprojectProgram::getProjectMatrices):
      P_f = S(image centre) S(shift / px) Rz(rlnTomoZRot) Ry(rlnTomoYTilt) Rx(rlnTomoXTilt) S(-specimen centre)
  on tilt-series pixels, shift = (rlnTomoXShiftAngst, rlnTomoYShiftAngst) / rlnTomoTiltSeriesPixelSize,
  image centre = (int(W / 2), int(H / 2)), specimen centre = int(rlnTomoSize{X,Y,Z} / 2), rotations
  right-handed (gravis t3Matrix::rotation, degrees). In cryocloud's terms (cryocloud.geometry) this
  is exactly `aligned_to_raw(project_points(.))`: rlnTomoXTilt = 0, rlnTomoYTilt = tilt angle,
  rlnTomoZRot = tilt_axis_angle, rlnTomoX/YShiftAngst = shift_x / shift_y. RELION's own IMOD and
  AreTomo imports agree (tomography_python_programs/align_tilt_series: YTilt = the .tlt / TILT
  angle, ZRot = the .xf in-plane rotation / ROT, shifts = the specimen shifts -A^-1 d / TX, TY).
- Defocus at depth (Tomogram::getCtf): defocus + rlnTomoHand * z', z' along P_f's third row; cryocloud's
  convention is defocus - z' (geometry.point_defocus), so rlnTomoHand = -1.
- rlnCtfScalefactor = cos(tilt), as RELION initialises it (TomoBackprojectProgram::initialiseCtfScaleFactors).
- Particles: rlnCenteredCoordinate{X,Y,Z}Angst = position - centre (A), the centre the tomogram's
  voxel n // 2 per axis (cryocloud.geometry.centre_index) = the projection centre. RELION decentres
  with rlnTomoSize / 2.0 and projects about int(rlnTomoSize / 2): the two agree when the bin-1
  sizes written here are even (odd sizes put RELION's own centres half a pixel apart). Orientations:
  rlnAngleRot/Tilt/Psi, RELION's ZYZ matrix = our rotation (geometry.relion_euler_to_matrix).
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryocloud.errors import ModelError, StoreError
from cryocloud.geometry import centre_index, matrix_to_relion_euler
from cryocloud.model import Particles, TiltSeries
from cryocloud.store.location import resolve
from cryocloud.store.textfiles import write_text

HAND = -1.0  # rlnTomoHand of cryocloud's defocus convention (see the module docstring)
CENTRED = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
GEOMETRY = ("rlnTomoXTilt", "rlnTomoYTilt", "rlnTomoZRot", "rlnTomoXShiftAngst", "rlnTomoYShiftAngst")


def _rotation(axis: int, angle_deg: np.ndarray) -> np.ndarray:
    """Right-handed rotations (T, 3, 3) about x (0), y (1) or z (2) by `angle_deg`."""
    a = np.deg2rad(np.asarray(angle_deg, dtype=np.float64))
    c, s = np.cos(a), np.sin(a)
    out = np.zeros(a.shape + (3, 3))
    i, j = (axis + 1) % 3, (axis + 2) % 3
    out[..., axis, axis] = 1.0
    out[..., i, i], out[..., j, j] = c, c
    out[..., i, j], out[..., j, i] = -s, s
    return out


def relion_projections(table: pd.DataFrame, pixel_size_a: float, tomogram_size_xyz, image_size_xy) -> np.ndarray:
    """RELION 5 projection matrices (T, 4, 4), tomogram voxel (bin-1 pixels, x y z 1) -> tilt-image pixel (x, y, z', 1),
    from a tilt-series table's rlnTomoXTilt (0 when absent), rlnTomoYTilt, rlnTomoZRot, rlnTomoX/YShiftAngst."""
    n = len(table)
    xtilt = table["rlnTomoXTilt"].to_numpy(np.float64) if "rlnTomoXTilt" in table else np.zeros(n)
    rot = _rotation(2, table["rlnTomoZRot"].to_numpy(np.float64)) @ _rotation(1, table["rlnTomoYTilt"].to_numpy(np.float64)) @ _rotation(0, xtilt)
    specimen = np.array([int(float(s) / 2) for s in tomogram_size_xyz], dtype=np.float64)
    image = np.array([int(float(s) / 2) for s in image_size_xy] + [0], dtype=np.float64)
    shift = np.stack([table["rlnTomoXShiftAngst"].to_numpy(np.float64), table["rlnTomoYShiftAngst"].to_numpy(np.float64), np.zeros(n)], axis=1)
    out = np.zeros((n, 4, 4))
    out[:, :3, :3] = rot
    out[:, :3, 3] = image + shift / pixel_size_a - rot @ specimen
    out[:, 3, 3] = 1.0
    return out


@dataclass(frozen=True)
class RelionTomogram:
    """One tilt series of a RELION 5 set: its `name` (rlnTomoName), the `tilt_series` (raw or aligned images with
    their alignment: tilt angles, `tilt_axis_angle`, per-tilt shift_x / shift_y, defocus, pre_exposure) and the
    tomogram the particles were picked in: `tomogram_shape_zyx` voxels of `tomogram_pixel_size_a`."""

    name: str
    tilt_series: TiltSeries
    tomogram_shape_zyx: tuple[int, int, int]
    tomogram_pixel_size_a: float

    @property
    def binning(self) -> float:
        return float(self.tomogram_pixel_size_a) / self.tilt_series.pixel_size

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        """rlnTomoSize{X,Y,Z}: the tomogram's extent in tilt-series pixels."""
        z, y, x = self.tomogram_shape_zyx
        return round(x * self.binning), round(y * self.binning), round(z * self.binning)

    def centre_a(self) -> np.ndarray:
        """The tomogram's projection centre (x, y, z) in A from voxel (0, 0, 0)."""
        return np.array([centre_index(n) for n in self.tomogram_shape_zyx[::-1]], dtype=np.float64) * self.tomogram_pixel_size_a


def _require_name(name: str, source: str) -> str:
    if not str(name).strip() or any(c.isspace() for c in str(name)):
        raise ModelError("rlnTomoName", f"expected a tilt-series name without spaces, got {name!r}", source=source)
    return str(name)


def tilt_series_table(ts: TiltSeries, micrograph_names: list[str]) -> pd.DataFrame:
    """The per-tilt RELION 5 table of `ts` (stack order): geometry, CTF (defocus U/V, angle, scale), dose."""
    n = ts.n_tilts
    zeros = np.zeros(n)
    per_tilt = {name: ts.per_tilt(name) for name in ("defocus_u", "defocus_v", "astigmatism_angle", "shift_x", "shift_y", "pre_exposure")}
    if per_tilt["defocus_u"] is None:
        raise ModelError("defocus_u", "the tilt series has no per-tilt defocus; RELION needs rlnDefocusU/V (run the CTF stage first)")
    defocus_v = per_tilt["defocus_v"] if per_tilt["defocus_v"] is not None else per_tilt["defocus_u"]
    angles = np.asarray(ts.tilt_angles, dtype=np.float64)
    return pd.DataFrame({
        "rlnMicrographName": micrograph_names,
        "rlnTomoNominalStageTiltAngle": angles,
        "rlnTomoNominalTiltAxisAngle": np.full(n, float(ts.tilt_axis_angle)),
        "rlnMicrographPreExposure": per_tilt["pre_exposure"] if per_tilt["pre_exposure"] is not None else zeros,
        "rlnTomoXTilt": zeros,
        "rlnTomoYTilt": angles,
        "rlnTomoZRot": np.full(n, float(ts.tilt_axis_angle)),
        "rlnTomoXShiftAngst": per_tilt["shift_x"] if per_tilt["shift_x"] is not None else zeros,
        "rlnTomoYShiftAngst": per_tilt["shift_y"] if per_tilt["shift_y"] is not None else zeros,
        "rlnDefocusU": per_tilt["defocus_u"],
        "rlnDefocusV": defocus_v,
        "rlnDefocusAngle": per_tilt["astigmatism_angle"] if per_tilt["astigmatism_angle"] is not None else zeros,
        "rlnCtfScalefactor": np.cos(np.deg2rad(angles)),
    })


def tomograms_table(tomograms: list[RelionTomogram], star_files: list[str]) -> pd.DataFrame:
    """data_global of tomograms.star: one row per tilt series."""
    rows = []
    for tomo, star in zip(tomograms, star_files):
        ts, mic = tomo.tilt_series, tomo.tilt_series.microscope
        sx, sy, sz = tomo.size_xyz
        exposure = ts.per_tilt("exposure")
        rows.append({
            "rlnTomoName": tomo.name,
            "rlnVoltage": mic.voltage_kv,
            "rlnSphericalAberration": mic.cs_mm,
            "rlnAmplitudeContrast": mic.amplitude_contrast,
            "rlnMicrographOriginalPixelSize": ts.pixel_size,
            "rlnTomoHand": HAND,
            "rlnOpticsGroupName": f"optics_{tomo.name}",
            "rlnTomoTiltSeriesPixelSize": ts.pixel_size,
            "rlnTomoTiltSeriesStarFile": star,
            "rlnTomoTomogramBinning": tomo.binning,
            "rlnTomoSizeX": sx,
            "rlnTomoSizeY": sy,
            "rlnTomoSizeZ": sz,
            "rlnTomoImportFractionalDose": float(np.mean(exposure)) if exposure is not None else 0.0,
        })
    return pd.DataFrame(rows)


def particles_tables(particles: Particles, centre_a: np.ndarray, *, tomo_names: np.ndarray, optics: pd.DataFrame | None = None) -> dict:
    """{"optics": ..., "particles": ...} (optics only when given): rlnTomoName, centred coordinates (A, from `centre_a`,
    one (x, y, z) or one per particle), ZYZ Euler angles, the score as rlnLCCmax."""
    centred = particles.positions - np.asarray(centre_a, dtype=np.float64)
    euler = matrix_to_relion_euler(particles.rotations).reshape(-1, 3)
    names = np.asarray(tomo_names, dtype=object).astype(str)
    table = pd.DataFrame({
        "rlnTomoName": names,
        "rlnTomoParticleName": [f"{name}/{i + 1}" for i, name in enumerate(names)],
        **{column: centred[:, k] for k, column in enumerate(CENTRED)},
        "rlnAngleRot": euler[:, 0],
        "rlnAngleTilt": euler[:, 1],
        "rlnAnglePsi": euler[:, 2],
        "rlnLCCmax": particles.scores,
    })
    if optics is None:
        return {"particles": table}
    group_of = dict(zip(optics["rlnOpticsGroupName"], optics["rlnOpticsGroup"]))
    table["rlnOpticsGroup"] = [group_of[f"optics_{name}"] for name in names]
    return {"optics": optics, "particles": table}


def _optics(tomograms: list[RelionTomogram]) -> pd.DataFrame:
    return pd.DataFrame([{
        "rlnOpticsGroup": i + 1,
        "rlnOpticsGroupName": f"optics_{t.name}",
        "rlnSphericalAberration": t.tilt_series.microscope.cs_mm,
        "rlnVoltage": t.tilt_series.microscope.voltage_kv,
        "rlnAmplitudeContrast": t.tilt_series.microscope.amplitude_contrast,
        "rlnTomoTiltSeriesPixelSize": t.tilt_series.pixel_size,
    } for i, t in enumerate(tomograms)])


def write_relion5(
    out_url: str, particles: Particles, tomograms: list[RelionTomogram], *, overwrite: bool = False, storage_options: dict | None = None,
) -> dict[str, str]:
    """Write a RELION 5 set (layout in the module docstring) of `particles` (positions in A in the frame of their
    tomogram, `particles.tomogram` naming it: one of `tomograms`' names); returns the URLs written by role."""
    from cryocloud.store.mrc import write_mrc

    out = resolve(out_url, storage_options)
    by_name = {_require_name(t.name, out.url): t for t in tomograms}
    if len(by_name) != len(tomograms):
        raise ModelError("rlnTomoName", f"names must be unique, got {[t.name for t in tomograms]}", source=out.url)
    labels = particles.tomogram.astype(str)
    unknown = sorted(set(labels) - set(by_name))
    if unknown:
        raise ModelError("tomogram", f"particles name tilt series {unknown}; expected one of {sorted(by_name)}", source=out.url)
    urls: dict[str, str] = {}
    stars = []
    for tomo in tomograms:
        stack = posixpath.join("tilt_series", f"{tomo.name}.mrcs")
        star = posixpath.join("tilt_series", f"{tomo.name}.star")
        names = [f"{k + 1:06d}@{stack}" for k in range(tomo.tilt_series.n_tilts)]
        write_mrc(tomo.tilt_series, out.child(stack).url, overwrite=overwrite, storage_options=storage_options)
        table = tilt_series_table(tomo.tilt_series, names)
        write_text(out.child(star).url, starfile.to_string({tomo.name: table}), overwrite=overwrite, storage_options=storage_options)
        urls[f"tilt_series:{tomo.name}"] = out.child(star).url
        stars.append(star)
    write_text(out.child("tomograms.star").url, starfile.to_string({"global": tomograms_table(tomograms, stars)}),
               overwrite=overwrite, storage_options=storage_options)
    centres = np.stack([by_name[n].centre_a() for n in labels]) if len(labels) else np.zeros((0, 3))
    blocks = particles_tables(particles, centres, tomo_names=labels, optics=_optics(tomograms))
    write_text(out.child("particles.star").url, starfile.to_string(blocks), overwrite=overwrite, storage_options=storage_options)
    write_text(out.child("optimisation_set.star").url,
               starfile.to_string({"": {"rlnTomoTomogramsFile": "tomograms.star", "rlnTomoParticlesFile": "particles.star"}}),
               overwrite=overwrite, storage_options=storage_options)
    urls.update(tomograms=out.child("tomograms.star").url, particles=out.child("particles.star").url,
                optimisation_set=out.child("optimisation_set.star").url)
    return urls


def read_star(path: str | os.PathLike) -> dict:
    """All blocks of a local STAR file (DataFrames for loops, dicts for simple blocks); StoreError if unreadable."""
    if not Path(path).is_file():
        raise StoreError(str(path), "does not exist")
    try:
        return starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises several parser errors
        raise StoreError(str(path), f"is not a readable STAR file ({exc})") from exc



def read_micrographs(names, base: str | os.PathLike, *, source: str = "rlnMicrographName") -> np.ndarray:
    """Tilt images (T, y, x) float32 named as RELION names them: "k@stack" (k from 1) or a single-image file,
    relative to `base`."""
    from cryocloud.store.mrc import read_mrc

    stacks: dict[str, np.ndarray] = {}
    images = []
    for name in names:
        index, _, path = str(name).rpartition("@")
        full = str(Path(base) / path)
        if full not in stacks:
            data = np.asarray(read_mrc(full).data.values, dtype=np.float32)
            stacks[full] = data if data.ndim == 3 else data[None]
        stack = stacks[full]
        k = int(index) - 1 if index else 0
        if not 0 <= k < stack.shape[0]:
            raise StoreError(full, f"has {stack.shape[0]} images; {source} asks for image {k + 1}", field=source)
        images.append(stack[k])
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise StoreError(str(base), f"tilt images of unequal sizes {sorted(shapes)}", field=source)
    return np.stack(images)
