"""Subtomogram alignment, side by side with acryo: ``python -m benchmarks average [--quick]``.

The same particles and the same angular grid for both. A synthetic tomogram (z, y, x) at 10 A holds
ribosomes (7P6Z potential, 32^3 box) on a grid at random orientations and sub-voxel shifts; the
whole tomogram is filtered by the missing wedge of a +-60 deg, 3 deg tilt series and Gaussian
noise is added. Both aligners start from the true poses perturbed by about 8 deg and search the
same local set of rotations (rotation vectors on a 4 deg lattice within 12 deg of the start: one
pass, no refinement) and shifts up to 2 voxels, with the same reference (the true map) and mask.

- ours: `average.extract` (lazy, batched) + `average.align` (Fourier-space rotation of the
  reference, wedge-constrained CC, one inverse FFT per rotation, sub-voxel peak);
- acryo: `SubtomogramLoader(...).align(template, mask, max_shifts, ZNCCAlignment.with_params(
  rotations=<the same relative rotations>, tilt=single_axis((-60, 60), "y")))`.

Both run in this process with Dask's synchronous scheduler, timed end to end from the tomogram
array to the poses (wall and process CPU time; the CPU ratio is robust to a loaded machine). Accuracy: median angle to the true orientation (deg) and median
shift error (A) of each (acryo centres an even box at (b - 1) / 2: its positions are converted). The last stdout line is the JSON result; ratio = acryo_s / ours_s.
"""

from __future__ import annotations

import sys
import time

import dask
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cryocloud.average import Poses, SearchSettings, Wedges, align, extract
from cryocloud.geometry import random_rotations, rotation_angle_deg
from cryocloud.model import Tomogram
from cryocloud.pick.angles import local_rotations
from cryocloud.pick.template import spherical_mask
from cryocloud.pick.weighting import TiltWeighting, tilt_weight

PX = 10.0
BOX = 32
ANGLES = np.arange(-60.0, 60.1, 3.0)
MAX_ANGLE, STEP, MAX_SHIFT_VOX = 12.0, 4.0, 2
_REV = np.eye(3)[::-1]  # (x, y, z) <-> (z, y, x)


def reference_map() -> np.ndarray:
    from benchmarks.average_twin import truth_map

    return truth_map(PX, BOX)


