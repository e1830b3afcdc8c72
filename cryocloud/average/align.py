"""Subtomogram alignment with missing-wedge-constrained cross-correlation, and the wedge-weighted average.

Conventions (cryocloud.geometry): volumes (z, y, x) with their centre at index b // 2; a pose is a
rotation R (rotating the reference into the particle, acting on (x, y, z)) and a shift s (x, y, z,
A) of the particle's centre from its box centre, both in the tomogram frame.

Score of a pose (Foerster et al. 2008, constrained CC): the reference's spectrum T is rotated in
Fourier space, T_R(k) = T(R^T k), and multiplied by the particle's own missing-wedge weight W(k)
(from the tilt angles of its tomogram, `cryocloud.average.wedge`) and a low-pass; the cross
correlation with the particle's spectrum V over all shifts is one inverse FFT,

    cc(s) = sum_k conj(W T_R(k)) V(k) e^{2 pi i k s} / (||W T_R|| ||V||)

(norms over the same band). The rotation is sampled in Fourier space with the template-matching
kernel (`cryocloud.pick.fourier_rotation`: a 2x-oversampled, apodisation-corrected spectrum, trilinear
samples on the band only). The shift is the peak within `max_shift` refined to sub-voxel precision
by a parabola through the peak and its neighbours along each axis.

Search schedule (coarse to fine): a global set (`cryocloud.pick.angles.uniform_rotations`, reduced
by the symmetry) or a local set around each particle's current orientation at `increment_deg`,
then local sets of half the step around the best until the step is below `fine_increment_deg`.

Average: each particle is brought into the reference frame in Fourier space, T(q) = V(R q)
e^{2 pi i (R q) . s}, and weighted by its wedge seen from the reference frame, W(R q):

    map = F^-1[ sum_p W_p(R_p q) V_p(R_p q) e^{..} / (sum_p W_p(R_p q)^2 + eps) ]

so Fourier regions that no particle sampled stay empty instead of being averaged with zeros.
With a symmetry, every particle enters once per symmetry operator S (pose R S).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dask
import numpy as np

from cryocloud.average.wedge import wedge_at, wedge_grid
from cryocloud.errors import ModelError
from cryocloud.pick.angles import local_rotations, symmetry_operators, uniform_rotations
from cryocloud.pick.fourier_rotation import TemplateSpectrum, _gridding_spectrum, band_runs, template_spectrum
from cryocloud.pick.score import BandGrid, band_grid, half_shape, irfftn, rfftn
from cryocloud.pick.template import spherical_mask
from cryocloud.pick.weighting import lowpass

WIENER_FRACTION = 0.05  # eps of the average: this fraction of the mean wedge-weight sum


@dataclass(frozen=True)
class Poses:
    """Per particle: `rotations` (N, 3, 3), `shifts_a` (N, 3) (x, y, z, A), `scores` (N,) (cc, NaN if unscored)."""

    rotations: np.ndarray
    shifts_a: np.ndarray
    scores: np.ndarray

    @classmethod
    def identity(cls, n: int) -> "Poses":
        return cls(np.broadcast_to(np.eye(3), (n, 3, 3)).copy(), np.zeros((n, 3)), np.full(n, np.nan))

    def subset(self, index) -> "Poses":
        return Poses(self.rotations[index], self.shifts_a[index], self.scores[index])

    def __len__(self) -> int:
        return self.rotations.shape[0]


@dataclass(frozen=True)
class Wedges:
    """Tilt angles (deg) of each distinct tilt series (`angles`) and which one each particle has (`index`, (N,))."""

    angles: tuple[np.ndarray, ...]
    index: np.ndarray

    @classmethod
    def single(cls, tilt_angles, n: int) -> "Wedges":
        return cls((np.asarray(tilt_angles, dtype=np.float64).reshape(-1),), np.zeros(n, dtype=np.int64))

    def subset(self, index) -> "Wedges":
        return Wedges(self.angles, self.index[index])


@dataclass(frozen=True)
class SearchSettings:
    """Angular and translational search. Angles in degrees, lengths in Angstrom.

    max_angle_deg: None for a global search, else the radius of the local search around each
    particle's current orientation; increment_deg: the first step; fine_increment_deg: stop when
    the step falls below it; max_shift_a: translational search radius; lowpass_a: band limit of
    the correlation (None: Nyquist); symmetry: point group of the particle (C1, Cn, Dn, T, O).
    """

    increment_deg: float = 10.0
    max_angle_deg: float | None = 20.0
    fine_increment_deg: float = 2.0
    max_shift_a: float = 20.0
    lowpass_a: float | None = None
    symmetry: str = "C1"
    batch_size: int = 16
    rotations: np.ndarray | None = field(default=None, repr=False)  # a custom first set (M, 3, 3)


def _check_volumes(subvolumes: np.ndarray) -> None:
    if subvolumes.ndim != 4 or len(set(subvolumes.shape[1:])) != 1:
        raise ModelError("subvolumes", f"expected (N, b, b, b) cubic subvolumes, got shape {subvolumes.shape}")


def normalised(volume: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation (float32)."""
    v = np.asarray(volume, dtype=np.float32)
    sd = float(v.std())
    return (v - v.mean()) / (sd if sd > 0 else 1.0)


