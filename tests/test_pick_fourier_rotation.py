"""Fourier-space template rotation: the fast band fill against direct trilinear sampling and exact rotations."""

import numpy as np

from cryocloud.geometry import random_rotations
from cryocloud.pick import fourier_rotation as fr
from cryocloud.pick.score import band_grid, half_shape
from cryocloud.pick.template import spherical_mask

B, S = 16, 24


def _template() -> np.ndarray:
    z, y, x = np.mgrid[:B, :B, :B] - B // 2
    blob = np.exp(-((x - 2) ** 2 / 4 + (y + 1) ** 2 / 9 + z**2 / 2)) + 0.5 * np.exp(-((x + 3) ** 2 + y**2 + (z - 2) ** 2) / 3)
    return blob.astype(np.float32)


def _spectrum_of(table: np.ndarray) -> np.ndarray:
    """The (P, P, P) complex spectrum held in a wrapped one."""
    p = table.shape[0] - 1
    return table[:p, :p, :p].astype(np.complex128)


def _direct_trilinear(spectrum: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Trilinear samples (float64) of a periodic (P, P, P) spectrum at q (N, 3) (x, y, z) grid units."""
    p = spectrum.shape[0]
    base = np.floor(q)
    frac = q - base
    base = base.astype(np.int64)
    out = np.zeros(q.shape[0], dtype=np.complex128)
    for corner in np.ndindex(2, 2, 2):  # (dx, dy, dz)
        w = np.prod(np.where(np.array(corner), frac, 1 - frac), axis=1)
        x, y, z = ((base + np.array(corner)) % p).T
        out += w * spectrum[z, y, x]
    return out


def _wedge_weight(shape) -> np.ndarray:
    """A search weight with holes: a missing wedge around kz (|kz| > 1.2 |kx|) and a ramp."""
    kz = np.fft.fftfreq(shape[0])[:, None, None]
    ky = np.fft.fftfreq(shape[1])[None, :, None]
    kx = np.fft.rfftfreq(shape[2])[None, None, :]
    weight = (np.abs(kz) <= 1.2 * np.abs(kx)) * (1.0 + 3.0 * ky * ky + kx)
    return np.broadcast_to(weight, half_shape(shape)).astype(np.float32)


def test_wrapped_spectrum_writes_out_the_periodic_wrap():
    spectrum = np.random.default_rng(0).normal(size=(8, 8, 8)) + 1j * np.random.default_rng(1).normal(size=(8, 8, 8))
    table = fr.wrapped(spectrum)
    assert table.shape == (9, 9, 9) and table.dtype == np.complex64
    assert np.allclose(table[:8, :8, :8], spectrum, atol=1e-6)
    assert np.allclose(table[8, 3, 8], spectrum[0, 3, 0], atol=1e-6)
    assert np.allclose(table[2, 8, 5], spectrum[2, 0, 5], atol=1e-6)


def test_band_runs_cover_every_frequency_once():
    grid = band_grid((S, S, S), _wedge_weight((S, S, S)))
    runs = fr.band_runs(grid.kxyz, grid.compact_flat, grid.multiplicity)
    assert runs.length.sum() == grid.flat.size
    assert np.array_equal(runs.start, np.r_[0, np.cumsum(runs.length)[:-1]])
    rebuilt = np.concatenate([runs.k0[r] + np.arange(n)[:, None] * np.array([runs.dk[r], 0, 0]) for r, n in enumerate(runs.length)])
    assert np.abs(rebuilt - grid.kxyz).max() < 1e-6
    assert np.array_equal(np.concatenate([runs.flat[r] + np.arange(n) for r, n in enumerate(runs.length)]), grid.compact_flat)
    assert np.array_equal(np.repeat(runs.mult, runs.length), grid.multiplicity)
    # the wedge cuts lines: fewer points per run than a full line, but runs are lines, not points
    assert 2 < runs.length.mean() < S // 2 + 1
    empty = fr.band_runs(np.zeros((0, 3), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))
    assert empty.start.size == 0
    out = np.zeros(4, np.complex64)
    assert empty.fill(np.eye(3), fr.wrapped(np.ones((8, 8, 8))), np.zeros(0, np.float32), out[:0], out) == 0.0


def test_fill_equals_direct_trilinear_sampling():
    mask = spherical_mask(B, 6.0, soft_edge=0.0)
    spectrum = fr.template_spectrum(_template(), mask, spherical=True)
    direct = _spectrum_of(spectrum.values)
    p = spectrum.padded
    rng = np.random.default_rng(2)
    for shape in ((S, S, S), (20, 24, 18)):  # cubic and not, even and odd x
        grid = band_grid(shape, _wedge_weight(shape))
        vhat = (rng.normal(size=grid.flat.size) + 1j * rng.normal(size=grid.flat.size)).astype(np.complex64)
        for rotation in random_rotations(3, rng):
            out = np.full(int(np.prod(grid.compact_shape)), 7 + 7j, dtype=np.complex64)  # sentinel off the band
            norm2 = grid.runs.fill(rotation, spectrum.values, grid.weight, vhat, out)
            t = grid.weight * _direct_trilinear(direct, grid.kxyz.astype(np.float64) @ rotation * p)  # rows: R^T k
            expected = np.conj(t) * vhat
            assert np.abs(out[grid.compact_flat] - expected).max() < 1e-5 * np.abs(expected).max()
            assert abs(norm2 / np.sum(grid.multiplicity * np.abs(t) ** 2) - 1) < 1e-5
            off = np.ones(out.size, dtype=bool)
            off[grid.compact_flat] = False
            assert np.all(out[off] == 7 + 7j)


def test_quarter_turn_permutes_the_spectrum_exactly():
    """On the table's own lattice a 90 degree turn about z samples grid points only: T_R(k) = T(R^T k)
    with R^T (kx, ky, kz) = (ky, -kx, kz), no interpolation."""
    spectrum = fr.template_spectrum(_template(), spherical_mask(B, 6.0, soft_edge=0.0), spherical=True)
    p = spectrum.padded
    direct = _spectrum_of(spectrum.values)
    grid = band_grid((p, p, p), np.ones(half_shape((p, p, p)), np.float32), k_max=np.inf)
    turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # x -> y
    out = np.zeros(grid.flat.size, dtype=np.complex64)
    ones = np.ones(grid.flat.size, dtype=np.complex64)
    fr.band_runs(grid.kxyz, np.arange(grid.flat.size), grid.multiplicity).fill(turn, spectrum.values, grid.weight, ones, out)
    i = np.rint(grid.kxyz * p).astype(np.int64)  # (x, y, z) indices
    expected = np.conj(direct[i[:, 2] % p, -i[:, 0] % p, i[:, 1] % p])
    assert np.abs(out - expected).max() < 1e-6 * np.abs(expected).max()


def test_runs_of_a_permuted_frequency_list():
    """Runs cut from a frequency list that is not the band's x-ordered one (the band's frequencies
    with y and z swapped) sample that list's own frequencies."""
    spectrum = fr.template_spectrum(_template(), spherical_mask(B, 6.0, soft_edge=0.0), spherical=True)
    direct = _spectrum_of(spectrum.values)
    grid = band_grid((S, S, S), _wedge_weight((S, S, S)))
    ones = np.ones(grid.flat.size, dtype=np.complex64)
    for kxyz in (grid.kxyz, np.ascontiguousarray(grid.kxyz[:, [0, 2, 1]])):
        out = np.zeros(int(np.prod(grid.compact_shape)), dtype=np.complex64)
        fr.band_runs(kxyz, grid.compact_flat, grid.multiplicity).fill(np.eye(3), spectrum.values, grid.weight, ones, out)
        expected = np.conj(grid.weight * _direct_trilinear(direct, kxyz.astype(np.float64) * spectrum.padded))
        assert np.abs(out[grid.compact_flat] - expected).max() < 1e-5 * np.abs(expected).max()
