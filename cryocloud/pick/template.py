"""Templates for matching: read from MRC / EM maps or built from atomic models, resampled, masked.

Volumes are numpy float32 (z, y, x), cubic, with their centre at index n // 2
(cryocloud.geometry.centre_index). Voxel sizes in Angstrom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cryocloud.atomic import potential_map
from cryocloud.errors import ModelError
from cryocloud.store import is_atomic_model, is_em, read_atomic_model, read_em, read_mrc


def read_map(url: str, *, voxel_size: float | None = None, storage_options: dict | None = None) -> tuple[np.ndarray, float]:
    """A density map (z, y, x) float32 and its voxel size (A) from an MRC (.mrc/.map/.rec) or EM file
    (TOM toolbox / PyTom, `cryocloud.store.read_em`).

    EM files store no voxel size: pass `voxel_size`. It also overrides an MRC header's value.
    """
    if is_em(url):
        if voxel_size is None:
            raise ModelError("voxel_size", "EM files store no voxel size; give the template's voxel size in Angstrom", source=str(url))
        return np.array(read_em(url, storage_options=storage_options), dtype=np.float32), float(voxel_size)
    tomo = read_mrc(url, pixel_size=voxel_size, storage_options=storage_options)
    return np.asarray(tomo.data.values, dtype=np.float32), tomo.pixel_size


def read_template(url: str, voxel_size: float, *, template_voxel_size: float | None = None,
                  storage_options: dict | None = None) -> tuple[np.ndarray, float]:
    """A template's density (z, y, x) float32 and its voxel size (A): an atomic model
    (`cryocloud.store.is_atomic_model`, a local file) rendered at `voxel_size` (the searched
    tomogram's), else a map (`read_map`; `template_voxel_size` gives or overrides its voxel size)."""
    if is_atomic_model(url):
        return map_from_model(url, voxel_size), voxel_size
    return read_map(url, voxel_size=template_voxel_size, storage_options=storage_options)


def map_from_model(path: str, voxel_size: float, *, resolution_a: float | None = None) -> np.ndarray:
    """Coulomb potential (z, y, x) float32 of an atomic model (local mmCIF / PDB) at `voxel_size` (A),
    centroid at the box centre (`cryocloud.atomic.potential_map`), low-passed to `resolution_a` if given."""
    volume = potential_map(read_atomic_model(path), voxel_size)
    if resolution_a is not None:
        from cryocloud.pick.weighting import lowpass

        spectrum = np.fft.rfftn(volume) * lowpass(volume.shape, voxel_size, resolution_a)
        volume = np.fft.irfftn(spectrum, s=volume.shape).astype(np.float32)
    return volume


def resample(volume: np.ndarray, voxel_size: float, target_voxel_size: float) -> np.ndarray:
    """Resample a cubic volume to `target_voxel_size` (A) by cropping / zero-padding its Fourier transform.

    The edge becomes round(n * voxel_size / target_voxel_size) (same physical box); values keep
    their scale (a constant stays the same constant).
    """
    n = volume.shape[0]
    m = int(round(n * voxel_size / target_voxel_size))
    if m < 4:
        raise ModelError("voxel_size", f"resampling {n} voxels of {voxel_size} A to {target_voxel_size} A leaves {m} voxels")
    if m == n:
        return np.asarray(volume, dtype=np.float32)
    spectrum = np.fft.fftshift(np.fft.fftn(volume))
    out = np.zeros((m, m, m), dtype=np.complex128)
    k = min(n, m)
    src = slice(n // 2 - k // 2, n // 2 - k // 2 + k)
    dst = slice(m // 2 - k // 2, m // 2 - k // 2 + k)
    out[dst, dst, dst] = spectrum[src, src, src]
    return (np.fft.ifftn(np.fft.ifftshift(out)).real * (m / n) ** 3).astype(np.float32)


def phase_randomised(volume: np.ndarray, seed: int = 0) -> np.ndarray:
    """The volume with the same Fourier amplitudes and random phases (z, y, x) float32: a template
    with the same power spectrum and no structure (background correction). The mean is kept."""
    v = np.asarray(volume, dtype=np.float64)
    spectrum = np.fft.rfftn(v)
    noise = np.fft.rfftn(np.random.default_rng(seed).normal(size=v.shape))  # Hermitian-consistent phases
    randomised = np.abs(spectrum) * np.exp(1j * np.angle(noise))
    randomised.flat[0] = spectrum.flat[0]
    return np.fft.irfftn(randomised, s=v.shape, axes=tuple(range(v.ndim))).astype(np.float32)


def pad_to_box(volume: np.ndarray, box: int) -> np.ndarray:
    """Centre a cubic volume in a (box, box, box) array (padding with zeros or cropping)."""
    n = volume.shape[0]
    out = np.zeros((box, box, box), dtype=np.float32)
    k = min(n, box)
    src = slice(n // 2 - k // 2, n // 2 - k // 2 + k)
    dst = slice(box // 2 - k // 2, box // 2 - k // 2 + k)
    out[dst, dst, dst] = volume[src, src, src]
    return out


def spherical_mask(box: int, radius: float, soft_edge: float = 2.0) -> np.ndarray:
    """Sphere of `radius` voxels around the box centre with a raised-cosine edge `soft_edge` voxels wide."""
    c = box // 2
    z, y, x = np.ogrid[:box, :box, :box]
    r = np.sqrt((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2)
    return _soft(r - radius, soft_edge)


def _soft(distance: np.ndarray, soft_edge: float) -> np.ndarray:
    if soft_edge <= 0:
        return (distance <= 0).astype(np.float32)
    t = np.clip(distance / soft_edge, 0.0, 1.0)
    return (0.5 * (1 + np.cos(np.pi * t))).astype(np.float32)


def shape_mask(template: np.ndarray, threshold: float | None = None, dilation: float = 2.0, soft_edge: float = 2.0) -> np.ndarray:
    """Non-spherical mask following the template: voxels above `threshold` (default: mean + 1 std),
    largest connected component, dilated by `dilation` voxels, with a raised-cosine edge."""
    threshold = float(template.mean() + template.std()) if threshold is None else threshold
    inside = template > threshold
    labels, n = ndimage.label(inside)
    if n == 0:
        raise ModelError("mask_threshold", f"no template voxel is above {threshold}")
    sizes = ndimage.sum(inside, labels, index=np.arange(1, n + 1))
    inside = labels == 1 + int(np.argmax(sizes))
    distance = ndimage.distance_transform_edt(~inside) - dilation
    return _soft(distance, soft_edge)


@dataclass(frozen=True)
class Template:
    """A template ready for matching: `data` (b, b, b) float32 density at `voxel_size` (A), its
    `mask` (b, b, b) in [0, 1], whether the mask is `spherical`, the mask `radius` (voxels)
    that bounds it (the overlap between sub-volumes) and the `particle_radius` (voxels, see
    `equivalent_radius`): picks closer than twice it would be overlapping particles."""

    data: np.ndarray
    voxel_size: float
    mask: np.ndarray
    spherical: bool
    radius: float
    particle_radius: float

    @property
    def box(self) -> int:
        return self.data.shape[0]


def equivalent_radius(volume: np.ndarray, contour: float = 0.1) -> float:
    """Radius (voxels) of the uniform sphere with the radius of gyration of a density (z, y, x):
    sqrt(5/3) Rg, Rg taken about the box centre over |density| above `contour` x its maximum (the
    contour of the default mask, so noise and blur outside the particle do not count)."""
    magnitude = np.abs(np.asarray(volume, dtype=np.float64))
    weight = np.where(magnitude > contour * magnitude.max(), magnitude, 0.0)
    c = np.asarray(volume.shape) // 2
    r2 = sum((np.arange(n) - ci).reshape([-1 if a == axis else 1 for a in range(3)]) ** 2 for axis, (n, ci) in enumerate(zip(volume.shape, c)))
    return float(np.sqrt(5.0 / 3.0 * (weight * r2).sum() / weight.sum()))


def check_fits(shape_zyx: tuple[int, ...], voxel_size: float, tomogram_shape: tuple[int, ...], tomogram_voxel: float, *, source: str) -> None:
    """ModelError when a template box (`shape_zyx` voxels of `voxel_size` A) spans more Angstrom than
    the tomogram's smallest edge: checked before resampling, which would otherwise allocate it."""
    extent = max(shape_zyx) * voxel_size
    edge = min(tomogram_shape) * tomogram_voxel
    if extent > edge:
        raise ModelError(
            "template", f"{max(shape_zyx)} voxels of {voxel_size:g} A ({extent:g} A) is larger than the tomogram's smallest edge "
            f"{min(tomogram_shape)} voxels of {tomogram_voxel:g} A ({edge:g} A); check the template's voxel size", source=source,
        )


def check_template(volume: np.ndarray, *, source: str | None = None, field: str = "template") -> np.ndarray:
    """`volume` as float32 when it is a usable map: cubic (b, b, b), finite and not constant; a
    ModelError naming `source` and `field` otherwise."""
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1 or vol.shape[0] < 2:
        raise ModelError(field, f"expected a cubic volume (b, b, b), got shape {vol.shape}", source=source)
    if not np.all(np.isfinite(vol)):
        raise ModelError(field, "contains NaN or infinite values; expected finite numbers", source=source)
    if vol.min() == vol.max():
        raise ModelError(field, f"is constant (every voxel {float(vol.flat[0]):g}); expected a density with contrast", source=source)
    return vol


def prepare_template(
    volume: np.ndarray,
    voxel_size: float,
    target_voxel_size: float,
    *,
    mask_radius_a: float | None = None,
    non_spherical: bool = False,
    invert: bool = False,
    soft_edge: float = 2.0,
    source: str | None = None,
) -> Template:
    """Resample a map to the tomogram's voxel size, invert its contrast if asked, and mask it.

    The spherical mask radius defaults to the radius that holds the template's density above
    10 % of its maximum plus 2 voxels; the box is cropped / padded to fit the mask with its edge.
    A map that is not cubic, not finite or constant (see `check_template`), or constant under its
    mask, is a ModelError naming `source` (the template's file).
    """
    vol = check_template(volume, source=source)
    vol = check_template(resample(vol, voxel_size, target_voxel_size), source=source)  # detail finer than the new voxels is lost
    if invert:
        vol = -vol
    if mask_radius_a is None:
        c = vol.shape[0] // 2
        z, y, x = np.nonzero(np.abs(vol) > 0.1 * np.abs(vol).max())
        radius = float(np.sqrt((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2).max()) + 2.0
    else:
        radius = mask_radius_a / target_voxel_size
    box = 2 * int(np.ceil(radius + soft_edge + 1))
    vol = pad_to_box(vol, box)
    if non_spherical:
        mask = shape_mask(vol, soft_edge=soft_edge)
        c = box // 2
        z, y, x = np.nonzero(mask > 0)
        spherical, radius = False, float(np.sqrt((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2).max())
    else:
        mask = spherical_mask(box, radius, soft_edge)
        spherical, radius = True, radius + soft_edge
    if np.ptp(vol[mask > 0]) == 0:
        raise ModelError("template" if mask_radius_a is None else "mask_radius",
                         f"the template is constant under its mask ({radius * target_voxel_size:g} A); expected a mask around the density", source=source)
    return Template(vol, target_voxel_size, mask, spherical, radius, equivalent_radius(vol))