def _band(box: int, angles: np.ndarray, pixel_size_a: float, lowpass_a: float | None) -> BandGrid:
    weight = wedge_grid(box, angles)
    k_max = 0.5
    if lowpass_a is not None and lowpass_a > 2 * pixel_size_a:
        weight = weight * lowpass((box,) * 3, pixel_size_a, lowpass_a)
        k_max = min(0.5, 1.1 * pixel_size_a / lowpass_a + 1e-6)
    return band_grid((box, box, box), weight, k_max=k_max)


def _subvoxel_peak(window: np.ndarray, m: int) -> tuple[np.ndarray, float]:
    """Peak (z, y, x offsets from the window centre, voxels) of the inner part and its value."""
    inner = window[1:-1, 1:-1, 1:-1]
    z, y, x = np.unravel_index(int(np.argmax(inner)), inner.shape)
    z, y, x = z + 1, y + 1, x + 1
    f0 = window[z, y, x]
    offset = np.zeros(3)
    for axis, (lo, hi) in enumerate(
        ((window[z - 1, y, x], window[z + 1, y, x]), (window[z, y - 1, x], window[z, y + 1, x]), (window[z, y, x - 1], window[z, y, x + 1]))
    ):
        curvature = lo - 2 * f0 + hi
        if curvature < 0:
            offset[axis] = np.clip(0.5 * (lo - hi) / curvature, -0.5, 0.5)
    return np.array([z, y, x]) - (m + 1) + offset, float(f0)


def _search_one(vhat: np.ndarray, grid: BandGrid, spectrum: TemplateSpectrum, rotations: np.ndarray, m: int) -> tuple[int, np.ndarray, float]:
    """Best rotation index, shift (x, y, z voxels) and cc of one particle spectrum over `rotations`."""
    box = grid.shape[0]
    c = box // 2
    vband = vhat.reshape(-1)[grid.flat]
    v_norm = np.sqrt(float(np.sum(grid.multiplicity * np.abs(vband) ** 2)) / box**3)
    product = np.zeros(half_shape(grid.shape), dtype=np.complex64)
    flat = product.reshape(-1)
    corr = np.empty(grid.shape, dtype=np.float32)
    lo, hi = c - m - 1, c + m + 2
    best = (-1, np.zeros(3), -np.inf)
    for i, rot in enumerate(rotations):
        norm2 = grid.half_spectrum_runs.fill(rot, spectrum.values, grid.weight, vband, flat)
        if norm2 <= 0:
            continue
        irfftn(product, grid.shape, out=corr)
        zyx, value = _subvoxel_peak(corr[lo:hi, lo:hi, lo:hi], m)
        score = value / (np.sqrt(norm2 / box**3) * v_norm + 1e-30)
        if score > best[2]:
            best = (i, zyx[::-1].copy(), score)
    return best


