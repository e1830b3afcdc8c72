"""`simulate(cfg)`: the lazy digital twin: specimen -> projections -> raw tilt series and movies.

Nothing is computed here beyond the small per-tilt tables and the particle placement: the
volume is rendered per Y slab, projected per Y slab (`cryocloud.project.project_volume_dask`),
and imaged per tilt (`acquisition`), all as Dask graphs. Random draws are seeded from
`cfg.seed` by stream (placement, ice per Y plane, defocus, shifts, drift, shot noise per tilt),
so the output does not depend on the chunking or the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from cryocloud.model import Microscope, Particles, TiltSeries, Tomogram
from cryocloud.project import project_volume_dask
from cryocloud.simulate.acquisition import (
    Optics,
    ctf_image,
    drift_trajectories,
    expose_frames,
    expose_tilt,
    interaction_constant,
    to_raw_frame,
)
from cryocloud.simulate.config import SimulationConfig
from cryocloud.simulate.phantom import ICE_POTENTIAL_V, Specimen, build_specimen, ice_slab, specimen_arrays
from cryocloud.simulate.schemes import TiltScheme, tilt_scheme

STREAM_DEFOCUS, STREAM_SHIFTS, STREAM_DRIFT = 5, 6, 7


@dataclass(frozen=True)
class GroundTruth:
    """What the simulation knows and processing must recover. Per-tilt arrays in the tilt series' order.

    shifts_xy_a (T, 2): raw-image shift of each tilt (A, `geometry.aligned_to_raw`);
    defocus_u_a / defocus_v_a (T,): defocus at the tilt axis on the specimen mid-plane (A);
    drift_xy_a (T, F, 2) or None: position of each frame relative to frame 0 (A);
    counts_per_pixel (T,): mean electrons per pixel of each tilt image;
    labels: Tomogram (z, y, x) uint8, 0 ice, 1 particle, 2 membrane, 3 gold.
    """

    tilt_angles: np.ndarray
    shifts_xy_a: np.ndarray
    defocus_u_a: np.ndarray
    defocus_v_a: np.ndarray
    astigmatism_angle_deg: float
    tilt_axis_angle_deg: float
    drift_xy_a: np.ndarray | None
    counts_per_pixel: np.ndarray
    labels: Tomogram
    specimen: Specimen

    def to_json(self) -> dict[str, Any]:
        """The per-tilt truth and the specimen's objects as JSON-ready lists (A, degrees, V)."""
        s = self.specimen
        return {
            "tilt_angles": self.tilt_angles.tolist(),
            "tilt_axis_angle_deg": self.tilt_axis_angle_deg,
            "shifts_xy_a": self.shifts_xy_a.tolist(),
            "defocus_u_a": self.defocus_u_a.tolist(),
            "defocus_v_a": self.defocus_v_a.tolist(),
            "astigmatism_angle_deg": self.astigmatism_angle_deg,
            "drift_xy_a": None if self.drift_xy_a is None else self.drift_xy_a.tolist(),
            "counts_per_pixel": self.counts_per_pixel.tolist(),
            "ice_slab_z_a": list(s.slab_a),
            "ice_potential_v": ICE_POTENTIAL_V,
            "vesicles": [{"centre_xyz_a": c.tolist(), "radius_a": float(r)} for c, r in zip(s.vesicle_centres, s.vesicle_radii)],
            "planes": [{"normal_xyz": n.tolist(), "offset_a": float(o)} for n, o in zip(s.plane_normals, s.plane_offsets)],
            "fiducials": {"centres_xyz_a": s.fiducial_centres.tolist(), "radius_a": s.fiducial_radius_a},
            "structures": [p or "bundled:7p6z" for p in s.structure_paths],
        }


@dataclass(frozen=True)
class SimulationResult:
    """Lazy outputs of `simulate`: raw tilt series (tilt, y, x), movies (tilt, frame, y, x) or None,
    the clean ground-truth volume (z, y, x, volts), the particles and the rest of the truth."""

    config: SimulationConfig
    scheme: TiltScheme
    tilt_series: TiltSeries
    frames: TiltSeries | None
    volume: Tomogram
    particles: Particles
    truth: GroundTruth


def _optics(cfg: SimulationConfig) -> Optics:
    return Optics(
        pixel_size_a=cfg.pixel_size_a, voltage_kv=cfg.voltage_kv, cs_mm=cfg.cs_mm, amplitude_contrast=cfg.amplitude_contrast,
        tilt_axis_angle_deg=cfg.tilt_axis_angle_deg, defocus_step_a=cfg.defocus_step_a, ctf=cfg.ctf,
        dose_filter=cfg.dose_filter, noise=cfg.noise, seed=cfg.seed,
    )


