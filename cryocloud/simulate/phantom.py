"""Specimen phantom: an ice slab with particles, membranes and gold beads, rendered lazily in Y slabs.

Frame: positions (x, y, z) in A with voxel (0, 0, 0) at 0 A (the tomogram frame of
`cryocloud.model`); arrays (z, y, x). The ice slab is centred on the volume's centre plane
(z index nz // 2) and spans `thickness_a`.

Potential model (volts):
- vitreous ice: mean inner potential of water at 0.0307 molecules/A^3 (4.47 V), plus white
  density fluctuations of s.d. sqrt(S0 * n) molecules per voxel (n the mean count, S0 the
  structure factor of water at q -> 0, 0.064), i.e. independent per voxel;
- particles: the Coulomb potential of the atomic model (`atomic.potential_map`) replacing the ice
  inside the molecular envelope (excess = V_particle - V_ice * envelope);
- membranes: a bilayer profile across the mid-surface: two head-group Gaussians (+1.55 V over
  ice, s.d. 3 A, at +-20 A) and a tail trough (-0.45 V, s.d. 7 A), from the electron densities
  0.45 / 0.30 vs 0.334 e/A^3 of head groups / tails / water; each Gaussian is widened by half a
  voxel (area preserved) so coarse voxels sample it without aliasing;
- gold beads: spheres at the mean inner potential of gold (29.9 V) with a one-voxel soft edge.
Everything is cut by the ice surfaces (fractional occupancy of the boundary voxels).

The volume is built by `specimen_arrays` as the *excess* potential over the ice (what the
projector needs: the flat ice adds a constant phase, handled as an infinite slab by the
acquisition) and a label volume; the ground-truth volume adds the ice slab back.
Each Y slab is one Dask task that renders only the objects touching it; the ice fluctuations
are seeded per Y plane, so the result does not depend on the chunking.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
from scipy import ndimage

from cryocloud.errors import ModelError
from cryocloud.geometry import random_rotations
from cryocloud.model import Particles
from cryocloud.atomic import envelope_mask, mean_potential_v, potential_map
from cryocloud.store import read_atomic_model
from cryocloud.simulate.config import SimulationConfig

WATER_PER_A3 = 0.0307  # vitreous ice, 0.92 g/cm^3
WATER_STRUCTURE = {"O": 1, "H": 2}
ICE_POTENTIAL_V = mean_potential_v(WATER_STRUCTURE, WATER_PER_A3)
GOLD_POTENTIAL_V = mean_potential_v({"Au": 1}, 0.0590)  # 19.3 g/cm^3
HEAD_OFFSET_A, HEAD_SIGMA_A, HEAD_EXCESS_V = 20.0, 3.0, ICE_POTENTIAL_V * (0.45 / 0.334 - 1.0)
TAIL_SIGMA_A, TAIL_EXCESS_V = 7.0, ICE_POTENTIAL_V * (0.30 / 0.334 - 1.0)
MEMBRANE_HALF_THICKNESS_A = 25.0

LABEL_PARTICLE, LABEL_MEMBRANE, LABEL_FIDUCIAL = 1, 2, 3
STREAM_PLACEMENT, STREAM_ICE = 1, 2
MAX_TRIES = 5000


@dataclass(frozen=True)
class Specimen:
    """Everything needed to render the volume; small (no voxel arrays). Positions in A (x, y, z)."""

    shape_zyx: tuple[int, int, int]
    pixel_size_a: float
    slab_a: tuple[float, float]  # z range of the ice (A)
    ice_noise_v: float  # s.d. of the per-voxel ice potential fluctuation (V)
    seed: int
    particles: Particles
    particle_class: np.ndarray  # (N,) index into structure_paths
    structure_paths: tuple[str | None, ...]
    b_factor_a2: float
    vesicle_centres: np.ndarray  # (V, 3)
    vesicle_radii: np.ndarray  # (V,)
    plane_normals: np.ndarray  # (P, 3) unit normals, plane n . p = offset
    plane_offsets: np.ndarray  # (P,)
    fiducial_centres: np.ndarray  # (F, 3)
    fiducial_radius_a: float

    @property
    def thickness_a(self) -> float:
        return self.slab_a[1] - self.slab_a[0]


@functools.lru_cache(maxsize=8)
def _model(path: str | None):
    return read_atomic_model(path)


@functools.lru_cache(maxsize=8)
def particle_templates(paths: tuple[str | None, ...], pixel_size_a: float, b_factor_a2: float) -> tuple:
    """Per structure: (spline coefficients of the potential (V), envelope as float32), cubic (z, y, x)."""
    out = []
    for path in paths:
        model = _model(path)
        pot = potential_map(model, pixel_size_a, b_factor_a2=b_factor_a2)
        mask = envelope_mask(pot, pixel_size_a, model.mass_da).astype(np.float32)
        out.append((ndimage.spline_filter(pot, order=3).astype(np.float32), mask))
    return tuple(out)


def ice_noise_sd_v(pixel_size_a: float, structure_factor: float) -> float:
    """S.d. (V) of the voxel-mean ice potential from density fluctuations of vitreous water."""
    per_molecule = ICE_POTENTIAL_V / WATER_PER_A3  # V A^3
    n = WATER_PER_A3 * pixel_size_a**3
    return float(per_molecule * np.sqrt(structure_factor * n) / pixel_size_a**3)


def slab_occupancy(z_a: np.ndarray, slab_a: tuple[float, float], pixel_size_a: float) -> np.ndarray:
    """Fraction of each voxel (centred at z_a, A) that lies inside the ice slab."""
    lo, hi = slab_a
    inside = np.minimum(z_a + pixel_size_a / 2, hi) - np.maximum(z_a - pixel_size_a / 2, lo)
    return np.clip(inside / pixel_size_a, 0.0, 1.0)


# ------------------------------------------------------------------------------------ placement
class _Placer:
    """Random non-overlapping placement of spheres, avoiding membrane shells."""

    def __init__(self, extent_xyz: np.ndarray, slab_a: tuple[float, float], rng: np.random.Generator):
        self.extent = extent_xyz
        self.slab = slab_a
        self.rng = rng
        self.centres: list[np.ndarray] = []
        self.radii: list[float] = []
        self.vesicles: list[tuple[np.ndarray, float]] = []
        self.planes: list[tuple[np.ndarray, float]] = []

    def _range(self, lo: float, hi: float, r: float) -> float:
        return self.rng.uniform(lo + r, hi - r) if hi - lo > 2 * r else 0.5 * (lo + hi)

    def _free(self, c: np.ndarray, r: float) -> bool:
        if self.centres and np.any(np.linalg.norm(np.asarray(self.centres) - c, axis=1) < np.asarray(self.radii) + r):
            return False
        for v, rv in self.vesicles:
            if abs(np.linalg.norm(c - v) - rv) < r + MEMBRANE_HALF_THICKNESS_A:
                return False
        return all(abs(n @ c - off) >= r + MEMBRANE_HALF_THICKNESS_A for n, off in self.planes)

    def place(self, r: float, z_choices: tuple[float, ...] | None = None, *, inside_xy: bool = True) -> np.ndarray | None:
        """A free centre for a sphere of radius r (A): within the slab in z; with `inside_xy` also
        wholly inside the volume in x and y, else anywhere over it (cut by the field of view)."""
        margin = r if inside_xy else 0.0
        for _ in range(MAX_TRIES):
            x = self._range(0.0, self.extent[0], margin)
            y = self._range(0.0, self.extent[1], margin)
            z = self.rng.choice(z_choices) if z_choices else self._range(*self.slab, r)
            c = np.array([x, y, z])
            if self._free(c, r):
                self.centres.append(c)
                self.radii.append(r)
                return c
        return None


def _unit_vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def build_specimen(cfg: SimulationConfig) -> Specimen:
    """Place beads, membranes and particles (deterministic in `cfg.seed`); no voxels rendered."""
    nz, ny, nx = cfg.shape_zyx
    px = cfg.pixel_size_a
    rng = np.random.default_rng([cfg.seed, STREAM_PLACEMENT])
    zc = (nz // 2) * px
    slab = (zc - cfg.thickness_a / 2, zc + cfg.thickness_a / 2)
    placer = _Placer(np.array([nx, ny, nz]) * px, slab, rng)

    r_gold = cfg.fiducials.diameter_a / 2
    gold = []
    for _ in range(cfg.fiducials.count):
        c = placer.place(r_gold, (slab[0] + r_gold, slab[1] - r_gold))
        if c is None:
            raise ModelError("fiducials.count", f"only {len(gold)} of {cfg.fiducials.count} gold beads fit without overlap; use fewer or a larger volume")
        gold.append(c)

    lo_r, hi_r = cfg.membranes.vesicle_radius_a
    for _ in range(cfg.membranes.vesicles):
        r = rng.uniform(lo_r, hi_r)
        c = np.array([rng.uniform(0, nx * px), rng.uniform(0, ny * px), rng.uniform(*slab)])
        placer.vesicles.append((c, r))
    for n in _unit_vectors(cfg.membranes.planar, rng):
        p0 = np.array([rng.uniform(0, nx * px), rng.uniform(0, ny * px), rng.uniform(*slab)])
        placer.planes.append((n, float(n @ p0)))

    paths = tuple(cfg.structure_paths)
    models = [_model(p) for p in paths]
    classes = rng.integers(0, len(paths), size=cfg.n_particles) if cfg.n_particles else np.zeros(0, dtype=int)
    positions = []
    for i, k in enumerate(classes):
        c = placer.place(models[k].radius_a, inside_xy=False)
        if c is None:
            raise ModelError(
                "n_particles",
                f"only {i} of {cfg.n_particles} particles fit without overlap in a {nx}x{ny}x{nz} volume at {px} A "
                f"with {cfg.thickness_a:.0f} A of ice; use fewer particles or a larger volume",
            )
        positions.append(c)
    particles = Particles.create(
        np.asarray(positions).reshape(-1, 3),
        random_rotations(len(positions), rng),
        np.ones(len(positions)),
        "simulated",
        np.array([models[k].name for k in classes], dtype=object),
    )
    vc = np.array([v for v, _ in placer.vesicles]).reshape(-1, 3)
    pn = np.array([n for n, _ in placer.planes]).reshape(-1, 3)
    return Specimen(
        shape_zyx=cfg.shape_zyx,
        pixel_size_a=px,
        slab_a=slab,
        ice_noise_v=ice_noise_sd_v(px, cfg.ice_structure_factor),
        seed=cfg.seed,
        particles=particles,
        particle_class=np.asarray(classes, dtype=np.int64),
        structure_paths=paths,
        b_factor_a2=cfg.b_factor_a2,
        vesicle_centres=vc,
        vesicle_radii=np.array([r for _, r in placer.vesicles]),
        plane_normals=pn,
        plane_offsets=np.array([o for _, o in placer.planes]),
        fiducial_centres=np.asarray(gold).reshape(-1, 3),
        fiducial_radius_a=r_gold,
    )


# ------------------------------------------------------------------------------------ rendering
def _gaussian(d: np.ndarray, amplitude: float, sigma: float, pixel_size_a: float) -> np.ndarray:
    s = np.hypot(sigma, pixel_size_a / 2)
    return (amplitude * sigma / s) * np.exp(-0.5 * np.square(d / s))


def bilayer_profile(d_a: np.ndarray, pixel_size_a: float) -> np.ndarray:
    """Excess potential (V) over ice at signed distance d (A) from a bilayer's mid-surface."""
    return (
        _gaussian(d_a - HEAD_OFFSET_A, HEAD_EXCESS_V, HEAD_SIGMA_A, pixel_size_a)
        + _gaussian(d_a + HEAD_OFFSET_A, HEAD_EXCESS_V, HEAD_SIGMA_A, pixel_size_a)
        + _gaussian(d_a, TAIL_EXCESS_V, TAIL_SIGMA_A, pixel_size_a)
    )