def _search_batch(vhats, grid, spectrum, rotation_sets, m):
    return [_search_one(v, grid, spectrum, r, m) for v, r in zip(vhats, rotation_sets)]


def particle_spectra(subvolumes: np.ndarray) -> np.ndarray:
    """rfft (N, b, b, b // 2 + 1) complex64 of each subvolume after `normalised`."""
    return np.stack([rfftn(normalised(v)) for v in subvolumes])


def _run_search(vhat, groups, spectra_by_group, rotation_sets, m, batch_size) -> list:
    """Evaluate rotation_sets[p] for every particle p, batches of particles as Dask tasks."""
    tasks, order = [], []
    for g, members in groups.items():
        grid = spectra_by_group[g]
        for start in range(0, members.size, batch_size):
            part = members[start : start + batch_size]
            tasks.append(dask.delayed(_search_batch)(vhat[part], grid[0], grid[1], [rotation_sets[p] for p in part], m))
            order.append(part)
    results = dask.compute(*tasks)
    out: list = [None] * vhat.shape[0]
    for part, res in zip(order, results):
        for p, r in zip(part, res):
            out[p] = r
    return out


def align(
    subvolumes: np.ndarray,
    reference: np.ndarray,
    pixel_size_a: float,
    wedges: Wedges,
    initial: Poses,
    settings: SearchSettings,
    *,
    mask: np.ndarray | None = None,
) -> Poses:
    """Find each particle's pose against `reference` (b, b, b) with the coarse-to-fine schedule.

    `subvolumes` (N, b, b, b) are centred on the particles' current positions; `initial` holds the
    current orientations (the centres of a local search) and shifts (used as the search centre is
    the box centre: returned shifts are absolute, from the box centre). `mask` (b, b, b) is the
    reference mask (default: a soft sphere of 0.45 b).
    """
    _check_volumes(subvolumes)
    n, box = subvolumes.shape[0], subvolumes.shape[1]
    if reference.shape != (box,) * 3:
        raise ModelError("reference", f"has shape {reference.shape}, expected ({box}, {box}, {box}) like the subvolumes")
    if len(initial) != n or wedges.index.shape != (n,):
        raise ModelError("poses", f"need one initial pose and one wedge index per particle ({n})")
    mask = spherical_mask(box, 0.45 * box - 2, 2.0) if mask is None else mask
    spectrum = template_spectrum(reference, mask, spherical=True)
    m = max(1, int(np.ceil(settings.max_shift_a / pixel_size_a)))
    if box < 2 * m + 4:
        raise ModelError("max_shift", f"{settings.max_shift_a} A does not fit a box of {box} voxels")
    vhat = particle_spectra(subvolumes)
    groups = {g: np.flatnonzero(wedges.index == g) for g in np.unique(wedges.index)}
    grids = {g: (_band(box, wedges.angles[g], pixel_size_a, settings.lowpass_a), spectrum) for g in groups}

    step = settings.increment_deg
    if settings.rotations is not None:
        first = [np.asarray(settings.rotations)] * n
    elif settings.max_angle_deg is None:
        first = [uniform_rotations(step, settings.symmetry)] * n
    else:
        first = list(local_rotations(initial.rotations, settings.max_angle_deg, step).reshape(n, -1, 3, 3))
    results = _run_search(vhat, groups, grids, first, m, settings.batch_size)
    rotations = np.stack([first[p][r[0]] for p, r in enumerate(results)])
    while step / 2 >= settings.fine_increment_deg - 1e-9:
        local = list(local_rotations(rotations, step, step / 2).reshape(n, -1, 3, 3))
        step /= 2
        results = _run_search(vhat, groups, grids, local, m, settings.batch_size)
        rotations = np.stack([local[p][r[0]] for p, r in enumerate(results)])
    shifts = np.stack([r[1] for r in results]) * pixel_size_a
    scores = np.array([r[2] for r in results])
    return Poses(rotations, shifts, scores)


