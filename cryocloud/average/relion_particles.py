"""RELION-5 / WarpTools particle sets: particle STAR, tomograms STAR with projection matrices, 2D tilt stacks.

Read with the `starfile` package. Units out: Angstrom, degrees, e/A^2; rotations as matrices
(reference -> tomogram frame, in the convention of the 2D stacks below).

- Tomograms STAR: a `global` table (one row per tilt series: name, frame count, bin-1 size in
  pixels, handedness, tilt-series pixel size, optics, dose per tilt) and one table per tilt series
  (in the same file, or, RELION 5, in the file its `rlnTomoTiltSeriesStarFile` names, relative to the
  tomograms STAR's folder) with, per tilt, the projection: matrix rows `rlnTomoProjX/Y/Z/W` (4 x 4:
  tomogram coordinates -> image coordinates, z along the beam) or RELION 5's rlnTomoXTilt/YTilt/ZRot and
  rlnTomoX/YShiftAngst (`cryocloud.store.relion5.relion_projections`); defocus U/V/angle, CTF scale
  factor, pre-exposure and, when present, the tilt images (`rlnMicrographName`, "k@stack" or a file).
- Particles without 2D stacks (no `rlnImageName`: picks, as `cryocloud extract-peaks --format relion5`
  writes them) are reconstructed from the tilt images themselves (`tilt_series_of`,
  `cryocloud.average.subtilt.extract_subtilts`); their rotations are RELION's matrices as they are.
- Particles STAR: `optics` (image pixel size and box, binning, whether the CTF is premultiplied)
  and `particles` (tilt-series name, coordinates, RELION Euler angles, origins in A, the 2D stack
  file, `rlnTomoVisibleFrames`).
- Coordinates: `rlnCenteredCoordinateX/Y/ZAngst` (RELION 5: A from the tomogram centre) when
  present, else `rlnCoordinateX/Y/Z` in pixels of `coordinate_pixel_size_a` (WarpTools exports
  them in the export pixel size, `rlnImagePixelSize`, the default). The particle sits at the
  coordinate minus `rlnOriginX/Y/ZAngst`. Positions returned are in A from the tomogram corner
  (voxel (0, 0, 0) at 0 A), with the tomogram's extent (bin-1 size x tilt-series pixel size).
- Depth of field (RELION's Tomogram::getDepthOffset): the defocus of tilt f at a particle is the
  tilt's defocus + hand * z_f, z_f the particle's image-space z (A) under the projection matrix,
  from the tomogram centre.

Projection convention of the 2D stacks (`cryocloud.average.subtilt` model k' = M q):
- RELION's reconstruct_particle backprojects tilt f of particle p with M = P_f A_p, P_f the 3x3
  rows rlnTomoProjX/Y/Z as written (tomogram -> image, not transposed) and A_p RELION's own Euler
  matrix (Euler_angles2matrix of rlnAngleRot/Tilt/Psi, pre-multiplied by the rlnTomoSubtomogram
  angles' matrix when present; ParticleSet::getMatrix3x3: particle -> tomogram frame), which is
  `cryocloud.geometry.relion_euler_to_matrix`.
- Taken literally on the WarpTools EMPIAR-10499 stacks, that model gives the mirror image (z -> -z)
  of the RELION map stored with them, and of the 7P6Z ribosome: the stack images are point
  reflected (x', y') -> (-x', -y') about the box centre relative to P_f. `stack_images` undoes
  the reflection and the particles' rotations are A_p R_z(180 deg), which puts our map in RELION's
  frame with the right hand. Measured (40 particles, FSC with RELION's map averaged over 128-38 A):
  this convention 0.72; the literal P A 0.16 (0.72 against the mirrored map); A transposed, P
  transposed, single-axis flips or transposed images 0.15-0.41; random orientations 0.17-0.24.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryocloud.errors import ModelError, StoreError
from cryocloud.geometry import relion_euler_to_matrix
from cryocloud.model import Microscope, Particles, TiltSeries
from cryocloud.store.relion5 import GEOMETRY, read_star, relion_projections


@dataclass(frozen=True)
class RelionTiltSeries:
    """One tilt series' geometry: `projections` (T, 4, 4), per-tilt `defocus_u`, `defocus_v` (A),
    `defocus_angle` (deg), `ctf_scale`, `pre_exposure` (e/A^2); `dose_per_tilt` (e/A^2),
    `extent_a` (x, y, z) of the tomogram (A), `hand` (+1 / -1) and the `microscope`; RELION 5's per-tilt
    `angles` table (rlnTomoXTilt ... rlnTomoYShiftAngst, None for projection-matrix files), the tilt images'
    `micrograph_names` (None when not listed), `pixel_size_a` of the tilt series and the folder `base`
    the names are relative to."""

    name: str
    projections: np.ndarray
    defocus_u: np.ndarray
    defocus_v: np.ndarray
    defocus_angle: np.ndarray
    ctf_scale: np.ndarray
    pre_exposure: np.ndarray
    dose_per_tilt: float
    extent_a: np.ndarray
    hand: float
    microscope: Microscope
    angles: pd.DataFrame | None = None
    micrograph_names: np.ndarray | None = None
    pixel_size_a: float = 0.0
    base: str = "."

    @property
    def n_tilts(self) -> int:
        return self.projections.shape[0]

    def tilt_angles(self) -> np.ndarray:
        """Tilt angle (deg) of each frame: the rotation of the beam direction about the image y axis."""
        rows = self.projections[:, 2, :3]  # image z axis in tomogram coordinates
        return np.rad2deg(np.arctan2(-rows[:, 0], rows[:, 2]))


@dataclass(frozen=True)
class RelionParticles:
    """Particles with their 2D tilt stacks: `particles` (positions A, rotations), `stack_paths` (N,) (None: no stacks),
    `visible` (N, T) bool (T the most tilts of any tilt series), `tilt_series` names per particle, optics (`pixel_size_a`, `box`,
    `ctf_premultiplied`) and the `tomograms` geometry by name."""

    particles: Particles
    stack_paths: np.ndarray | None
    visible: np.ndarray
    pixel_size_a: float
    box: int
    ctf_premultiplied: bool
    tomograms: dict[str, RelionTiltSeries]


def _column(df: pd.DataFrame, name: str, source: str, block: str) -> np.ndarray:
    if name not in df.columns:
        raise StoreError(source, f"table {block!r} has no column {name}", field=name)
    return df[name].to_numpy()


def _vector(text, source: str, field: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in str(text).strip().strip("[]").split(",")])
    except ValueError:
        raise StoreError(source, f"expected a bracketed list of numbers, got {text!r}", field=field) from None
    if values.size != 4:
        raise StoreError(source, f"expected 4 numbers, got {values.size}", field=field)
    return values


def _tilt_table(blocks: dict, row: pd.Series, name: str, src: str, base: Path) -> tuple[pd.DataFrame, str]:
    """The per-tilt table of tilt series `name` and the file it came from: data_<name> of the tomograms STAR, or of
    the file its rlnTomoTiltSeriesStarFile names (RELION 5)."""
    if name in blocks:
        return blocks[name], src
    if "rlnTomoTiltSeriesStarFile" not in row:
        raise StoreError(src, f"has no table data_{name} with the tilt geometry and no rlnTomoTiltSeriesStarFile", field=name)
    path = base / str(row["rlnTomoTiltSeriesStarFile"])
    own = read_star(path)
    table = own.get(name, next((b for b in own.values() if isinstance(b, pd.DataFrame)), None))
    if table is None:
        raise StoreError(str(path), f"holds no per-tilt table data_{name}", field=name)
    return table, str(path)


def _projections(t: pd.DataFrame, src: str, name: str, px: float, size: np.ndarray) -> np.ndarray:
    if "rlnTomoProjX" in t.columns:
        return np.stack(
            [np.stack([_vector(v, src, f"rlnTomoProj{a}") for v in _column(t, f"rlnTomoProj{a}", src, name)]) for a in "XYZW"],
            axis=1,
        )
    for column in GEOMETRY[1:]:
        _column(t, column, src, name)
    # the image centre only moves the translation column, which the 2D-stack path does not use
    return relion_projections(t, px, size, (0, 0))


def read_relion_tomograms(path: str | os.PathLike) -> dict[str, RelionTiltSeries]:
    """Geometry of every tilt series of a RELION-4/5 tomograms STAR file, by `rlnTomoName`."""
    src = str(path)
    base = Path(path).parent
    blocks = read_star(path)
    if "global" not in blocks:
        raise StoreError(src, "has no data_global table", field="global")
    glob = blocks["global"]
    out = {}
    for _, row in glob.iterrows():
        name = str(row["rlnTomoName"])
        t, t_src = _tilt_table(blocks, row, name, src, base)
        px = float(row["rlnTomoTiltSeriesPixelSize"])
        size = np.array([float(row[f"rlnTomoSize{a}"]) for a in "XYZ"])
        proj = _projections(t, t_src, name, px, size)
        mic = Microscope(voltage_kv=float(row["rlnVoltage"]), cs_mm=float(row["rlnSphericalAberration"]), amplitude_contrast=float(row["rlnAmplitudeContrast"]))
        n = proj.shape[0]
        out[name] = RelionTiltSeries(
            name=name,
            projections=proj,
            defocus_u=_column(t, "rlnDefocusU", t_src, name).astype(np.float64),
            defocus_v=_column(t, "rlnDefocusV", t_src, name).astype(np.float64),
            defocus_angle=_column(t, "rlnDefocusAngle", t_src, name).astype(np.float64),
            ctf_scale=t["rlnCtfScalefactor"].to_numpy(np.float64) if "rlnCtfScalefactor" in t else np.ones(n),
            pre_exposure=_column(t, "rlnMicrographPreExposure", t_src, name).astype(np.float64),
            dose_per_tilt=float(row.get("rlnTomoImportFractionalDose", 0.0)),
            extent_a=size * px,
            hand=float(row.get("rlnTomoHand", 1.0)),
            microscope=mic,
            angles=None if "rlnTomoProjX" in t.columns else t[[c for c in GEOMETRY if c in t.columns]].reset_index(drop=True),
            micrograph_names=t["rlnMicrographName"].astype(str).to_numpy() if "rlnMicrographName" in t else None,
            pixel_size_a=px,
            base=str(base),
        )
    return out


def tilt_series_of(ts: RelionTiltSeries, images: np.ndarray) -> TiltSeries:
    """The tilt series (images (T, y, x) in stack order) with the RELION 5 geometry of `ts` in cryocloud's terms
    (store.relion5): tilt angle = rlnTomoYTilt, tilt axis = rlnTomoZRot, shifts = rlnTomoX/YShiftAngst, defocus
    at the tilt's centre; acquisition order from the pre-exposures. ModelError for geometry it cannot hold: a
    rlnTomoXTilt other than 0, a rlnTomoZRot that changes from tilt to tilt, a projection-matrix (RELION 4) file."""
    if ts.angles is None:
        raise ModelError("rlnTomoYTilt", "the tilt series gives projection matrices only; reading its tilt images needs RELION 5's angles", source=ts.name)
    a = ts.angles
    if "rlnTomoXTilt" in a and np.any(np.abs(a["rlnTomoXTilt"].to_numpy(np.float64)) > 1e-6):
        raise ModelError("rlnTomoXTilt", "is not 0; tilts about the image x axis are not supported", source=ts.name)
    axes = a["rlnTomoZRot"].to_numpy(np.float64)
    if np.ptp(axes) > 1e-3:
        raise ModelError("rlnTomoZRot", f"changes from tilt to tilt ({axes.min():.3f}..{axes.max():.3f} deg); expected one tilt axis", source=ts.name)
    order = np.argsort(np.argsort(ts.pre_exposure, kind="stable"), kind="stable")
    return TiltSeries.from_array(
        np.asarray(images, dtype=np.float32), tilt_angles=a["rlnTomoYTilt"].to_numpy(np.float64), pixel_size=ts.pixel_size_a,
        acquisition_order=order, exposure=ts.dose_per_tilt, pre_exposure=ts.pre_exposure, microscope=ts.microscope,
        tilt_axis_angle=float(axes[0]), name=ts.name,
        shift_x=a["rlnTomoXShiftAngst"].to_numpy(np.float64), shift_y=a["rlnTomoYShiftAngst"].to_numpy(np.float64),
        defocus_u=ts.defocus_u, defocus_v=ts.defocus_v, astigmatism_angle=ts.defocus_angle,
    )


def _visible(text, n: int, source: str) -> np.ndarray:
    flags = [v.strip() for v in str(text).strip().strip("[]").split(",")]
    if len(flags) != n or any(f not in ("0", "1") for f in flags):
        raise StoreError(source, f"expected {n} flags 0/1, got {text!r}", field="rlnTomoVisibleFrames")
    return np.array([f == "1" for f in flags])


STACK_FLIP = np.diag([-1.0, -1.0, 1.0])  # R_z(180 deg): the point reflection of the 2D stacks, seen from the reference


def _relion_matrix(parts: pd.DataFrame, prefix: str, source: str) -> np.ndarray:
    """RELION's Euler matrices A (N, 3, 3) (reference -> tomogram frame) of the `prefix`Rot/Tilt/Psi columns."""
    angles = (_column(parts, f"{prefix}{a}", source, "particles").astype(np.float64) for a in ("Rot", "Tilt", "Psi"))
    return relion_euler_to_matrix(*angles)