def _box(centre_vox: float, half: float, lo: int, hi: int) -> slice:
    return slice(max(lo, int(np.floor(centre_vox - half))), min(hi, int(np.ceil(centre_vox + half)) + 1))


def _render_particles(spec: Specimen, templates: tuple, y0: int, y1: int, out: np.ndarray, labels: np.ndarray) -> None:
    nz, _, nx = spec.shape_zyx
    px = spec.pixel_size_a
    for pos, rot, k in zip(spec.particles.positions, spec.particles.rotations, spec.particle_class):
        coeffs, mask = templates[k]
        n = coeffs.shape[0]
        half = n / 2
        cx, cy, cz = pos / px
        sz, sy, sx = _box(cz, half, 0, nz), _box(cy, half, y0, y1), _box(cx, half, 0, nx)
        if sz.start >= sz.stop or sy.start >= sy.stop or sx.start >= sx.stop:
            continue
        zz, yy, xx = np.meshgrid(np.arange(sz.start, sz.stop), np.arange(sy.start, sy.stop), np.arange(sx.start, sx.stop), indexing="ij")
        d = np.stack([xx - cx, yy - cy, zz - cz], axis=-1).reshape(-1, 3)
        ref = d @ rot + n // 2  # R^T d, as rows: (R^T d)^T = d^T R
        coords = ref[:, ::-1].T  # (z, y, x) template indices
        pot = ndimage.map_coordinates(coeffs, coords, order=3, prefilter=False, mode="constant", cval=0.0)
        env = ndimage.map_coordinates(mask, coords, order=1, mode="constant", cval=0.0)
        shape = zz.shape
        region = (sz, slice(sy.start - y0, sy.stop - y0), sx)
        out[region] += (pot - ICE_POTENTIAL_V * env).reshape(shape)
        labels[region] = np.where(env.reshape(shape) > 0.5, LABEL_PARTICLE, labels[region])


