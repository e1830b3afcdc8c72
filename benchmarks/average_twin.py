"""Subtomogram averaging accuracy on the digital twin: ``python -m benchmarks.average_twin [--quick]``.

Ribosomes (7P6Z) are simulated in several tilt series at a realistic dose (`cryocloud.simulate`:
41 tilts, +-60 deg dose-symmetric, 3 e/A^2 per tilt, 3 um defocus, Poisson noise, ice). Each
particle is cut out of the tilt images around its projections (`subtilt.extract_subtilts`, true
per-tilt defocus) and reconstructed on its own as a CTF-corrected subvolume in the tomogram frame.
Starting from the true poses perturbed like a coarse template-matching result (about 6 deg,
15 A), the gold-standard refinement (`average.refine`, halves split once at the start) aligns
the subvolumes; the two half maps are then reconstructed from the tilt images at the refined poses
(`subtilt.reconstruct`). Printed JSON (last stdout line): resolution (A) of the average against the
ground-truth map and of the half maps (FSC 0.143, the same soft spherical mask), pixel size, the
number of particles, median orientation and shift errors against the truth, wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

import numpy as np
from scipy.spatial.transform import Rotation

from cryocloud.average import Poses, SearchSettings, Wedges, fsc, refine
from cryocloud.average.subtilt import TiltImages, extract_subtilts, reconstruct
from cryocloud.geometry import rotation_angle_deg
from cryocloud.simulate import SimulationConfig, simulate
from cryocloud.atomic import potential_map
from cryocloud.store import read_atomic_model

FIELDS = ("images", "matrices", "offsets_px", "defocus_u", "defocus_v", "astigmatism_deg", "dose", "weight")


def truth_map(pixel_size_a: float, box: int) -> np.ndarray:
    """The ribosome's potential (b, b, b), centre at b // 2, as the simulator places it."""
    pot = potential_map(read_atomic_model(None), pixel_size_a)
    c, h = pot.shape[0] // 2, box // 2
    out = np.zeros((box,) * 3, dtype=np.float32)
    crop = pot[max(0, c - h) : c + h, max(0, c - h) : c + h, max(0, c - h) : c + h]
    o = (box - crop.shape[0]) // 2
    out[o : o + crop.shape[0], o : o + crop.shape[1], o : o + crop.shape[2]] = crop
    return out


def twin_particles(n_particles: int, per_series: int, shape_zyx, pixel_size_a: float, box: int, seed: int):
    """Sub-tilt images of `n_particles` simulated ribosomes, `per_series` per tilt series.

    Returns (TiltImages, true rotations (N, 3, 3), tilt angles (deg)).
    """
    parts, rotations = [], []
    for k, start in enumerate(range(0, n_particles, per_series)):
        n = min(per_series, n_particles - start)
        cfg = SimulationConfig(shape_zyx=shape_zyx, pixel_size_a=pixel_size_a, n_particles=n, seed=seed + k)
        sim = simulate(cfg)
        ts = sim.tilt_series.with_data(np.asarray(sim.tilt_series.data.values))
        ts.data.coords["defocus_u"] = ("tilt", sim.truth.defocus_u_a)
        ts.data.coords["defocus_v"] = ("tilt", sim.truth.defocus_v_a)
        patches, geometry = extract_subtilts(ts, sim.particles.positions, cfg.shape_zyx, box)
        parts.append(replace(geometry, images=np.asarray(patches.compute(), dtype=np.float32)))
        rotations.append(sim.particles.rotations)
        print(f"tilt series {k + 1}: {n} particles", file=sys.stderr, flush=True)
    ti = replace(parts[0], **{f: np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS})
    return ti, np.concatenate(rotations), np.asarray(sim.tilt_series.tilt_angles)


def particle_volumes(ti: TiltImages) -> np.ndarray:
    """Each particle reconstructed alone from its tilt images (N, b, b, b), tomogram frame (protein positive:
    the CTF-corrected potential)."""
    one = Poses.identity(1)
    return np.stack([reconstruct(ti.subset(slice(p, p + 1)), one) for p in range(len(ti))])


def measure(n_particles: int, *, per_series: int, shape_zyx=(64, 256, 256), pixel_size_a: float = 10.0, box: int = 32,
            iterations: int = 2, seed: int = 0) -> dict:
    """Simulate, refine with gold standard and score against the truth (see the module docstring)."""
    t0 = time.perf_counter()
    ti, rot_true, angles = twin_particles(n_particles, per_series, shape_zyx, pixel_size_a, box, seed)
    n = len(ti)
    vols = particle_volumes(ti)
    rng = np.random.default_rng(seed)
    perturb = Rotation.from_rotvec(rng.normal(0, 1, (n, 3)) / np.sqrt(3) * np.deg2rad(6.0)).as_matrix()
    start = Poses(perturb @ rot_true, rng.normal(0, 15.0 / np.sqrt(3), (n, 3)), np.full(n, np.nan))
    settings = SearchSettings(increment_deg=6.0, max_angle_deg=12.0, fine_increment_deg=1.5, max_shift_a=3 * pixel_size_a)
    result = refine(vols, pixel_size_a, Wedges.single(angles, n), start, settings, iterations=iterations, seed=seed)
    poses = result.poses
    # the half maps from the tilt images, CTF-corrected, at the refined poses (shifts: particle - box centre)
    halves = [reconstruct(ti.subset(result.half == h), poses.subset(result.half == h)) for h in (0, 1)]
    average = reconstruct(ti, poses)
    truth = truth_map(pixel_size_a, box)
    half_curve = fsc(halves[0], halves[1], pixel_size_a, result.mask)
    truth_curve = fsc(average, truth, pixel_size_a, result.mask)
    return {
        "name": "average-twin",
        "n": int(n),
        "pixel_A": pixel_size_a,
        "box": box,
        "fsc_truth_0143_A": round(truth_curve.resolution(0.143), 2),
        "half_map_0143_A": round(half_curve.resolution(0.143), 2),
        "half_map_subvolume_0143_A": round(result.resolution_a, 2),
        "median_angle_error_deg": round(float(np.median(rotation_angle_deg(poses.rotations, rot_true))), 2),
        "start_median_angle_error_deg": round(float(np.median(rotation_angle_deg(start.rotations, rot_true))), 2),
        "median_shift_error_A": round(float(np.median(np.linalg.norm(poses.shifts_a, axis=1))), 2),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.average_twin", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="60 particles instead of 500")
    parser.add_argument("--pixel", type=float, default=8.0, help="pixel size (A); the box is 320 A")
    args = parser.parse_args(argv)
    n = 60 if args.quick else 500
    box = int(round(320.0 / args.pixel / 2)) * 2
    side = int(round(2560.0 / args.pixel))
    print(json.dumps(measure(n, per_series=60, shape_zyx=(int(round(512.0 / args.pixel)), side, side), pixel_size_a=args.pixel, box=box)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
