"""Rotation of a template in Fourier space: a gridding spectrum sampled at rotated frequencies.

All arrays are indexed (z, y, x); rotations act on (x, y, z) column vectors (cryocloud.geometry).

The masked template's FFT is computed once on a box padded `OVERSAMPLING` times (or more, to a
power of two P so that the periodic wrap is a bit mask), with the trilinear-interpolation
apodisation (sinc^2 per axis) divided out beforehand (gridding). The spectrum of the template
rotated by R is then T_R(k) = T(R^T k), sampled trilinearly at the frequencies k (cycles per
voxel) that a search or an alignment uses.

Speed: the sampling costs as much as an inverse FFT of the searched box unless it is lean, so
- the spectrum is stored with its periodic wrap written out, (P + 1)^3 complex64 (`wrapped`): the
  8 corners of any cell are at fixed offsets from one index and x neighbours are adjacent, so a
  sample is four 16-byte loads (one per (z, y) corner pair);
- the frequencies are walked in runs along x (consecutive outputs, one (ky, kz), even kx steps:
  the lines of a band), so R^T k advances by a constant step and the floors, fractions and table
  indices of a whole run are computed in one vectorisable loop;
- the trilinear blend of the four pairs is written as 8-, 4- and 2-wide vector operations
  (`_trilinear`, an LLVM intrinsic: numba leaves the scalar form unvectorised);
- a band is walked plane by plane in kz, so each sample prefetches the table where the sample
  `PREFETCH_PLANES` planes on will be (R^T k moved along R^T e_z): the table's lines arrive before
  the sweep needs them (~15 % of the fill in a search, where the inverse FFT evicts the table).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

OVERSAMPLING = 2
PREFETCH_PLANES = 8  # how far ahead (in kz planes of the band) samples prefetch the table


@dataclass(frozen=True)
class TemplateSpectrum:
    """FFT of a masked template on a box padded at least `OVERSAMPLING` times (to a power of two
    P), origin at the template centre, with its periodic wrap written out (`wrapped`).

    `values` (P + 1, P + 1, P + 1) complex64; `box` the template's edge (voxels); `mask_values`
    the same for a non-spherical mask (None for a spherical one, which needs no rotation).
    """

    values: np.ndarray
    box: int
    mask_values: np.ndarray | None

    @property
    def padded(self) -> int:
        return self.values.shape[0] - 1


def wrapped(spectrum: np.ndarray) -> np.ndarray:
    """A periodic (P, P, P) complex spectrum (z, y, x) with its wrap written out: (P + 1)^3
    complex64, entry [z, y, x] = spectrum[z % P, y % P, x % P]."""
    wrap = np.arange(spectrum.shape[0] + 1) % spectrum.shape[0]
    return np.ascontiguousarray(spectrum[np.ix_(wrap, wrap, wrap)], dtype=np.complex64)


def _gridding_spectrum(volume: np.ndarray) -> np.ndarray:
    """Padded, origin-centred FFT of a cubic volume, pre-divided by trilinear apodisation, `wrapped`."""
    b = volume.shape[0]
    p = 1 << int(np.ceil(np.log2(OVERSAMPLING * b)))  # a power of two: periodic wrap by bit mask
    padded = np.zeros((p, p, p), dtype=np.float64)
    c = b // 2
    padded[:b, :b, :b] = volume
    padded = np.roll(padded, (-c, -c, -c), axis=(0, 1, 2))  # template centre at index 0
    apod = np.sinc(np.fft.fftfreq(p)) ** 2  # argument: distance from the origin / padded box
    padded /= apod[:, None, None] * apod[None, :, None] * apod[None, None, :]
    return wrapped(np.fft.fftn(padded))


def template_spectrum(template: np.ndarray, mask: np.ndarray, *, spherical: bool) -> TemplateSpectrum:
    """Spectrum of the template normalised under `mask` (zero mean, unit variance) and multiplied by it.

    `template` and `mask` are cubic (b, b, b) with their centre at index b // 2.
    """
    t = np.asarray(template, dtype=np.float64)
    m = np.asarray(mask, dtype=np.float64)
    if t.ndim != 3 or len(set(t.shape)) != 1 or t.shape != m.shape:
        raise ValueError(f"template and mask must be cubic and of one shape, got {t.shape} and {m.shape}")
    n = m.sum()
    mean = (t * m).sum() / n
    std = np.sqrt(((t - mean) ** 2 * m).sum() / n)
    if std == 0:
        raise ValueError("the template is constant under its mask")
    masked = (t - mean) / std * m
    return TemplateSpectrum(_gridding_spectrum(masked), t.shape[0], None if spherical else _gridding_spectrum(m))


def _vector(n: int) -> ir.VectorType:
    return ir.VectorType(ir.FloatType(), n)


def _lanes(*index: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(ir.IntType(32), len(index)), list(index))


def _lerp(builder, v, n: int, t):
    """lo + (hi - lo) * t on the two halves (n lanes each) of vector v, t a scalar."""
    lo = builder.shuffle_vector(v, v, _lanes(*range(n)))
    hi = builder.shuffle_vector(v, v, _lanes(*range(n, 2 * n)))
    splat = builder.shuffle_vector(builder.insert_element(ir.Constant(_vector(n), ir.Undefined), t, ir.Constant(ir.IntType(32), 0)), ir.Constant(_vector(n), ir.Undefined), _lanes(*[0] * n))
    return builder.fadd(lo, builder.fmul(builder.fsub(hi, lo, flags=("fast",)), splat, flags=("fast",)), flags=("fast",))


@intrinsic
def _trilinear(typingctx, table, index, dy_offset, dz_offset, dx, dy, dz):
    """(re, im) trilinear blend of a cell of a `wrapped` spectrum viewed as flat float32: its 4 x
    pairs (re, im, re, im) start at index, index + dy_offset, index + dz_offset and
    index + dy_offset + dz_offset; dx, dy, dz the fractions."""
    sig = types.UniTuple(types.float32, 2)(table, index, dy_offset, dz_offset, dx, dy, dz)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        index, dy_offset, dz_offset = args[1:4]
        offsets = (index, builder.add(index, dy_offset), builder.add(index, dz_offset), builder.add(builder.add(index, dy_offset), dz_offset))
        pairs = [builder.load(builder.bitcast(builder.gep(data, [o]), _vector(4).as_pointer()), align=4) for o in offsets]
        z0 = builder.shuffle_vector(pairs[0], pairs[1], _lanes(*range(8)))  # (y0: re im re im, y1: ...)
        z1 = builder.shuffle_vector(pairs[2], pairs[3], _lanes(*range(8)))
        v = builder.shuffle_vector(z0, z1, _lanes(*range(16)))
        v = _lerp(builder, v, 8, args[6])
        v = _lerp(builder, v, 4, args[5])
        v = _lerp(builder, v, 2, args[4])
        parts = [builder.extract_element(v, ir.Constant(ir.IntType(32), i)) for i in (0, 1)]
        return context.make_tuple(builder, signature.return_type, parts)

    return sig, codegen


@intrinsic
def _prefetch(typingctx, array, index):
    """Prefetch (read, into all cache levels) element `index` of a flat array."""
    sig = types.void(array, index)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        byte = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic("llvm.prefetch", (byte,), ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32]))
        builder.call(fn, [builder.bitcast(builder.gep(data, [args[1]]), byte), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@dataclass(frozen=True)
class BandRuns:
    """A list of frequencies (K, 3) cut into runs along x: run r covers list entries start[r] ..
    start[r] + length[r] - 1 with frequencies k0[r] + i (dk[r], 0, 0) (x, y, z, cycles/voxel),
    written to out[flat[r] + i], all with the Parseval multiplicity mult[r]."""

    start: np.ndarray
    length: np.ndarray
    flat: np.ndarray
    k0: np.ndarray
    dk: np.ndarray
    mult: np.ndarray

    def fill(self, rotation: np.ndarray, table: np.ndarray, weight: np.ndarray, vhat: np.ndarray, out: np.ndarray) -> float:
        """`fill_rotated` over these runs: out[flat] = conj(W T(R^T k)) vhat, returns sum mult |W T|^2."""
        return fill_rotated(np.asarray(rotation, dtype=np.float64), table, self.start, self.length, self.flat, self.k0, self.dk, self.mult, weight, vhat, out)


def band_runs(kxyz: np.ndarray, flat: np.ndarray, mult: np.ndarray) -> BandRuns:
    """Runs of `kxyz` (K, 3) float32 (x, y, z) with consecutive output indices `flat` (K,), one
    (ky, kz), one multiplicity `mult` (K,) and even kx steps (1e-6 cycles/voxel)."""
    kxyz = np.asarray(kxyz, dtype=np.float32)
    flat = np.asarray(flat, dtype=np.int64)
    mult = np.asarray(mult, dtype=np.float32)
    if kxyz.ndim != 2 or kxyz.shape[1] != 3 or flat.shape != (kxyz.shape[0],) or mult.shape != flat.shape:
        raise ValueError(f"expected kxyz (K, 3), flat (K,), mult (K,), got {kxyz.shape}, {flat.shape}, {mult.shape}")
    kx = kxyz[:, 0].astype(np.float64)
    step = np.diff(kx)
    joined = (np.diff(flat) == 1) & (kxyz[1:, 1] == kxyz[:-1, 1]) & (kxyz[1:, 2] == kxyz[:-1, 2]) & (mult[1:] == mult[:-1]) & (step > 0)
    joined[1:] &= ~joined[:-1] | (np.abs(step[1:] - step[:-1]) < 1e-6)  # a run keeps one kx step
    start = np.flatnonzero(np.r_[True, ~joined]) if flat.size else np.zeros(0, dtype=np.int64)
    length = np.diff(np.r_[start, flat.size])
    last = start + length - 1
    dk = ((kx[last] - kx[start]) / np.maximum(length - 1, 1)).astype(np.float32)
    return BandRuns(start, length, flat[start], kxyz[start], dk, mult[start].astype(np.float64))


@numba.njit(cache=True, fastmath=True, nogil=True)
def fill_rotated(rotation, table, runs_start, runs_length, runs_flat, runs_k0, runs_dk, runs_mult, weight, vhat, out):
    """out[f] = conj(W T(R^T k)) vhat for every frequency k of the runs (`BandRuns` fields), f its
    output index; returns sum mult |W T|^2 (Parseval).

    `rotation` (3, 3) R; `table` a `wrapped` spectrum; `weight` (K,) W and `vhat` (K,) complex64
    per list entry; `out` complex64, flat.
    """
    p = table.shape[0] - 1
    m = p - 1
    dy_offset = 2 * (p + 1)
    dz_offset = 2 * (p + 1) * (p + 1)
    flat_table = table.reshape(-1).view(np.float32)
    pf = np.float32(p)
    r = rotation.astype(np.float32)
    vf = vhat.view(np.float32)
    of = out.view(np.float32)
    longest = 0
    for i in range(runs_length.size):
        longest = max(longest, runs_length[i])
    index = np.empty(longest, dtype=np.int64)
    ahead = np.empty(longest, dtype=np.int64)
    fraction = np.empty((3, longest), dtype=np.float32)
    fx, fy, fz = fraction[0], fraction[1], fraction[2]
    norm = 0.0
    for run in range(runs_start.size):
        kx, ky, kz = runs_k0[run, 0] * pf, runs_k0[run, 1] * pf, runs_k0[run, 2] * pf
        ax = r[0, 0] * kx + r[1, 0] * ky + r[2, 0] * kz
        ay = r[0, 1] * kx + r[1, 1] * ky + r[2, 1] * kz
        az = r[0, 2] * kx + r[1, 2] * ky + r[2, 2] * kz
        dk = runs_dk[run] * pf
        bx, by, bz = r[0, 0] * dk, r[0, 1] * dk, r[0, 2] * dk
        lead = dk * np.float32(PREFETCH_PLANES)  # planes are as far apart as x steps (cubic boxes)
        ex, ey, ez = r[2, 0] * lead, r[2, 1] * lead, r[2, 2] * lead
        n = runs_length[run]
        for i in range(n):  # vectorised: floors, fractions and table indices of the run
            qx = ax + np.float32(i) * bx
            qy = ay + np.float32(i) * by
            qz = az + np.float32(i) * bz
            gx, gy, gz = np.floor(qx), np.floor(qy), np.floor(qz)
            fx[i] = qx - gx
            fy[i] = qy - gy
            fz[i] = qz - gz
            index[i] = (np.int32(gz) & m) * dz_offset + (np.int32(gy) & m) * dy_offset + (np.int32(gx) & m) * 2
            ahead[i] = (np.int32(np.floor(qz + ez)) & m) * dz_offset + (np.int32(np.floor(qy + ey)) & m) * dy_offset + (np.int32(np.floor(qx + ex)) & m) * 2
        j0 = runs_start[run]
        f0 = runs_flat[run]
        total = np.float32(0.0)
        for i in range(n):
            _prefetch(flat_table, ahead[i])
            tr, ti = _trilinear(flat_table, index[i], dy_offset, dz_offset, fx[i], fy[i], fz[i])
            j = j0 + i
            w = weight[j]
            tr *= w
            ti *= w
            total += tr * tr + ti * ti
            vr, vi = vf[2 * j], vf[2 * j + 1]
            f = 2 * (f0 + i)
            of[f] = tr * vr + ti * vi
            of[f + 1] = tr * vi - ti * vr
        norm += runs_mult[run] * total
    return norm
