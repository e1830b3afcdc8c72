"""The template-matching Dask graph: sub-volumes x orientation batches, tree-reduced maxima.

Tasks (all arrays (z, y, x)):
- `setup` (one): the template's padded spectrum and the band of frequencies with the search weight
  W (tilt weighting x low-pass x optional whitening) for the common sub-volume shape S;
- `prepare` (one per sub-volume): the sub-volume (its core plus an overlap of the template radius on
  every side, padded with its mean at the tomogram's border), its FFT on the band and the local
  standard deviation under the mask, shared by all its orientation batches;
- `search` (sub-volumes x batches): best score and orientation index over a batch of rotations;
- `combine`: pairwise tree reduction (max score, index of the max);
- `finish`: zero outside the tomogram mask; crop to the core (the overlaps are dropped).
The score map and the orientation-index map are lazy Dask arrays assembled from the cores.

With a `BlockCache` each finished sub-volume is persisted, and sub-volumes already in the cache
are loaded instead of searched: an interrupted job resumes with the missing ones only.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.delayed import Delayed

from cryocloud.errors import ModelError
from cryocloud.geometry import centre_index
from cryocloud.model import Tomogram
from cryocloud.pick import score as sc
from cryocloud.pick.angles import uniform_rotations
from cryocloud.pick.peaks import BlockMoments, sigma_of
from cryocloud.pick.template import Template, phase_randomised
from cryocloud.pick.spectrum import RadialSpectrum, chunk_power, from_sums, shell_grid
from cryocloud.pick.weighting import CtfMode, TiltWeighting, lowpass, tilt_weight, tilt_weight_at, whitening

FAST_SIZES = (64, 72, 80, 96, 108, 120, 128, 144, 160, 180, 192, 216, 240, 256)
ENERGY_INCREMENT_DEG = 90.0  # the 24 rotations of the cube average the template's energy map (score.energy_spectrum)


@dataclass(frozen=True)
class MatchSettings:
    """Search options. `resolution_a`: low-pass (A, default 3 voxels); `subvolume`: edge of the FFT
    boxes (voxels, overlap included; smaller for small tomograms); `batch_size`: rotations per
    task; `ctf`: "signed" | "abs" | "none"; `whiten`: spectral whitening, one filter 1 / sqrt(P(|k|))
    on both the tomogram and the template weight, P the `noise` spectrum when given (the noise of
    the tomogram: `cryocloud.pick.spectrum.noise_spectrum` of its even/odd half tomograms) or else
    the tomogram's own power, averaged over the sub-volumes (a poor proxy where the signal's power
    falls with frequency from the CTF envelope and dose: dividing by it boosts the noise);
    `defocus_gradient`: each sub-volume's CTF weight uses every tilt's defocus at the sub-volume's
    centre (depth and distance from the tilt axis, `TiltWeighting.at`) instead of the tilt's
    defocus at the tomogram centre; `background`: also search with a phase-randomised template
    (same power spectrum, no structure) and subtract its best score's local excess over its
    mean (see `match`)."""

    resolution_a: float | None = None
    subvolume: int = 128
    batch_size: int = 1000
    ctf: CtfMode = "signed"
    whiten: bool = False
    defocus_gradient: bool = True
    background: bool = False
    noise: RadialSpectrum | None = None

    def __post_init__(self):
        if self.noise is not None and not self.whiten:
            raise ModelError("noise", "a noise spectrum is used for whitening only; set whiten=True (or leave noise out)")


@dataclass(frozen=True)
class Block:
    """One sub-volume: `index` in the block grid, its `core` (start, stop) per axis in the tomogram
    and the start of its FFT box (core start - overlap, may be negative)."""

    index: tuple[int, int, int]
    core: tuple[tuple[int, int], ...]
    box_start: tuple[int, int, int]

    @property
    def key(self) -> str:
        return "_".join(str(i) for i in self.index)

    @property
    def core_shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in self.core)


def plan_blocks(shape: tuple[int, int, int], box: int, overlap: int) -> list[Block]:
    """Cover a volume of `shape` with cores of edge box - 2 * overlap."""
    core = box - 2 * overlap
    if core < 1:
        raise ModelError("subvolume", f"{box} voxels leave no core after twice the template radius ({overlap})")
    starts = [list(range(0, n, core)) for n in shape]
    blocks = []
    for index in np.ndindex(*[len(s) for s in starts]):
        lo = [starts[a][i] for a, i in enumerate(index)]
        core_range = tuple((lo[a], min(lo[a] + core, shape[a])) for a in range(3))
        blocks.append(Block(tuple(int(i) for i in index), core_range, tuple(int(v - overlap) for v in lo)))
    return blocks


def choose_box(shape: tuple[int, int, int], requested: int, overlap: int) -> int:
    """The smallest fast FFT size covering the tomogram with its overlaps, at most `requested`."""
    need = max(shape) + 2 * overlap
    fitting = [s for s in FAST_SIZES if s >= need]
    box = min(fitting[0], requested) if fitting else requested
    if box - 2 * overlap < 8:
        raise ModelError("subvolume", f"{requested} voxels is too small for a template radius of {overlap} voxels")
    return box


def _read_box(data: np.ndarray, block: Block, box: int) -> np.ndarray:
    """The FFT box of a block from the data slab covering it clipped to the tomogram, mean-padded."""
    slab = np.asarray(data, dtype=np.float32)
    out = np.full((box, box, box), float(slab.mean()), dtype=np.float32)
    dst = tuple(slice(max(0, -s), max(0, -s) + n) for s, n in zip(block.box_start, slab.shape))
    out[dst] = slab
    return out


def _inside_box(block: Block, box: int, shape: tuple[int, int, int]) -> np.ndarray | None:
    """(box, box, box) bool, True where a block's FFT box holds tomogram voxels; None when all do."""
    if all(0 <= s and s + box <= n for s, n in zip(block.box_start, shape)):
        return None
    inside = np.zeros((box, box, box), dtype=bool)
    inside[tuple(slice(max(0, -s), min(box, n - s)) for s, n in zip(block.box_start, shape))] = True
    return inside


