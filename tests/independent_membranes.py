"""An independent membrane phantom for `cryocloud.segment`: written from the physics with scikit-image and
scipy only (no `cryocloud.simulate` / `project` / `reconstruct`).

Specimen (z, y, x), voxels of `PIXEL_SIZE_A`: bilayers, each two Gaussian sheets (leaflets, s.d.
`LEAFLET_SD_A`) `LEAFLET_GAP_A` apart, as spherical vesicles and one plane whose normal is
`PLANE_TILT_DEG` from x towards z (so it is seen edge-on near tilt 0 and is never in the wedge); protein
blobs as Gaussian spheres of `BLOB_SD_A`. Every density is added, then the map is negated (cryo-ET:
density dark). Each leaflet is the pixel-averaged profile (s.d. sqrt(sd^2 + pixel^2 / 12)).

Imaging: single-axis tilt about y, -60..60 deg in 3 deg steps: every XZ slice is projected with
`skimage.transform.radon` (theta 0 = beam along z), Gaussian noise is added per tilt at the given SNR
(variance of that tilt's projections over all slices / noise variance), and each slice is reconstructed
with `skimage.transform.iradon` (ramp filter), the slab cut back to its thickness.

Truth: `membrane` = voxels within 25 A of a bilayer mid-surface (as `cryocloud.segment.evaluate` expects),
`blobs` = voxels within 2 s.d. of a blob centre. The plane's area inside the volume is `plane_area_a2`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.transform import iradon, radon

PIXEL_SIZE_A = 10.0
SHAPE = (64, 128, 128)
TILTS_DEG = np.arange(-60.0, 60.0 + 1e-6, 3.0)
LEAFLET_SD_A = 6.0
LEAFLET_GAP_A = 40.0
LEAFLET_DENSITY = 1.0
BLOB_SD_A = 25.0
BLOB_DENSITY = 1.5
N_BLOBS = 30
PLANE_TILT_DEG = 20.0
TRUTH_HALF_A = 25.0


@dataclass(frozen=True)
class MembranePhantom:
    """Tomogram (z, y, x) float32 and its truth; lengths in A, centres (z, y, x) in voxels."""

    tomogram: np.ndarray
    membrane: np.ndarray
    blobs: np.ndarray
    plane: np.ndarray  # the planar membrane's truth voxels (a subset of `membrane`)
    vesicle_centres: np.ndarray
    vesicle_radii_a: np.ndarray
    blob_centres: np.ndarray
    pixel_size_a: float = PIXEL_SIZE_A
    tilt_range_deg: tuple[float, float] = (float(TILTS_DEG[0]), float(TILTS_DEG[-1]))

    @property
    def plane_area_a2(self) -> float:
        """Mid-surface area of the plane inside the volume (truth voxels / thickness)."""
        return float(self.plane.sum()) * PIXEL_SIZE_A**3 / (2 * TRUTH_HALF_A)


def _bilayer(distance_a: np.ndarray) -> np.ndarray:
    """Two pixel-averaged Gaussian leaflets at +-gap/2 of a signed distance (A) from the mid-surface."""
    sd = np.sqrt(LEAFLET_SD_A**2 + PIXEL_SIZE_A**2 / 12)
    half = LEAFLET_GAP_A / 2
    return LEAFLET_DENSITY * (np.exp(-0.5 * ((distance_a - half) / sd) ** 2) + np.exp(-0.5 * ((distance_a + half) / sd) ** 2))


def specimen(seed: int, shape: tuple[int, int, int] = SHAPE):
    """(density, membrane truth, plane truth, blob truth, vesicle centres, radii (A), blob centres)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32) * PIXEL_SIZE_A  # (3, z, y, x) in A
    extent = np.array(shape) * PIXEL_SIZE_A
    density = np.zeros(shape, np.float32)
    distance = np.full(shape, np.inf, np.float32)
    # the plane: normal (z, y, x) PLANE_TILT_DEG from x towards z, through a point near x = 3/4 of the width
    t = np.radians(PLANE_TILT_DEG)
    normal = np.array([np.sin(t), 0.0, np.cos(t)])
    origin = np.array([extent[0] / 2, extent[1] / 2, extent[2] * 0.78])
    plane_d = np.tensordot(normal, grid - origin[:, None, None, None], axes=1)
    density += _bilayer(plane_d)
    plane = np.abs(plane_d) <= TRUTH_HALF_A
    # vesicles in the other 2/3 of x, not touching each other or the plane
    centres, radii, tries = [], [], 0
    while len(centres) < 3:  # radii 120-200 A in the free 2/3 of x; start again after a crowded draw
        tries += 1
        if tries % 1000 == 0:
            centres, radii = [], []
        r = rng.uniform(120.0, 200.0)
        c = np.array([extent[0] / 2 + rng.uniform(-40, 40), rng.uniform(r + 60, extent[1] - r - 60), rng.uniform(r + 60, extent[2] * 0.62 - r)])
        if all(np.linalg.norm(c - c2) > r + r2 + 80 for c2, r2 in zip(centres, radii)):
            centres.append(c)
            radii.append(r)
    for c, r in zip(centres, radii):
        d = np.sqrt(((grid - c[:, None, None, None]) ** 2).sum(axis=0)) - r
        density += _bilayer(d)
        distance = np.minimum(distance, np.abs(d))
    membrane = plane | (distance <= TRUTH_HALF_A)
    # protein blobs: away from the membranes (centre beyond 2.5 s.d. + the bilayer's half thickness)
    blobs = np.zeros(shape, bool)
    blob_centres = []
    near_membrane = np.minimum(distance, np.abs(plane_d))
    while len(blob_centres) < N_BLOBS:
        c = rng.uniform([2 * BLOB_SD_A] * 3, extent - 2 * BLOB_SD_A)
        i = tuple(np.clip((c / PIXEL_SIZE_A).round().astype(int), 0, np.array(shape) - 1))
        if near_membrane[i] < 2.5 * BLOB_SD_A + TRUTH_HALF_A:
            continue
        if any(np.linalg.norm(c - b) < 4 * BLOB_SD_A for b in blob_centres):
            continue
        blob_centres.append(c)
        r2 = ((grid - c[:, None, None, None]) ** 2).sum(axis=0)
        density += BLOB_DENSITY * np.exp(-0.5 * r2 / BLOB_SD_A**2)
        blobs |= r2 <= (2 * BLOB_SD_A) ** 2
    return (-density, membrane, plane, blobs, np.array(centres) / PIXEL_SIZE_A, np.array(radii),
            np.array(blob_centres) / PIXEL_SIZE_A)