def _contrast_block(phase: np.ndarray, angles, du, dv, astig_angle, shifts, opt: Optics, block_id=None) -> np.ndarray:
    i = block_id[0]
    raw = to_raw_frame(phase[0].astype(np.float64), opt.tilt_axis_angle_deg, shifts[i], opt.pixel_size_a)
    return ctf_image(raw, angles[i], du[i], dv[i], astig_angle, shifts[i], opt)[None].astype(np.float32)


def _tilt_block(contrast: np.ndarray, i0, pre, exposure, opt: Optics, block_id=None) -> np.ndarray:
    i = block_id[0]
    return expose_tilt(contrast[0].astype(np.float64), i, i0[i], pre[i], exposure[i], opt)[None]


def _frames_block(contrast: np.ndarray, i0, pre, exposure, drift, opt: Optics, block_id=None) -> np.ndarray:
    i = block_id[0]
    return expose_frames(contrast[0].astype(np.float64), i, i0[i], pre[i], exposure[i], drift[i], opt)[None]


def counts_per_pixel(cfg: SimulationConfig, angles_deg: np.ndarray) -> np.ndarray:
    """Mean zero-loss electrons per pixel per tilt: dose x pixel area x exp(-t / (mfp cos tilt))."""
    i0 = np.full(angles_deg.shape, cfg.dose_per_tilt * cfg.pixel_size_a**2)
    if cfg.inelastic_mfp_a is not None:
        i0 = i0 * np.exp(-cfg.thickness_a / (cfg.inelastic_mfp_a * np.cos(np.deg2rad(angles_deg))))
    return i0


def simulate(cfg: SimulationConfig) -> SimulationResult:
    """Build the lazy simulation of `cfg` (see the package docstring for the physical model)."""
    scheme = tilt_scheme(
        cfg.scheme, cfg.tilt_min, cfg.tilt_max, cfg.tilt_step,
        start_angle=cfg.start_angle, group_size=cfg.group_size, dose_per_tilt=cfg.dose_per_tilt,
    )
    spec = build_specimen(cfg)
    excess, labels = specimen_arrays(spec, cfg.chunk_rows)
    nz, ny, nx = cfg.shape_zyx
    px = cfg.pixel_size_a
    angles = scheme.angles
    n = angles.size

    defocus = cfg.defocus_a + np.random.default_rng([cfg.seed, STREAM_DEFOCUS]).normal(0.0, 1.0, n) * cfg.defocus_spread_a
    du, dv = defocus + cfg.astigmatism_a / 2, defocus - cfg.astigmatism_a / 2
    shifts = np.random.default_rng([cfg.seed, STREAM_SHIFTS]).normal(0.0, 1.0, (n, 2)) * cfg.shift_sigma_a
    i0 = counts_per_pixel(cfg, angles)
    opt = _optics(cfg)

    phase = project_volume_dask(excess, angles) * np.float32(interaction_constant(cfg.voltage_kv) * px)
    phase = phase.rechunk((1, ny, nx))
    contrast = phase.map_blocks(_contrast_block, angles, du, dv, cfg.astigmatism_angle_deg, shifts, opt, dtype=np.float32)
    images = contrast.map_blocks(_tilt_block, i0, scheme.pre_exposure, scheme.exposure, opt, dtype=np.float32)

    microscope = Microscope(voltage_kv=cfg.voltage_kv, cs_mm=cfg.cs_mm, amplitude_contrast=cfg.amplitude_contrast)
    per_tilt = dict(
        tilt_angles=angles, pixel_size=px, acquisition_order=scheme.acquisition_order, exposure=scheme.exposure,
        pre_exposure=scheme.pre_exposure, microscope=microscope, tilt_axis_angle=cfg.tilt_axis_angle_deg,
    )
    tilt_series = TiltSeries.from_array(images, name="tilt_series", **per_tilt)

    drift = None
    frames = None
    if cfg.frames_per_tilt:
        f = cfg.frames_per_tilt
        drift = drift_trajectories(n, f, cfg.drift_a, np.random.default_rng([cfg.seed, STREAM_DRIFT]))
        movie = contrast.map_blocks(
            _frames_block, i0, scheme.pre_exposure, scheme.exposure, drift, opt,
            dtype=np.float32, new_axis=1, chunks=((1,) * n, (f,), (ny,), (nx,)),
        )
        frames = TiltSeries.from_array(movie, name="frames", **per_tilt)

    volume = Tomogram.from_array(excess + da.from_array(ice_slab(spec)), pixel_size=px, microscope=microscope, tilt_angles=angles, name="volume")
    truth = GroundTruth(
        tilt_angles=angles, shifts_xy_a=shifts, defocus_u_a=du, defocus_v_a=dv,
        astigmatism_angle_deg=cfg.astigmatism_angle_deg, tilt_axis_angle_deg=cfg.tilt_axis_angle_deg,
        drift_xy_a=drift, counts_per_pixel=i0,
        labels=Tomogram.from_array(labels, pixel_size=px, microscope=microscope, name="labels"), specimen=spec,
    )
    return SimulationResult(cfg, scheme, tilt_series, frames, volume, spec.particles, truth)