def _full_grid(box: int) -> tuple[np.ndarray, np.ndarray]:
    kz = np.fft.fftfreq(box)[:, None, None]
    ky = np.fft.fftfreq(box)[None, :, None]
    kx = np.fft.rfftfreq(box)[None, None, :]
    kxyz = np.stack(np.broadcast_arrays(kx, ky, kz), axis=-1).reshape(-1, 3).astype(np.float32)
    return kxyz, np.arange(kxyz.shape[0], dtype=np.int64)


def _accumulate(subvolumes, rotations, shifts_px, angles_list, box):
    kxyz, flat = _full_grid(box)
    ones = np.ones(flat.size, dtype=np.float32)
    runs = band_runs(kxyz, flat, ones)
    num = np.zeros(flat.size, dtype=np.complex128)
    den = np.zeros(flat.size, dtype=np.float64)
    out = np.zeros(flat.size, dtype=np.complex64)
    k64 = kxyz.astype(np.float64)
    for v, rots, s, angles in zip(subvolumes, rotations, shifts_px, angles_list):
        spec = _gridding_spectrum(normalised(v).astype(np.float64))
        for r in rots:
            rk = k64 @ r.T  # R q for every q (rows)
            phase = np.exp(-2j * np.pi * (rk @ s)).astype(np.complex64)  # conj of e^{+2 pi i (R q).s}
            runs.fill(np.ascontiguousarray(r.T), spec, ones, phase, out)
            w = wedge_at(rk, angles, box)
            num += w * np.conj(out)
            den += w * w
    return num, den


def average_spectra(
    subvolumes: np.ndarray, poses: Poses, pixel_size_a: float, wedges: Wedges, *, symmetry: str = "C1", batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Wedge-weighted sums in the reference frame: numerator (complex) and weight on the rfft grid (b, b, b // 2 + 1)."""
    _check_volumes(subvolumes)
    box = subvolumes.shape[1]
    ops = symmetry_operators(symmetry)
    rots = np.einsum("nij,sjk->nsik", poses.rotations, ops)
    shifts_px = poses.shifts_a / pixel_size_a
    angles = [wedges.angles[i] for i in wedges.index]
    tasks = [
        dask.delayed(_accumulate)(subvolumes[i : i + batch_size], rots[i : i + batch_size], shifts_px[i : i + batch_size], angles[i : i + batch_size], box)
        for i in range(0, subvolumes.shape[0], batch_size)
    ]
    parts = dask.compute(*tasks)
    num = sum(p[0] for p in parts).reshape(half_shape((box,) * 3))
    den = sum(p[1] for p in parts).reshape(half_shape((box,) * 3))
    return num, den


def map_from_spectra(num: np.ndarray, den: np.ndarray, box: int, *, wiener_fraction: float = WIENER_FRACTION) -> np.ndarray:
    """Real-space map (b, b, b) float32, centre at b // 2, from `average_spectra` sums."""
    eps = wiener_fraction * float(den.mean()) if den.mean() > 0 else 1.0
    spectrum = np.where(den > 0, num / (den + eps), 0.0)
    volume = np.fft.irfftn(spectrum, s=(box,) * 3, axes=(0, 1, 2))
    return np.roll(volume, (box // 2,) * 3, axis=(0, 1, 2)).astype(np.float32)


def average(subvolumes: np.ndarray, poses: Poses, pixel_size_a: float, wedges: Wedges, *, symmetry: str = "C1") -> np.ndarray:
    """The wedge-weighted average (b, b, b) of the particles at their poses."""
    num, den = average_spectra(subvolumes, poses, pixel_size_a, wedges, symmetry=symmetry)
    return map_from_spectra(num, den, subvolumes.shape[1])
