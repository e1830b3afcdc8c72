"""Fast local normalised cross-correlation (Roseman 2003) with templates rotated in Fourier space.

All arrays are indexed (z, y, x); rotations act on (x, y, z) column vectors (cryocloud.geometry).

Per sub-volume V (shape S, cubic or not) and orientation R the score at voxel x is

    score(x) = sum_y t_R(y) V(x + y) / (||t_R|| sqrt(n) sigma_M(x))

where t_R is the effective template (the masked template rotated by R, multiplied in Fourier space
by the search's weight W: missing wedge, CTF, dose, low-pass, whitening), with zero mean over the
box (its DC term is removed), and sigma_M(x) is the standard deviation of V under the mask M
(n = sum M) centred on x. When t_R lies inside the mask this is exactly Roseman's FLCC, the Pearson
correlation under the mask; leakage of the filtered template outside the mask stays in the
numerator (see tests/test_pick_score.py for both comparisons against brute force).

The leakage matters where the variance changes steeply: W spreads the template (the missing wedge
elongates it along z; about 7 % of ||t_R||^2 of a ribosome at 10 A with the CTF lies outside its
mask), so a voxel whose mask holds only flat matter (empty ice after denoising, next to a
high-contrast specimen) draws numerator variance from outside the mask that its small sigma_M
does not count: its scores spread wider than elsewhere and their tail passes a false-alarm
cut-off set by the search's global standard deviation. With `reach=True` (`prepare_subvolume`)
the variance is also measured under the mask blurred by the energy of W's point-spread function,
K = M * |F^-1 W|^2 (the region the filtered template draws from), and each voxel is normalised
by the larger of the two: max(sigma_M, sigma_K). Where the variance is locally uniform the two
agree and the score is unchanged.

At the tomogram's faces the FFT box reaches past the data (mean-padded). Normalising there by
statistics that count the padding inflates the score's spread: the mask loses its outer shell to
the padding faster than the template loses energy (the density sits in the mask's centre), so on
white noise the score variance rose by up to 24 % within a mask radius of the faces, and the tail
passed the cut-off there (false picks at the z faces). A box with padding (`prepare_subvolume(inside=)`)
is normalised as a masked correlation over the tomogram's voxels only: sigma_M and sigma_K from the
voxels inside (their own counts), and ||t_R|| scaled by sqrt(f(x)), f the share of the filtered
template's energy that lies inside at x (`energy_spectrum`: |t_R|^2 averaged over a set of
rotations). Boxes wholly inside are unchanged.

Speed (one inverse FFT per orientation):
- the masked template's spectrum is rotated in Fourier space (`cryocloud.pick.fourier_rotation`):
  per orientation a numba kernel samples it at R^T k for the sub-volume's rfft frequencies k inside
  the band |k| < k_max only (the weight is zero outside), multiplies by W and conj() by V's FFT,
  accumulating ||t_R||^2 by Parseval on the way; one inverse real FFT gives the numerator, pruned
  to the band and to the lines that reach the core (`BandInverse`);
- with a spherical mask sigma_M is rotation invariant: computed once per sub-volume (two FFT
  convolutions with the mask); ||t_R|| comes from Parseval, so no real-space template is needed.
  A non-spherical mask is rotated the same way over the full band (two extra inverse FFTs per
  orientation: the slower path);
- a numba kernel keeps, per voxel of the sub-volume's core, the best score and its orientation index.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import ducc0
import numba
import numpy as np

from cryocloud.errors import ModelError
from cryocloud.pick.fourier_rotation import BandRuns, TemplateSpectrum, band_runs, template_spectrum  # noqa: F401 (template_spectrum: the search's template input)

# The score's definition: part of a search's fingerprint, so blocks cached by a resumable search are
# reused only under the same definition. Change it whenever the score of a given input changes.
SCORE_DEFINITION = "roseman-masked/reach-normalised/inside-only/2"
MIN_SIGMA_FRACTION = 1e-4  # voxels whose local variance is below this fraction of the mean square score 0


def irfftn(spectrum: np.ndarray, shape: tuple[int, int, int], out: np.ndarray | None = None) -> np.ndarray:
    """Inverse real FFT (numpy normalisation), single-threaded ducc0."""
    return ducc0.fft.c2r(spectrum, axes=(0, 1, 2), lastsize=shape[2], forward=False, inorm=2, out=out, nthreads=1)


def rfftn(volume: np.ndarray) -> np.ndarray:
    """Forward real FFT (unnormalised), single-threaded ducc0, complex64 for float32 input."""
    return ducc0.fft.r2c(np.ascontiguousarray(volume, dtype=np.float32), axes=(0, 1, 2), forward=True, nthreads=1)


def half_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    return (shape[0], shape[1], shape[2] // 2 + 1)


@dataclass(frozen=True)
class BandGrid:
    """The rfft frequencies of a sub-volume shape that the search uses.

    `flat` (K,) int64 indices into the flattened half spectrum (z, y, x // 2 + 1); `kxyz` (K, 3)
    float32 frequencies (x, y, z) in cycles per voxel; `weight` (K,) float32 search weight W;
    `multiplicity` (K,) float32 Parseval weights (2 for x frequencies present twice in the full
    spectrum, 1 otherwise). The DC term is excluded (zero-mean templates).

    The band also lives in a compact layout (z, len(rows), width) for the pruned inverse FFT
    (`BandInverse`): `rows` the half spectrum's y indices that hold band points (|ky| up to the
    band's edge, or all), `width` the x frequencies 0..width-1 that do; `compact_flat` (K,) the
    band's indices into that layout.
    """

    shape: tuple[int, int, int]
    flat: np.ndarray
    kxyz: np.ndarray
    weight: np.ndarray
    multiplicity: np.ndarray
    rows: np.ndarray
    width: int
    compact_flat: np.ndarray

    @property
    def compact_shape(self) -> tuple[int, int, int]:
        return (self.shape[0], self.rows.size, self.width)

    @cached_property
    def runs(self) -> BandRuns:
        """The band's runs along x into the compact layout (`band_runs`), cut once per grid."""
        return band_runs(self.kxyz, self.compact_flat, self.multiplicity)

    @cached_property
    def half_spectrum_runs(self) -> BandRuns:
        """The band's runs along x into the full half spectrum (`flat`), cut once per grid."""
        return band_runs(self.kxyz, self.flat, self.multiplicity)


def band_grid(shape: tuple[int, int, int], weight: np.ndarray, k_max: float = 0.5) -> BandGrid:
    """Frequencies of the rfft grid of `shape` with 0 < |k| < k_max (cycles/voxel) and weight != 0.

    `weight` is the search weight on the full rfft grid (z, y, x // 2 + 1) of `shape`.
    """
    if weight.shape != half_shape(shape):
        raise ValueError(f"weight has shape {weight.shape}, expected {half_shape(shape)}")
    kz = np.fft.fftfreq(shape[0])[:, None, None]
    ky = np.fft.fftfreq(shape[1])[None, :, None]
    kx = np.fft.rfftfreq(shape[2])[None, None, :]
    k2 = kz * kz + ky * ky + kx * kx
    inside = (k2 < k_max * k_max) & (k2 > 0) & (weight != 0)
    flat = np.flatnonzero(inside)
    iz, iy, ix = np.unravel_index(flat, weight.shape)
    kxyz = np.stack([kx[0, 0, ix], ky[0, iy, 0], kz[iz, 0, 0]], axis=-1).astype(np.float32)
    twice = (ix > 0) & ~((shape[2] % 2 == 0) & (ix == shape[2] // 2))
    edge = int(np.max(np.minimum(iy, shape[1] - iy), initial=0))  # largest |ky| index in the band
    rows = np.arange(shape[1]) if 2 * edge + 1 >= shape[1] else np.r_[0 : edge + 1, shape[1] - edge : shape[1]]
    width = int(np.max(ix, initial=0)) + 1
    row_of = np.full(shape[1], -1, dtype=np.int64)
    row_of[rows] = np.arange(rows.size)
    compact_flat = (iz * rows.size + row_of[iy]) * width + ix
    return BandGrid(
        tuple(shape), flat, kxyz, weight.reshape(-1)[flat].astype(np.float32), np.where(twice, 2.0, 1.0).astype(np.float32), rows, width, compact_flat
    )


class BandInverse:
    """Inverse real FFT of half spectra that vanish outside a grid's band, pruned to the band and,
    optionally, to the (z, y) lines of a core region.

    The caller writes the band into `compact` (grid.compact_shape, complex64; entries off the band
    stay zero) and calls the object: the z transforms run only on the band's (y, x) lines, the y
    transforms only on its x columns (and, with a core, only in the core's z planes), then one real
    transform along x into `out` (with a core only its (z, y) lines: ~30 % less work for the x
    transforms at a 128^3 sub-volume with an 11-voxel overlap). `out` (float32) holds the lines
    z = origin[0] .., y = origin[1] .. of the volume, all x: (core z, core y, shape x) with a core,
    else shape, origin 0. The result is the unnormalised inverse: multiply by `factor` (1 / voxels)
    for numpy's irfftn. All buffers are allocated once; single-threaded ducc0.

    `lo`, `core_shape`: the core's first voxel and shape (z, y, x); None for the whole volume.
    """

    def __init__(self, grid: BandGrid, lo: tuple[int, int, int] | None = None, core_shape: tuple[int, int, int] | None = None):
        self.shape = grid.shape
        self.width = grid.width
        self.factor = 1.0 / float(np.prod(grid.shape))
        self.compact = np.zeros(grid.compact_shape, dtype=np.complex64)
        self.work = np.zeros(half_shape(grid.shape), dtype=np.complex64)
        breaks = np.flatnonzero(np.diff(grid.rows) != 1) + 1
        starts = np.r_[0, breaks]
        stops = np.r_[breaks, grid.rows.size]
        self._runs = [(slice(a, b), slice(int(grid.rows[a]), int(grid.rows[b - 1]) + 1)) for a, b in zip(starts, stops)]
        kept = np.zeros(grid.shape[1], dtype=bool)
        kept[grid.rows] = True
        gaps = np.flatnonzero(~kept)
        self._gap = slice(int(gaps[0]), int(gaps[-1]) + 1) if gaps.size else None
        if (lo is None) != (core_shape is None):
            raise ValueError("give both lo and core_shape, or neither")
        if lo is None:
            self._planes, self._lines = slice(None), slice(None)
            self.origin = (0, 0, 0)
            self.out = np.empty(grid.shape, dtype=np.float32)
        else:
            if any(a < 0 or c < 1 or a + c > s for a, c, s in zip(lo, core_shape, grid.shape)):
                raise ValueError(f"core {tuple(core_shape)} at {tuple(lo)} does not fit in {grid.shape}")
            self._planes, self._lines = slice(lo[0], lo[0] + core_shape[0]), slice(lo[1], lo[1] + core_shape[1])
            self.origin = (int(lo[0]), int(lo[1]), 0)
            self.out = np.empty((core_shape[0], core_shape[1], grid.shape[2]), dtype=np.float32)

    def __call__(self) -> np.ndarray:
        planes = self.work[self._planes]
        band = self.work[:, :, : self.width]
        for src, dst in self._runs:
            ducc0.fft.c2c(self.compact[:, src], axes=(0,), forward=False, out=band[:, dst], nthreads=1)
        core_band = planes[:, :, : self.width]
        if self._gap is not None:
            core_band[:, self._gap] = 0  # the y transform below left data there
        ducc0.fft.c2c(core_band, axes=(1,), forward=False, out=core_band, nthreads=1)
        ducc0.fft.c2r(planes[:, self._lines], axes=(2,), lastsize=self.shape[2], forward=False, out=self.out, nthreads=1)
        return self.out


@numba.njit(cache=True, fastmath=True, nogil=True)
def _update_best(corr, lo, scale, inv_norm, best, best_index, index, moments):
    """best = max(best, corr[core] * scale * inv_norm), keeping the orientation index; adds the
    scores' sum and sum of squares to `moments` (for the search's score standard deviation)."""
    nz, ny, nx = best.shape
    total = 0.0
    total2 = 0.0
    for z in range(nz):
        for y in range(ny):
            row = corr[z + lo[0], y + lo[1], lo[2] : lo[2] + nx]
            srow = scale[z, y]
            brow = best[z, y]
            irow = best_index[z, y]
            for x in range(nx):
                s = row[x] * srow[x] * inv_norm
                total += s
                total2 += s * s
                better = s > brow[x]
                brow[x] = s if better else brow[x]
                irow[x] = index if better else irow[x]
    moments[0] += total
    moments[1] += total2
    moments[2] += nz * ny * nx


@numba.njit(cache=True, fastmath=True, nogil=True)
def _masked_scale(sum_v, sum_v2, count, reach_v, reach_v2, reach_count, energy, n, lo, out_shape, min_var):
    """1 / sqrt(n f sigma^2) on the core from local sums under the mask (sum_v, sum_v2 over `count`
    voxels) and under the reach kernel (reach_*; the same arrays without one): sigma^2 the larger of
    the two variances, f (`energy`) the template's energy share inside the tomogram; 0 where the
    mask's variance is ~0."""
    out = np.zeros(out_shape, dtype=np.float32)
    for z in range(out_shape[0]):
        for y in range(out_shape[1]):
            for x in range(out_shape[2]):
                i, j, k = z + lo[0], y + lo[1], x + lo[2]
                mean = sum_v[i, j, k] / count[i, j, k]
                var = sum_v2[i, j, k] / count[i, j, k] - mean * mean
                mean_k = reach_v[i, j, k] / reach_count[i, j, k]
                var_k = reach_v2[i, j, k] / reach_count[i, j, k] - mean_k * mean_k
                if var > min_var:
                    out[z, y, x] = 1.0 / np.sqrt(n * max(var, var_k) * energy[i, j, k])
    return out


def _mask_on_grid(shape: tuple[int, int, int], mask: np.ndarray) -> np.ndarray:
    """A (b, b, b) mask centred at b // 2 placed with its centre at the origin of a periodic grid."""
    b = mask.shape[0]
    grid = np.zeros(shape, dtype=np.float32)
    grid[:b, :b, :b] = mask
    return np.roll(grid, (-(b // 2),) * 3, axis=(0, 1, 2))


def reach_spectrum(grid: BandGrid) -> np.ndarray:
    """Half spectrum (z, y, x // 2 + 1 of grid.shape, float32) of |F^-1 W|^2 / sum |F^-1 W|^2: the
    energy of the search weight's point-spread function (origin at index 0, unit sum). Convolving
    the mask with it gives the region a filtered template draws its numerator from."""
    weight = np.zeros(half_shape(grid.shape), dtype=np.complex64)
    weight.reshape(-1)[grid.flat] = grid.weight
    psf = irfftn(weight, grid.shape).astype(np.float64)
    energy = psf * psf
    return rfftn(energy / energy.sum()).real.astype(np.float32)  # real: W is symmetric, so is |psf|^2


def energy_spectrum(spectrum: TemplateSpectrum, grid: BandGrid, rotations: np.ndarray) -> np.ndarray:
    """Half spectrum (z, y, x // 2 + 1 of grid.shape, complex64) of the filtered template's energy
    map: |t_R|^2 averaged over `rotations` (N, 3, 3), unit sum, offset 0 at index 0. Correlated
    with the inside of a box it gives the share of ||t_R||^2 that falls on tomogram voxels."""
    energy = np.zeros(grid.shape, dtype=np.float64)
    for rot in np.asarray(rotations, dtype=np.float64):
        energy += np.square(effective_template(spectrum, grid, rot), dtype=np.float64)
    return rfftn((energy / energy.sum()).astype(np.float32))


@dataclass
class Border:
    """A box reaching past the tomogram: half spectra of its `inside` indicator, of the volume times
    it (`v`) and of its square times it (`v2`), and the conjugated template `energy_spectrum`."""

    inside: np.ndarray
    v: np.ndarray
    v2: np.ndarray
    energy_conj: np.ndarray

    @classmethod
    def of(cls, volume: np.ndarray, inside: np.ndarray, energy: np.ndarray) -> "Border":
        weight = inside.astype(np.float32)
        return cls(rfftn(weight), rfftn(volume * weight), rfftn(volume * volume * weight), np.conj(energy))


def _local_scale(vhat: np.ndarray, v2hat: np.ndarray, mhat_conj: np.ndarray, n: float, shape, lo, core_shape,
                 reach: np.ndarray | None = None, border: Border | None = None) -> np.ndarray:
    """1 / (sqrt(n f) sigma) on the core; `reach` (half spectrum, `reach_spectrum`) adds the variance
    under the mask blurred by it (sigma = the larger); with a `border`, statistics over the inside only
    and f its template energy share (else f = 1)."""
    kernels = [mhat_conj] if reach is None else [mhat_conj, mhat_conj * reach]
    if border is None:
        sums = [(irfftn(k * vhat, shape), irfftn(k * v2hat, shape), np.broadcast_to(np.float32(n), shape)) for k in kernels]
        energy = np.broadcast_to(np.float32(1.0), shape)
    else:
        sums = [(irfftn(k * border.v, shape), irfftn(k * border.v2, shape), irfftn(k * border.inside, shape)) for k in kernels]
        energy = irfftn(border.energy_conj * border.inside, shape)
    (sum_v, sum_v2, count), (reach_v, reach_v2, reach_count) = sums[0], sums[-1]
    min_var = float(MIN_SIGMA_FRACTION * max(np.median(sum_v2) / n, 1e-30))
    return _masked_scale(sum_v, sum_v2, count, reach_v, reach_v2, reach_count, energy, float(n), np.asarray(lo, dtype=np.int64), tuple(core_shape), min_var)


@dataclass
class Subvolume:
    """A sub-volume ready for matching: its spectrum on the band and the local normalisation.

    `vhat_band` (K,) complex64; `scale` (core) float32 = 1 / (sqrt(n) sigma_M) for a spherical mask;
    for a non-spherical one `vhat` and `v2hat` (full half spectra) instead; `lo` the core's first
    voxel inside the sub-volume and `core_shape` its shape; `band_weight` (K,) this sub-volume's
    own search weight on the band (e.g. its CTF at its defocus), None for the grid's; `reach` the
    half spectrum of the reach kernel (`reach_spectrum`) for a non-spherical search normalised with
    it, else None.
    """

    shape: tuple[int, int, int]
    lo: tuple[int, int, int]
    core_shape: tuple[int, int, int]
    vhat_band: np.ndarray
    scale: np.ndarray | None
    vhat: np.ndarray | None = None
    v2hat: np.ndarray | None = None
    band_weight: np.ndarray | None = None
    reach: np.ndarray | None = None
    border: Border | None = None


def prepare_subvolume(
    volume: np.ndarray,
    grid: BandGrid,
    mask: np.ndarray,
    lo: tuple[int, int, int],
    core_shape: tuple[int, int, int],
    *,
    spherical: bool,
    prefilter: np.ndarray | None = None,
    reach: bool = False,
    inside: np.ndarray | None = None,
    energy: np.ndarray | None = None,
) -> Subvolume:
    """FFT and local statistics of one sub-volume (z, y, x) for the search.

    `mask` (b, b, b) is the template mask; `lo`/`core_shape` the region whose scores are kept;
    `prefilter` (half spectrum) filters the volume before everything (e.g. whitening); `reach`:
    normalise by max(sigma_M, sigma_K), K the mask blurred by the energy of the band weight's
    point-spread function (module docstring), instead of sigma_M (Roseman's FLCC); `inside` (shape)
    bool, True on the tomogram's voxels where the box reaches past it (None: all), with `energy` the
    template's `energy_spectrum`: the statistics count those voxels only (module docstring).
    """
    shape = tuple(volume.shape)
    v = np.asarray(volume, dtype=np.float32)
    vhat = rfftn(v)
    if prefilter is not None:
        vhat *= prefilter
        v = irfftn(vhat, shape)
    vhat_band = vhat.reshape(-1)[grid.flat].copy()
    v2hat = rfftn(v * v)
    spread = reach_spectrum(grid) if reach else None
    if inside is not None and inside.all():
        inside = None
    if inside is not None and energy is None:
        raise ModelError("energy", "a box reaching past the tomogram (inside) needs the template's energy_spectrum")
    border = None if inside is None else Border.of(v, inside, energy)
    if spherical:
        mhat_conj = np.conj(rfftn(_mask_on_grid(shape, mask)))
        scale = _local_scale(vhat, v2hat, mhat_conj, float(mask.sum()), shape, lo, core_shape, spread, border)
        return Subvolume(shape, tuple(lo), tuple(core_shape), vhat_band, scale)
    return Subvolume(shape, tuple(lo), tuple(core_shape), vhat_band, None, vhat, v2hat, reach=spread, border=border)


def _full_band(shape: tuple[int, int, int]) -> BandGrid:
    return band_grid(shape, np.ones(half_shape(shape), dtype=np.float32), k_max=np.inf)


def search_orientations(
    sub: Subvolume,
    spectrum: TemplateSpectrum,
    grid: BandGrid,
    rotations: np.ndarray,
    first_index: int = 0,
    mask: np.ndarray | None = None,
    *,
    background: TemplateSpectrum | None = None,
    background_best: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best score and orientation index (first_index + i) per core voxel over `rotations` (N, 3, 3),
    and the moments (sum, sum of squares, count) of all scores evaluated.

    A non-spherical search also needs the template `mask` (b, b, b) for its voxel count. With a
    `background` spectrum (a phase-randomised template) the same rotations are searched with it too
    and its best score per core voxel is kept in `background_best` (core shape, float32, updated
    in place; start it at -inf).
    """
    shape = sub.shape
    best = np.full(sub.core_shape, -np.inf, dtype=np.float32)
    best_index = np.zeros(sub.core_shape, dtype=np.int32)
    moments = np.zeros(3, dtype=np.float64)
    searches = [(spectrum, best, best_index, moments)]
    if background is not None:
        searches.append((background, background_best, np.zeros(sub.core_shape, dtype=np.int32), np.zeros(3, dtype=np.float64)))
    inverse = BandInverse(grid, sub.lo, sub.core_shape)
    compact = inverse.compact.reshape(-1)
    lo = np.asarray(sub.lo, dtype=np.int64)
    lo_out = lo - np.asarray(inverse.origin, dtype=np.int64)  # the core's first voxel in inverse.out
    n_voxels = float(np.prod(shape))
    full = None if sub.scale is not None else _full_band(shape)
    weight = grid.weight if sub.band_weight is None else sub.band_weight
    full_runs = None if full is None else band_runs(full.kxyz, full.flat, full.multiplicity)
    for i, rot in enumerate(np.asarray(rotations, dtype=np.float64)):
        scale = sub.scale if sub.scale is not None else _rotated_mask_scale(sub, spectrum, full, full_runs, rot, float(mask.sum()), lo)
        for values, best_of, index_of, moments_of in searches:
            norm2 = grid.runs.fill(rot, values.values, weight, sub.vhat_band, compact)
            if norm2 <= 0:
                continue
            inv_norm = inverse.factor / np.sqrt(norm2 / n_voxels)
            _update_best(inverse(), lo_out, scale, np.float32(inv_norm), best_of, index_of, np.int32(first_index + i), moments_of)
    return best, best_index, moments


def _rotated_mask_scale(sub: Subvolume, spectrum: TemplateSpectrum, full: BandGrid, runs: BandRuns, rot: np.ndarray, n: float, lo) -> np.ndarray:
    """Local normalisation under the mask rotated by `rot` (non-spherical masks); `runs` the
    `band_runs` of the `full` grid."""
    mhat = np.zeros(half_shape(sub.shape), dtype=np.complex64)
    flat = mhat.reshape(-1)
    ones = np.ones(full.flat.size, dtype=np.complex64)
    runs.fill(rot, spectrum.mask_values, full.weight, ones, flat)
    flat[0] = n  # the DC term: the mask's voxel count
    return _local_scale(sub.vhat, sub.v2hat, mhat, n, sub.shape, lo, sub.core_shape, sub.reach, sub.border)


def effective_template(spectrum: TemplateSpectrum, grid: BandGrid, rotation: np.ndarray) -> np.ndarray:
    """The real-space template t_R (grid.shape, origin at index 0) that the search correlates with."""
    inverse = BandInverse(grid)
    ones = np.ones(grid.flat.size, dtype=np.complex64)
    grid.runs.fill(rotation, spectrum.values, grid.weight, ones, inverse.compact.reshape(-1))
    np.conjugate(inverse.compact, out=inverse.compact)
    return inverse() * np.float32(inverse.factor)