def _render_membranes(spec: Specimen, zz, yy, xx, y0: int, y1: int, out: np.ndarray, labels: np.ndarray) -> None:
    px = spec.pixel_size_a
    reach = MEMBRANE_HALF_THICKNESS_A + 3 * px
    surfaces = []
    for c, r in zip(spec.vesicle_centres, spec.vesicle_radii):
        if c[1] + r + reach >= y0 * px and c[1] - r - reach <= y1 * px:
            surfaces.append(np.sqrt((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2) - r)
    for n, off in zip(spec.plane_normals, spec.plane_offsets):
        surfaces.append(xx * n[0] + yy * n[1] + zz * n[2] - off)
    for d in surfaces:
        near = np.abs(d) < reach
        out[near] += bilayer_profile(d[near], px)
        labels[np.abs(d) <= MEMBRANE_HALF_THICKNESS_A] = LABEL_MEMBRANE


def _render_fiducials(spec: Specimen, zz, yy, xx, y0: int, y1: int, out: np.ndarray, labels: np.ndarray) -> None:
    px = spec.pixel_size_a
    r = spec.fiducial_radius_a
    for c in spec.fiducial_centres:
        if c[1] + r + px < y0 * px or c[1] - r - px > y1 * px:
            continue
        dist = np.sqrt((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2)
        fill = np.clip(0.5 + (r - dist) / px, 0.0, 1.0)
        out += (GOLD_POTENTIAL_V - ICE_POTENTIAL_V) * fill
        labels[dist <= r] = LABEL_FIDUCIAL


def render_slab(spec: Specimen, templates: tuple, y0: int, y1: int) -> np.ndarray:
    """Excess potential (V) and labels of Y rows y0..y1-1: float32 (2, nz, y1 - y0, nx)."""
    nz, _, nx = spec.shape_zyx
    px = spec.pixel_size_a
    occ = slab_occupancy(np.arange(nz) * px, spec.slab_a, px)[:, None, None]
    out = np.zeros((nz, y1 - y0, nx), dtype=np.float64)
    labels = np.zeros(out.shape, dtype=np.uint8)
    if spec.ice_noise_v > 0:
        for j, y in enumerate(range(y0, y1)):
            plane = np.random.default_rng([spec.seed, STREAM_ICE, y]).standard_normal((nz, nx))
            out[:, j, :] = plane * spec.ice_noise_v
    if len(spec.vesicle_radii) or len(spec.plane_offsets) or len(spec.fiducial_centres):
        zz, yy, xx = np.meshgrid(np.arange(nz) * px, np.arange(y0, y1) * px, np.arange(nx) * px, indexing="ij", sparse=True)
        _render_membranes(spec, zz, yy, xx, y0, y1, out, labels)
        _render_fiducials(spec, zz, yy, xx, y0, y1, out, labels)
    _render_particles(spec, templates, y0, y1, out, labels)
    out *= occ
    labels[np.broadcast_to(occ == 0, labels.shape)] = 0
    return np.stack([out.astype(np.float32), labels.astype(np.float32)])


def _render_task(spec: Specimen, y0: int, y1: int) -> np.ndarray:
    templates = particle_templates(spec.structure_paths, spec.pixel_size_a, spec.b_factor_a2) if len(spec.particles) else ()
    return render_slab(spec, templates, y0, y1)


def default_chunk_rows(shape_zyx: tuple[int, int, int], target_bytes: int = 32 * 2**20) -> int:
    """Y rows per slab so that one slab of float32 is about `target_bytes`."""
    nz, ny, nx = shape_zyx
    return int(min(ny, max(1, target_bytes // (nz * nx * 4))))


def specimen_arrays(spec: Specimen, chunk_rows: int | None = None) -> tuple[da.Array, da.Array]:
    """Lazy (excess potential (V) float32, labels uint8), both (z, y, x), one task per Y slab.

    Labels: 0 ice / vacuum, 1 particle, 2 membrane, 3 gold bead.
    """
    nz, ny, nx = spec.shape_zyx
    rows = chunk_rows or default_chunk_rows(spec.shape_zyx)
    spec_key = dask.delayed(spec, pure=True)
    slabs = []
    for y0 in range(0, ny, rows):
        y1 = min(ny, y0 + rows)
        task = dask.delayed(_render_task, pure=True)(spec_key, y0, y1)
        slabs.append(da.from_delayed(task, shape=(2, nz, y1 - y0, nx), dtype=np.float32))
    both = da.concatenate(slabs, axis=2)
    return both[0], both[1].astype(np.uint8)


def ice_slab(spec: Specimen) -> np.ndarray:
    """Ice potential (V) per z plane, shape (nz, 1, 1): add to the excess for the full potential."""
    nz = spec.shape_zyx[0]
    return (ICE_POTENTIAL_V * slab_occupancy(np.arange(nz) * spec.pixel_size_a, spec.slab_a, spec.pixel_size_a)).astype(np.float32)[:, None, None]