def tilt_series_and_back(density: np.ndarray, snr: float, seed: int) -> np.ndarray:
    """Project every XZ slice (radon, -60..60 deg), add noise per tilt at `snr`, reconstruct (iradon, ramp)."""
    nz, ny, nx = density.shape
    size = max(nz, nx)
    pad = (size - nz) // 2
    sinograms = []
    for y in range(ny):
        section = np.zeros((size, size), np.float64)
        section[pad : pad + nz, :nx] = density[:, y, :]
        sinograms.append(radon(section, theta=TILTS_DEG, circle=False))
    stack = np.stack(sinograms)  # (y, detector, tilt)
    rng = np.random.default_rng(10_000 + seed)
    signal_var = stack.var(axis=(0, 1))  # per tilt
    stack = stack + rng.standard_normal(stack.shape) * np.sqrt(signal_var / snr)[None, None, :]
    out = np.empty(density.shape, np.float32)
    for y in range(ny):
        section = iradon(stack[y], theta=TILTS_DEG, filter_name="ramp", circle=False, output_size=size)
        out[:, y, :] = section[pad : pad + nz, :nx]
    return out


def membrane_phantom(seed: int, snr: float = 0.2, shape: tuple[int, int, int] = SHAPE) -> MembranePhantom:
    """The phantom for one noise (and specimen) seed at a per-tilt SNR."""
    density, membrane, plane, blobs, centres, radii, blob_centres = specimen(seed, shape)
    tomogram = tilt_series_and_back(density, snr, seed)
    return MembranePhantom(tomogram, membrane, blobs, plane, centres, radii, blob_centres)