def _clipped(block: Block, box: int, shape) -> tuple[slice, ...]:
    return tuple(slice(max(0, s), min(n, s + box)) for s, n in zip(block.box_start, shape))


@dataclass(frozen=True)
class _Setup:
    """The search's shared parts. `base` (K,) the weight on the band without the tilt weighting
    (low-pass x whitening); `tilts` set when each sub-volume gets its own CTF weight; `background`
    the phase-randomised template's spectrum for the background correction; `energy` the filtered
    template's energy map (`score.energy_spectrum`) for the boxes at the tomogram's faces."""

    spectrum: sc.TemplateSpectrum
    grid: sc.BandGrid
    prefilter: np.ndarray | None
    base: np.ndarray
    voxel_size: float
    tilts: TiltWeighting | None = None
    ctf: CtfMode = "signed"
    background: sc.TemplateSpectrum | None = None
    energy: np.ndarray | None = None

    def band_weight(self, position_a: np.ndarray) -> np.ndarray | None:
        """The band's weight for a sub-volume centred at `position_a` (x, y, z A from the tomogram
        centre); None: the shared one (`grid.weight`)."""
        if self.tilts is None:
            return None
        tilt = tilt_weight_at(self.grid.kxyz, self.grid.shape, self.voxel_size, self.tilts.at(position_a), ctf=self.ctf)
        return self.base * tilt


def _setup(template: Template, box: int, tilts: TiltWeighting | None, settings: MatchSettings, power: RadialSpectrum | None) -> _Setup:
    shape = (box, box, box)
    px = template.voxel_size
    resolution = settings.resolution_a or 3.0 * px
    base = lowpass(shape, px, resolution)
    prefilter = None
    if power is not None:
        prefilter = whitening(shape, px, power)
        base = base * prefilter
    weight = base if tilts is None else base * tilt_weight(shape, px, tilts, ctf=settings.ctf)
    k_max = min(0.5, 1.1 * px / resolution + 1.0 / box)
    grid = sc.band_grid(shape, weight.astype(np.float32), k_max)
    spectrum = sc.template_spectrum(template.data, template.mask, spherical=template.spherical)
    per_block = tilts is not None and settings.defocus_gradient and settings.ctf != "none" and tilts.defocus_u is not None
    background = None
    if settings.background:
        background = sc.template_spectrum(phase_randomised(template.data), template.mask, spherical=template.spherical)
    energy = sc.energy_spectrum(spectrum, grid, uniform_rotations(ENERGY_INCREMENT_DEG))
    return _Setup(spectrum, grid, prefilter, base.reshape(-1)[grid.flat].astype(np.float32), px, tilts if per_block else None, settings.ctf, background, energy)