def stack_images(stacks: np.ndarray) -> np.ndarray:
    """2D tilt stacks (..., b, b) of a RELION-5 / WarpTools particle set in the frame of their
    projection matrices: point reflected about the box centre b // 2 (see the module docstring)."""
    return np.roll(np.asarray(stacks)[..., ::-1, ::-1], (1, 1), axis=(-2, -1))


def read_relion_particles(
    particles_star: str | os.PathLike,
    tomograms_star: str | os.PathLike | None = None,
    *,
    coordinate_pixel_size_a: float | None = None,
) -> RelionParticles:
    """A RELION-5 particle set with its tilt geometry; an optimisation-set STAR may be given as `particles_star`
    alone. With 2D stacks (rlnImageName) their paths are resolved relative to the particle STAR's folder;
    without them (picks) `stack_paths` is None, `box` 0 and `pixel_size_a` the first tilt series'."""
    src = str(particles_star)
    blocks = read_star(particles_star)
    first = next(iter(blocks.values()), None)
    if "particles" not in blocks and isinstance(first, dict) and "rlnTomoParticlesFile" in first:
        base = Path(particles_star).parent
        opt = first
        return read_relion_particles(base / opt["rlnTomoParticlesFile"], base / opt["rlnTomoTomogramsFile"], coordinate_pixel_size_a=coordinate_pixel_size_a)
    if tomograms_star is None:
        raise ModelError("tomograms_star", "is needed with a particle STAR file (or pass an optimisation set)", source=src)
    if "particles" not in blocks:
        raise StoreError(src, "has no data_particles table", field="particles")
    parts = blocks["particles"]
    has_stacks = "rlnImageName" in parts.columns
    tomograms = read_relion_tomograms(tomograms_star)
    if has_stacks:
        if "optics" not in blocks:
            raise StoreError(src, "has no data_optics table", field="optics")
        optics = blocks["optics"]
        px = float(_column(optics, "rlnImagePixelSize", src, "optics")[0])
        box = int(_column(optics, "rlnImageSize", src, "optics")[0])
        premultiplied = bool(int(optics["rlnCtfDataAreCtfPremultiplied"].iloc[0])) if "rlnCtfDataAreCtfPremultiplied" in optics else False
    else:
        px, box, premultiplied = next(iter(tomograms.values())).pixel_size_a, 0, False
    names = _column(parts, "rlnTomoName", src, "particles").astype(str)
    unknown = sorted(set(names) - set(tomograms))
    if unknown:
        raise StoreError(src, f"particles refer to tilt series {unknown} missing from {tomograms_star}", field="rlnTomoName")
    extent = np.stack([tomograms[n].extent_a for n in names]) if len(names) else np.zeros((0, 3))
    if {"rlnCenteredCoordinateXAngst"} <= set(parts.columns):
        pos = np.stack([parts[f"rlnCenteredCoordinate{a}Angst"].to_numpy(np.float64) for a in "XYZ"], axis=1) + extent / 2
    else:
        scale = px if coordinate_pixel_size_a is None else float(coordinate_pixel_size_a)
        pos = np.stack([_column(parts, f"rlnCoordinate{a}", src, "particles").astype(np.float64) for a in "XYZ"], axis=1) * scale
    origins = [f"rlnOrigin{a}Angst" for a in "XYZ"]
    if set(origins) <= set(parts.columns):
        pos = pos - parts[origins].to_numpy(np.float64)
    rot = _relion_matrix(parts, "rlnAngle", src)
    if "rlnTomoSubtomogramRot" in parts.columns:
        rot = _relion_matrix(parts, "rlnTomoSubtomogram", src) @ rot
    stacks = None
    if has_stacks:
        rot = rot @ STACK_FLIP
        base = Path(particles_star).parent
        stacks = np.array([str(base / str(v).split("@")[-1]) for v in _column(parts, "rlnImageName", src, "particles")])
    t_max = max(ts.n_tilts for ts in tomograms.values())
    visible = np.zeros((len(names), t_max), dtype=bool)  # tilt series with fewer tilts: the rest not visible
    flags = _column(parts, "rlnTomoVisibleFrames", src, "particles") if "rlnTomoVisibleFrames" in parts.columns or has_stacks else None
    for i, name in enumerate(names):
        n_tilts = tomograms[name].n_tilts
        visible[i, :n_tilts] = True if flags is None else _visible(flags[i], n_tilts, src)
    particles = Particles.create(pos, rot, tomogram=names)
    return RelionParticles(particles, stacks, visible, px, box, premultiplied, tomograms)