def synthetic_tomogram(reference: np.ndarray, n_side: int, noise: float, seed: int):
    """Tomogram (z, y, x) with n_side^2 particles; returns (volume, positions (N, 3) x, y, z A, rotations, shifts_a)."""
    rng = np.random.default_rng(seed)
    spacing = BOX + 4
    shape = (BOX + 16, n_side * spacing, n_side * spacing)
    vol = np.zeros(shape, dtype=np.float32)
    n = n_side * n_side
    rot = random_rotations(n, rng)
    shift_vox = rng.uniform(-1.0, 1.0, (n, 3))
    iy, ix = np.divmod(np.arange(n), n_side)
    centres = np.stack([ix * spacing + spacing // 2, iy * spacing + spacing // 2, np.full(n, shape[0] // 2)], axis=1)
    c = np.full(3, BOX // 2)
    for p in range(n):
        rz = _REV @ rot[p] @ _REV  # the rotation acting on (z, y, x) indices
        s = shift_vox[p][::-1]
        block = ndimage.affine_transform(reference, rz.T, offset=c - rz.T @ (c + s), order=3)
        x0, y0, z0 = centres[p] - BOX // 2
        vol[z0 : z0 + BOX, y0 : y0 + BOX, x0 : x0 + BOX] += block
    wedge = tilt_weight(shape, PX, TiltWeighting(ANGLES), ctf="none")
    vol = np.fft.irfftn(np.fft.rfftn(vol) * wedge, s=shape, axes=(0, 1, 2)).astype(np.float32)
    vol += rng.normal(0.0, noise * vol.std(), shape).astype(np.float32)
    return vol, centres * PX, rot, shift_vox * PX


def run(quick: bool = False, seed: int = 0) -> dict:
    reference = reference_map()
    n_side = 4 if quick else 10
    vol, positions, rot_true, shift_true = synthetic_tomogram(reference, n_side, 1.0, seed)
    n = len(positions)
    rng = np.random.default_rng(seed + 1)
    start = Rotation.from_rotvec(rng.normal(0, 1, (n, 3)) / np.sqrt(3) * np.deg2rad(8.0)).as_matrix() @ rot_true
    offsets = local_rotations(np.eye(3), MAX_ANGLE, STEP)  # the relative grid, shared by both
    mask = spherical_mask(BOX, 0.45 * BOX - 2, 2.0)
    print(f"{n} particles, {len(offsets)} rotations each", file=sys.stderr, flush=True)

    with dask.config.set(scheduler="synchronous"):
        t0, c0 = time.perf_counter(), time.process_time()
        tomo = Tomogram.from_array(vol, pixel_size=PX)
        sub = extract(tomo, positions, BOX)
        data = np.asarray(sub.data.compute())
        settings = SearchSettings(increment_deg=STEP, max_angle_deg=MAX_ANGLE, fine_increment_deg=STEP, max_shift_a=MAX_SHIFT_VOX * PX)
        ours = align(data, reference, PX, Wedges.single(ANGLES, n), Poses(start, np.zeros((n, 3)), np.full(n, np.nan)), settings, mask=mask)
        ours_s, ours_cpu = time.perf_counter() - t0, time.process_time() - c0
        ours_shift = ours.shifts_a + sub.offsets_a  # particle centre - requested position
        t0, c0 = time.perf_counter(), time.process_time()
        peer_rot, peer_shift = _acryo_align(vol, positions, start, reference, mask, offsets)
        peer_s, peer_cpu = time.perf_counter() - t0, time.process_time() - c0

    def shift_err(s):
        return float(np.median(np.linalg.norm(s - shift_true, axis=1)))

    return {
        "name": "average",
        "n_particles": int(n),
        "n_rotations": int(len(offsets)),
        "ours_s": round(ours_s, 3),
        "peer": "acryo.SubtomogramLoader.align (ZNCC)",
        "peer_s": round(peer_s, 3),
        "ratio": round(peer_s / ours_s, 2),
        "ours_cpu_s": round(ours_cpu, 3),
        "peer_cpu_s": round(peer_cpu, 3),
        "cpu_ratio": round(peer_cpu / ours_cpu, 2),
        "start_angle_error_deg": round(float(np.median(rotation_angle_deg(start, rot_true))), 2),
        "ours_angle_error_deg": round(float(np.median(rotation_angle_deg(ours.rotations, rot_true))), 2),
        "peer_angle_error_deg": round(float(np.median(rotation_angle_deg(peer_rot, rot_true))), 2),
        "ours_shift_error_a": round(shift_err(ours_shift), 2),
        "peer_shift_error_a": round(shift_err(peer_shift), 2),
    }


def _acryo_align(vol, positions, start, reference, mask, offsets):
    """acryo's alignment of the same particles; returns rotations (x, y, z convention) and shifts (x, y, z, A)."""
    from acryo import Molecules, SubtomogramLoader
    from acryo.alignment import ZNCCAlignment
    from acryo.tilt import single_axis

    # acryo works in (z, y, x) nm; a molecule's rotation maps the template frame to the tomogram frame
    pos_zyx_nm = positions[:, ::-1] / 10.0
    mole = Molecules(pos_zyx_nm, Rotation.from_matrix(_REV @ start @ _REV))
    loader = SubtomogramLoader(vol, mole, order=1, scale=PX / 10.0, output_shape=(BOX,) * 3)
    model = ZNCCAlignment.with_params(rotations=Rotation.from_matrix(_REV @ offsets @ _REV), tilt=single_axis((-60.0, 60.0), axis="y"))
    out = loader.align(reference, mask=mask, max_shifts=MAX_SHIFT_VOX * PX / 10.0, alignment_model=model)
    mol = out.molecules
    rot = _REV @ mol.rotator.as_matrix() @ _REV
    # acryo centres an even box at (b - 1) / 2, we at b // 2: our centre is half a voxel further along
    # each template axis, rotated into the tomogram frame
    shift = (mol.pos[:, ::-1] * 10.0) - positions + rot @ np.full(3, 0.5 * PX)
    return rot, shift
