"""Particles reconstructed directly from their tilt images (sub-tilt extraction), CTF-corrected.

Each particle p has one small image per tilt f (b x b pixels, the particle's projection near
index b // 2) and a 3x3 matrix M_pf that maps tomogram-frame (x, y, z) to the image frame (x', y',
beam z'). With the particle's pose (R_p, s_p) the reference-frame frequency q appears in image f at
k' = M_pf R_p q (Fourier slice theorem). The reconstruction gathers, for every frequency q of the
b^3 output grid, the tilt images' spectra on the slices within one frequency step:

    num(q) += w_pf s(k'_z) D_pf(k') C_pf(k') I_pf(k'_x, k'_y) e^{2 pi i k' . o_pf}
    den(q) += w_pf s(k'_z) D_pf(k')^2 C_pf(k')^2,       s(k_z) = max(0, 1 - |k_z| b)

with C the CTF at the particle's own defocus (tilt defocus + depth of field; not applied again
when the images are CTF-premultiplied, as RELION's are), D the dose weight at the tilt's
mid-exposure, w the per-tilt weight (visibility x CTF scale), o_pf the particle's offset from the
image centre (pixels, x', y'). The map is F^-1[num / (den + eps)] (`align.map_from_spectra`): a
Wiener-filtered direct Fourier inversion with the same slice model as the missing wedge.

Image spectra are sampled bilinearly on a 2x zero-padded FFT pre-divided by the bilinear
apodisation (gridding), so samples between grid points are accurate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import dask
import dask.array as da
import numba
import numpy as np

from cryocloud.average.align import Poses, map_from_spectra
from cryocloud.average.relion_particles import stack_images
from cryocloud.errors import ModelError
from cryocloud.geometry import rotation_2d, tilt_rotation
from cryocloud.model import Microscope, TiltSeries
from cryocloud.optics import voltage_dose_scale, wavelength_a
from cryocloud.pick.score import half_shape


@dataclass(frozen=True)
class TiltImages:
    """Per particle and tilt: `images` (N, T, b, b) float32, `matrices` (N, T, 3, 3) tomogram ->
    image frame, `offsets_px` (N, T, 2) particle centre - image centre (x', y' pixels),
    `defocus_u`, `defocus_v` (N, T) A at the particle, `astigmatism_deg` (N, T), `dose` (N, T)
    e/A^2 at mid-exposure, `weight` (N, T) (0 = unused); `pixel_size_a`, `microscope`,
    `ctf_premultiplied`."""

    images: np.ndarray
    matrices: np.ndarray
    offsets_px: np.ndarray
    defocus_u: np.ndarray
    defocus_v: np.ndarray
    astigmatism_deg: np.ndarray
    dose: np.ndarray
    weight: np.ndarray
    pixel_size_a: float
    microscope: Microscope
    ctf_premultiplied: bool

    @property
    def box(self) -> int:
        return self.images.shape[-1]

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index) -> "TiltImages":
        fields = ("images", "matrices", "offsets_px", "defocus_u", "defocus_v", "astigmatism_deg", "dose", "weight")
        return replace(self, **{f: getattr(self, f)[index] for f in fields})


def image_spectrum(image: np.ndarray) -> np.ndarray:
    """2x zero-padded, centre-at-origin FFT (2b, 2b) complex64 of a (b, b) image, divided by the
    bilinear-interpolation apodisation (sinc^2 per axis)."""
    b = image.shape[0]
    p = 2 * b
    padded = np.zeros((p, p), dtype=np.float64)
    padded[:b, :b] = image - image.mean()
    padded = np.roll(padded, (-(b // 2), -(b // 2)), axis=(0, 1))
    apod = np.sinc(np.fft.fftfreq(p)) ** 2
    return np.fft.fft2(padded / (apod[:, None] * apod[None, :])).astype(np.complex64)


@numba.njit(cache=True, nogil=True, fastmath=True)
def _gather(spec, m, kxyz, box, off_x, off_y, ctf_par, dose, weight, premultiplied, num, den):
    """Accumulate one tilt image into num / den on the frequencies kxyz (K, 3) (see module docstring).

    ctf_par = (defocus_u, defocus_v, astig_rad, lambda, cs_a, amplitude, pixel_a); dose in e/A^2 (300 kV equivalent).
    """
    p = spec.shape[0]
    mean_df = 0.5 * (ctf_par[0] + ctf_par[1])
    half_df = 0.5 * (ctf_par[0] - ctf_par[1])
    lam, cs, amp, px = ctf_par[3], ctf_par[4], ctf_par[5], ctf_par[6]
    amp_s = np.sqrt(1.0 - amp * amp)
    for j in range(kxyz.shape[0]):
        kx, ky, kz = kxyz[j, 0], kxyz[j, 1], kxyz[j, 2]
        qz = m[2, 0] * kx + m[2, 1] * ky + m[2, 2] * kz
        s = 1.0 - abs(qz) * box
        if s <= 0.0:
            continue
        qx = m[0, 0] * kx + m[0, 1] * ky + m[0, 2] * kz
        qy = m[1, 0] * kx + m[1, 1] * ky + m[1, 2] * kz
        # bilinear sample of the padded spectrum at (qx, qy) cycles / pixel
        gx, gy = qx * p, qy * p
        fx, fy = np.floor(gx), np.floor(gy)
        dx, dy = gx - fx, gy - fy
        x0, y0 = int(fx) % p, int(fy) % p
        x1, y1 = (x0 + 1) % p, (y0 + 1) % p
        v = (spec[y0, x0] * (1 - dx) + spec[y0, x1] * dx) * (1 - dy) + (spec[y1, x0] * (1 - dx) + spec[y1, x1] * dx) * dy
        ang = 2.0 * np.pi * (qx * off_x + qy * off_y)
        v = v * complex(np.cos(ang), np.sin(ang))
        k2 = (qx * qx + qy * qy) / (px * px)
        df = mean_df + half_df * np.cos(2.0 * (np.arctan2(qy, qx) - ctf_par[2]))
        chi = np.pi * lam * df * k2 - 0.5 * np.pi * cs * lam * lam * lam * k2 * k2
        c = -amp_s * np.sin(chi) - amp * np.cos(chi)
        k = np.sqrt(k2)
        d = 1.0
        if dose > 0 and k > 0:
            d = np.exp(-dose / (2.0 * (0.245 * k ** (-1.665) + 2.81)))
        if not premultiplied:
            v = v * c
        num[j] += weight * s * d * v
        den[j] += weight * s * d * d * c * c


def _frequencies(box: int) -> np.ndarray:
    kz = np.fft.fftfreq(box)[:, None, None]
    ky = np.fft.fftfreq(box)[None, :, None]
    kx = np.fft.rfftfreq(box)[None, None, :]
    return np.stack(np.broadcast_arrays(kx, ky, kz), axis=-1).reshape(-1, 3).astype(np.float64)


def _accumulate(ti: TiltImages, rotations: np.ndarray, shifts_a: np.ndarray, box: int):
    kxyz = _frequencies(box)
    num = np.zeros(kxyz.shape[0], dtype=np.complex128)
    den = np.zeros(kxyz.shape[0], dtype=np.float64)
    mic = ti.microscope
    lam = wavelength_a(mic.voltage_kv)
    dose_scale = voltage_dose_scale(mic.voltage_kv)
    for p in range(len(ti)):
        for f in range(ti.images.shape[1]):
            if ti.weight[p, f] <= 0:
                continue
            m = ti.matrices[p, f] @ rotations[p]
            shift_img = ti.matrices[p, f] @ (shifts_a[p] / ti.pixel_size_a)
            par = np.array([ti.defocus_u[p, f], ti.defocus_v[p, f], np.deg2rad(ti.astigmatism_deg[p, f]), lam, mic.cs_mm * 1e7, mic.amplitude_contrast, ti.pixel_size_a])
            _gather(
                image_spectrum(np.asarray(ti.images[p, f], dtype=np.float64)), m, kxyz, box,
                float(ti.offsets_px[p, f, 0] + shift_img[0]), float(ti.offsets_px[p, f, 1] + shift_img[1]),
                par, float(ti.dose[p, f] * dose_scale), float(ti.weight[p, f]), ti.ctf_premultiplied, num, den,
            )
    return num, den


def reconstruct_spectra(ti: TiltImages, poses: Poses, *, symmetry_ops: np.ndarray | None = None, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """num, den on the rfft grid (b, b, b // 2 + 1) of the particles at `poses` (one Dask task per batch).

    `poses.shifts_a` are the particles' centres relative to the image-centre positions (tomogram frame, A).
    """
    if len(poses) != len(ti):
        raise ModelError("poses", f"got {len(poses)} poses for {len(ti)} particles")
    box = ti.box
    ops = np.eye(3)[None] if symmetry_ops is None else symmetry_ops
    tasks = []
    for op in ops:
        rots = poses.rotations @ op
        for i in range(0, len(ti), batch_size):
            sl = slice(i, i + batch_size)
            tasks.append(dask.delayed(_accumulate)(ti.subset(sl), rots[sl], poses.shifts_a[sl], box))
    parts = dask.compute(*tasks)
    shape = half_shape((box,) * 3)
    return sum(p[0] for p in parts).reshape(shape), sum(p[1] for p in parts).reshape(shape)


def reconstruct(ti: TiltImages, poses: Poses, *, symmetry_ops: np.ndarray | None = None) -> np.ndarray:
    """The CTF-corrected average (b, b, b) float32 of the particles at `poses`, centre at b // 2."""
    num, den = reconstruct_spectra(ti, poses, symmetry_ops=symmetry_ops)
    return map_from_spectra(num, den, ti.box)


def from_relion(rp, stacks: np.ndarray) -> TiltImages:
    """TiltImages of a `RelionParticles` set and its 2D stacks (N, T, b, b) as read from the files
    by the caller (point reflected here into the frame of the projection matrices,
    `relion_particles.stack_images`); reconstruct with the particles' rotations."""
    n = len(rp.particles)
    names = rp.particles.tomogram.astype(str)
    t_max = max(ts.n_tilts for ts in rp.tomograms.values())
    if stacks.shape[:2] != (n, t_max) and stacks.shape[0] != n:
        raise ModelError("stacks", f"expected ({n}, {t_max}, b, b), got {stacks.shape}")
    shape = (n, stacks.shape[1])
    mats = np.zeros(shape + (3, 3))
    du, dv, ang, dose, weight = (np.zeros(shape) for _ in range(5))
    for p, name in enumerate(names):
        ts = rp.tomograms[name]
        t = ts.n_tilts
        mats[p, :t] = ts.projections[:, :3, :3]
        depth = ts.hand * (mats[p, :t] @ (rp.particles.positions[p] - ts.extent_a / 2))[:, 2]
        du[p, :t] = ts.defocus_u + depth
        dv[p, :t] = ts.defocus_v + depth
        ang[p, :t] = ts.defocus_angle
        dose[p, :t] = ts.pre_exposure + 0.5 * ts.dose_per_tilt
        weight[p, :t] = rp.visible[p, :t] * ts.ctf_scale
    return TiltImages(
        stack_images(np.asarray(stacks, dtype=np.float32)), mats, np.zeros(shape + (2,)), du, dv, ang, dose, weight,
        rp.pixel_size_a, next(iter(rp.tomograms.values())).microscope, rp.ctf_premultiplied,
    )


def _cut_tilt(image: np.ndarray, corners: np.ndarray, box: int) -> np.ndarray:
    """Patches (N, b, b) of one tilt image at (y, x) `corners`; outside pixels get the image mean."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img[0]
    padded = np.pad(img, box, mode="constant", constant_values=float(img.mean()))
    out = np.empty((corners.shape[0], box, box), dtype=np.float32)
    for i, (y, x) in enumerate(corners + box):
        out[i] = padded[y : y + box, x : x + box]
    return out


def extract_subtilts(ts: TiltSeries, positions_a: np.ndarray, volume_shape_zyx: tuple[int, int, int], box: int) -> tuple[da.Array, TiltImages]:
    """Patches around each particle's projection in every tilt of `ts` and their geometry.

    `positions_a` (N, 3) x, y, z in A in the frame of a tomogram of `volume_shape_zyx` voxels at the
    tilt series' pixel size (projection centre at the volume centre, `cryocloud.geometry`). Raw
    images with a tilt axis angle and per-tilt shifts are handled in the matrices and offsets.
    Patches are normalised to contrast (patch / patch mean - 1). Returns the lazy patches (N, T, b,
    b), one task per tilt, and TiltImages holding them as a numpy array once computed by the caller
    (its `images` field is left empty: pass the computed patches via `dataclasses.replace`).
    """
    pos = np.asarray(positions_a, dtype=np.float64).reshape(-1, 3)
    px = ts.pixel_size
    n_t, ny, nx = ts.data.shape
    centre = np.array([volume_shape_zyx[2] // 2, volume_shape_zyx[1] // 2, volume_shape_zyx[0] // 2]) * px
    rel = pos - centre
    shifts = np.stack([ts.per_tilt("shift_x") if ts.per_tilt("shift_x") is not None else np.zeros(n_t),
                       ts.per_tilt("shift_y") if ts.per_tilt("shift_y") is not None else np.zeros(n_t)], axis=1)
    axis = rotation_2d(ts.tilt_axis_angle)
    in_plane = np.eye(3)
    in_plane[:2, :2] = axis
    mats = np.stack([in_plane @ tilt_rotation(t) for t in ts.tilt_angles])  # (T, 3, 3) tomogram -> raw image
    xy = np.einsum("tij,nj->nti", mats[:, :2], rel) + shifts[None]  # (N, T, 2) A from the image centre
    pix = xy / px + np.array([nx // 2, ny // 2])
    nearest = np.rint(pix).astype(np.int64)
    offsets = pix - nearest
    corners = nearest[..., ::-1] - box // 2  # (N, T, 2) (y, x)
    data = ts.data.data if isinstance(ts.data.data, da.Array) else da.from_array(np.asarray(ts.data.data), chunks=(1, ny, nx))
    data = data.rechunk((1, ny, nx))
    tiles = [da.from_delayed(dask.delayed(_cut_tilt)(data[f], corners[:, f], box), (pos.shape[0], box, box), dtype=np.float32) for f in range(n_t)]
    patches = da.stack(tiles, axis=1)
    patches = patches / patches.mean(axis=(2, 3), keepdims=True) - 1.0
    du = ts.per_tilt("defocus_u")
    if du is None:
        raise ModelError("defocus_u", "per-tilt defocus is needed for CTF-corrected sub-tilt reconstruction", source=str(ts.data.name))
    dv = ts.per_tilt("defocus_v") if ts.per_tilt("defocus_v") is not None else du
    astig = ts.per_tilt("astigmatism_angle") if ts.per_tilt("astigmatism_angle") is not None else np.zeros(n_t)
    depth = np.einsum("tj,nj->nt", mats[:, 2], rel)  # z' (A) towards the source
    dose = np.broadcast_to(ts.per_tilt("pre_exposure") + 0.5 * ts.per_tilt("exposure"), depth.shape)
    geometry = TiltImages(
        np.zeros((pos.shape[0], n_t, 0, 0), dtype=np.float32), np.broadcast_to(mats, (pos.shape[0], n_t, 3, 3)).copy(), offsets,
        du[None] - depth, dv[None] - depth, np.broadcast_to(astig, depth.shape).copy(), dose.copy(), np.ones(depth.shape),
        px, ts.microscope, False,
    )
    return patches, geometry


def from_relion_tilt_series(rp, tilt_series: dict[str, TiltSeries], box: int) -> TiltImages:
    """TiltImages of a `RelionParticles` set without 2D stacks (picks): patches of `box` pixels cut around every
    particle in its tilt series (`tilt_series` by rlnTomoName, as `relion_particles.tilt_series_of` builds them),
    computed here. Defocus at the particle with the set's rlnTomoHand (defocus + hand z'), weights visibility x
    rlnCtfScalefactor; tilt series with fewer tilts than the longest are padded with weight 0."""
    names = rp.particles.tomogram.astype(str)
    n, t_max = len(names), max(ts.n_tilts for ts in tilt_series.values())
    images = np.zeros((n, t_max, box, box), dtype=np.float32)
    mats = np.tile(np.eye(3), (n, t_max, 1, 1))
    offsets, du, dv, ang, dose, weight = (np.zeros((n, t_max) + tail) for tail in ((2,), (), (), (), (), ()))
    for name in np.unique(names):
        rel, ts = rp.tomograms[name], tilt_series[name]
        sel = np.flatnonzero(names == name)
        shape_zyx = tuple(round(v) for v in (rel.extent_a / rel.pixel_size_a)[::-1])
        patches, geo = extract_subtilts(ts, rp.particles.positions[sel], shape_zyx, box)
        t = ts.n_tilts
        tilt_du, tilt_dv = ts.per_tilt("defocus_u")[None], ts.per_tilt("defocus_v")[None]
        images[sel, :t] = np.asarray(dask.compute(patches)[0], dtype=np.float32)
        mats[sel, :t], offsets[sel, :t], ang[sel, :t], dose[sel, :t] = geo.matrices, geo.offsets_px, geo.astigmatism_deg, geo.dose
        du[sel, :t] = tilt_du + rel.hand * (tilt_du - geo.defocus_u)  # extract_subtilts gives defocus - z'
        dv[sel, :t] = tilt_dv + rel.hand * (tilt_dv - geo.defocus_v)
        weight[sel, :t] = rp.visible[sel, :t] * rel.ctf_scale[None]
    first = next(iter(tilt_series.values()))
    return TiltImages(images, mats, offsets, du, dv, ang, dose, weight, first.pixel_size, first.microscope, False)