def _block_power(data: np.ndarray, block: Block, box: int, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """`chunk_power` of a block's FFT box (mean-padded as searched), on the box's own shells."""
    return chunk_power(_read_box(data, block, box), voxel_size, *shell_grid(box, voxel_size))


def _tomogram_spectrum(step: float, *parts: tuple[np.ndarray, np.ndarray]) -> RadialSpectrum:
    return from_sums(step, list(parts))


def _prepare(data: np.ndarray, mask_core: np.ndarray | None, block: Block, box: int, shape: tuple[int, int, int], setup: _Setup, template: Template, position_a: np.ndarray) -> sc.Subvolume | None:
    if mask_core is not None and not np.any(mask_core):
        return None  # nothing to search here
    volume = _read_box(data, block, box)
    lo = tuple(c[0] - s for c, s in zip(block.core, block.box_start))
    sub = sc.prepare_subvolume(volume, setup.grid, template.mask, lo, block.core_shape, spherical=template.spherical, prefilter=setup.prefilter,
                               reach=True, inside=_inside_box(block, box, shape), energy=setup.energy)
    sub.band_weight = setup.band_weight(position_a)
    return sub


def block_position(block: Block, shape: tuple[int, int, int], voxel_size: float) -> np.ndarray:
    """Centre of a block's core (x, y, z) in A relative to the tomogram centre (geometry.centre_index)."""
    centre_zyx = [0.5 * (a + b - 1) - centre_index(n) for (a, b), n in zip(block.core, shape)]
    return np.asarray(centre_zyx[::-1], dtype=np.float64) * voxel_size


def _search(sub: sc.Subvolume | None, setup: _Setup, rotations: np.ndarray, first: int, template: Template, core_shape) -> tuple:
    """(best score, orientation index, score moments, best background score or None) of a batch."""
    background = None if setup.background is None else np.full(core_shape, -np.inf, dtype=np.float32)
    if sub is None:
        return np.zeros(core_shape, np.float32), np.zeros(core_shape, np.int32), np.zeros(3), background
    found = sc.search_orientations(sub, setup.spectrum, setup.grid, rotations, first, template.mask, background=setup.background, background_best=background)
    return (*found, background)


def _combine(a: tuple, b: tuple) -> tuple:
    """Keep the better score per voxel with its orientation; add the score moments; keep the
    better background score."""
    better = b[0] > a[0]
    background = None if a[3] is None else np.maximum(a[3], b[3])
    return np.where(better, b[0], a[0]), np.where(better, b[1], a[1]), a[2] + b[2], background


def _tree_reduce(parts: list):
    while len(parts) > 1:
        parts = [dask.delayed(_combine, pure=True)(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]


def _finish(result, mask_core: np.ndarray | None, cache: "BlockCache | None", key: str):
    best, index, moments, background = result
    maps = [best] if background is None else [best, background]
    maps = [np.where(np.isfinite(m), m, 0).astype(np.float32) for m in maps]
    if mask_core is not None:
        maps = [np.where(mask_core, m, 0).astype(np.float32) for m in maps]
        index = np.where(mask_core, index, 0)
    index = index.astype(np.int32)
    background = None if background is None else maps[1]
    if cache is not None:
        cache.save(key, maps[0], index, moments, background)
    return maps[0], index, moments, background


@dataclass(frozen=True)
class BlockCache:
    """Finished sub-volumes (score, index) as .npz files under `url` (a folder; local or s3://)."""

    url: str
    storage_options: dict = field(default_factory=dict)

    def _location(self, key: str):
        from cryocloud.store import resolve

        return resolve(self.url, self.storage_options).child(f"{key}.npz")

    def has(self, key: str) -> bool:
        return self._location(key).exists()

    def save(self, key: str, best: np.ndarray, index: np.ndarray, moments: np.ndarray, background: np.ndarray | None = None) -> None:
        from cryocloud.store import open_url

        buffer = io.BytesIO()
        np.savez(buffer, score=best, index=index, moments=moments, **({} if background is None else {"background": background}))
        loc = self._location(key)
        partial = loc.url + ".partial"  # a reader never sees half a block
        with open_url(partial, "wb", storage_options=self.storage_options) as f:
            f.write(buffer.getvalue())
        fs = loc.filesystem()
        fs.mv(loc.path + ".partial", loc.path)

    def load(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        from cryocloud.store import open_url

        with open_url(self._location(key).url, "rb", storage_options=self.storage_options) as f:
            stored = np.load(io.BytesIO(f.read()))
            return stored["score"], stored["index"], stored["moments"], stored["background"] if "background" in stored else None


def fingerprint(template: Template, rotations: np.ndarray, tilts: TiltWeighting | None, settings: MatchSettings, shape) -> str:
    """Identity of a search (inputs and options): cached blocks are reused only for the same one."""
    h = hashlib.sha256(sc.SCORE_DEFINITION.encode())
    for arr in (template.data, template.mask, np.asarray(rotations)):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(repr((template.voxel_size, settings, tuple(shape))).encode())
    if tilts is not None:
        for value in (tilts.tilt_angles, tilts.dose, tilts.defocus_u, tilts.defocus_v, tilts.astigmatism_angle):
            h.update(b"-" if value is None else np.asarray(value, dtype=np.float64).tobytes())
        h.update(repr(tilts.microscope).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class MatchResult:
    """Lazy results: `scores` (z, y, x) float32 and `orientation` (z, y, x) int32 indices into
    `rotations` (N, 3, 3); `searched` (z, y, x) bool, the voxels searched (None: all);
    `moments` a Delayed (sum, sum of squares, count) of every score evaluated (voxels x
    orientations), whose standard deviation sets the false-alarm threshold; `background` (z, y, x)
    float32 the phase-randomised search's best score (None without background correction);
    `block_moments` a Delayed `BlockMoments`, the same moments per sub-volume block (for a
    false-alarm threshold from each block's own sigma, `extract_peaks(local_sigma=...)`)."""

    scores: xr.DataArray
    orientation: xr.DataArray
    rotations: np.ndarray
    moments: Delayed
    searched: xr.DataArray | None = None
    background: xr.DataArray | None = None
    block_moments: Delayed | None = None

    def score_std(self) -> tuple[float, float]:
        """(standard deviation of all evaluated scores, their count); computes the moments."""
        moments = np.asarray(self.moments.compute(), dtype=np.float64)
        return float(sigma_of(moments)), float(moments[2])


def match(
    tomogram: Tomogram,
    template: Template,
    rotations: np.ndarray,
    *,
    tilts: TiltWeighting | None = None,
    settings: MatchSettings = MatchSettings(),
    tomogram_mask: xr.DataArray | np.ndarray | da.Array | None = None,
    cache: BlockCache | None = None,
) -> MatchResult:
    """Build the lazy template-matching graph of `tomogram` (nothing is computed here).

    The template must be at the tomogram's voxel size. `tomogram_mask` (z, y, x) boolean marks the
    voxels to search; sub-volumes without any are skipped.

    With `settings.background` the score map is corrected: score - background + mean(background)
    (the mean over the searched voxels), where background is the best score of the same search
    with a phase-randomised template. Places that correlate with anything of the template's power
    spectrum (dense, high-contrast matter) lose their excess; elsewhere the map keeps the scale of
    the uncorrected scores, so the false-alarm threshold from their standard deviation still holds.
    """
    if abs(template.voxel_size - tomogram.pixel_size) > 1e-3 * tomogram.pixel_size:
        raise ModelError("voxel_size", f"template is at {template.voxel_size} A but the tomogram at {tomogram.pixel_size} A; resample the template")
    rotations = np.ascontiguousarray(rotations, dtype=np.float64)
    shape = tomogram.shape
    overlap = int(np.ceil(template.radius)) + 1
    box = choose_box(shape, settings.subvolume, overlap)
    blocks = plan_blocks(shape, box, overlap)
    data = tomogram.data.data if isinstance(tomogram.data.data, da.Array) else da.from_array(np.asarray(tomogram.data.values))
    mask = None
    if tomogram_mask is not None:
        mask = tomogram_mask.data if isinstance(tomogram_mask, xr.DataArray) else tomogram_mask
        mask = mask if isinstance(mask, da.Array) else da.from_array(np.asarray(mask))
        if mask.shape != shape:
            raise ModelError("tomogram_mask", f"has shape {mask.shape}, expected the tomogram's {shape}")
        mask = mask.astype(bool)

    template_d = dask.delayed(template, pure=True)
    power = settings.noise
    if settings.whiten and power is None:
        px = tomogram.pixel_size
        powers = [dask.delayed(_block_power, pure=True)(data[_clipped(b, box, shape)], b, box, px) for b in blocks]
        power = dask.delayed(_tomogram_spectrum, pure=True)(shell_grid(box, px)[0], *powers)
    setup = dask.delayed(_setup, pure=True)(template_d, box, tilts, settings, power)
    batches = [(start, dask.delayed(rotations[start : start + settings.batch_size], pure=True)) for start in range(0, len(rotations), settings.batch_size)]

    coords = {d: tomogram.data.coords[d] for d in ("z", "y", "x")}
    attrs = {"pixel_size": tomogram.pixel_size}
    score_blocks = np.empty([max(b.index[a] for b in blocks) + 1 for a in range(3)], dtype=object)
    index_blocks = np.empty_like(score_blocks)
    background_blocks = np.empty_like(score_blocks)
    moments = []
    for block in blocks:
        core_slices = tuple(slice(a, b) for a, b in block.core)
        mask_core = None if mask is None else mask[core_slices]
        if cache is not None and cache.has(block.key):
            done = dask.delayed(cache.load, pure=False)(block.key)
        else:
            position = block_position(block, shape, tomogram.pixel_size)
            sub = dask.delayed(_prepare, pure=True)(data[_clipped(block, box, shape)], mask_core, block, box, shape, setup, template_d, position)
            parts = [dask.delayed(_search, pure=True)(sub, setup, rot, start, template_d, block.core_shape) for start, rot in batches]
            done = dask.delayed(_finish, pure=False)(_tree_reduce(parts), mask_core, cache, block.key)
        score_blocks[block.index] = da.from_delayed(done[0], block.core_shape, dtype=np.float32)
        index_blocks[block.index] = da.from_delayed(done[1], block.core_shape, dtype=np.int32)
        if settings.background:
            background_blocks[block.index] = da.from_delayed(done[3], block.core_shape, dtype=np.float32)
        moments.append(done[2])

    score_map = da.block(score_blocks.tolist())
    background = None
    if settings.background:
        background = da.block(background_blocks.tolist())
        inside = da.ones(shape, dtype=bool, chunks=score_map.chunks) if mask is None else mask.rechunk(score_map.chunks)
        level = background.sum() / da.maximum(inside.sum(), 1)
        score_map = da.where(inside, score_map - background + level, 0).astype(np.float32)
        background = xr.DataArray(background, dims=("z", "y", "x"), coords=coords, name="background", attrs=attrs)
    scores = xr.DataArray(score_map, dims=("z", "y", "x"), coords=coords, name="scores", attrs=attrs)
    orientation = xr.DataArray(da.block(index_blocks.tolist()), dims=("z", "y", "x"), coords=coords, name="orientation", attrs=attrs)
    searched = None if mask is None else xr.DataArray(mask, dims=("z", "y", "x"), coords=coords, name="searched", attrs=attrs)
    per_block = dask.delayed(_block_moments, pure=True)(score_blocks.shape, _block_edges(blocks), [b.index for b in blocks], *moments)
    return MatchResult(scores, orientation, rotations, dask.delayed(_sum_moments, pure=True)(*moments), searched, background, per_block)


def _sum_moments(*moments: np.ndarray) -> np.ndarray:
    return np.sum(np.stack(moments), axis=0)


def _block_edges(blocks: list[Block]) -> tuple[np.ndarray, ...]:
    """The cores' boundaries per axis (z, y, x): (n + 1,) voxel indices, 0 to the volume's edge."""
    return tuple(np.asarray(sorted({b.core[a][0] for b in blocks} | {b.core[a][1] for b in blocks}), dtype=np.int64) for a in range(3))


def _block_moments(grid: tuple[int, int, int], edges: tuple[np.ndarray, ...], indices: list, *moments: np.ndarray) -> BlockMoments:
    stacked = np.zeros((*grid, 3), dtype=np.float64)
    for index, m in zip(indices, moments):
        stacked[index] = m
    return BlockMoments(stacked, edges)
