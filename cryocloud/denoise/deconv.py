"""CTF deconvolution filter of Warp / tom_deconv (Tegunov; IsoNet's "deconv"), tiled with overlap.

For a spatial frequency k given as a fraction of Nyquist (0..1, clipped at 1 in the corners of
the 3D spectrum):

    highpass(k) = 1 - cos(min(1, k / highpass_nyquist) pi)
    snr(k)      = exp(-k snr_falloff 100 / pixel_size_A) 10^(3 strength) highpass(k) + 1e-6
    wiener(k)   = ctf(k) / (ctf(k)^2 + 1 / snr(k))

with ctf(k) the 1D CTF at the tomogram's defocus (`cryocloud.optics`), |ctf| when the data are
already phase flipped. Sign: tom_deconv's CTF is positive at low frequency, i.e. minus the
`cryocloud.optics` CTF (which is negative there for underfocus); with that sign the filter keeps
the tomogram's contrast (protein dark stays dark) while the lobes beyond the first CTF zero are
flipped back into phase with the first.

The filter is applied per cubic tile with an overlap of `depth` voxels (`tiling.map_tiles`);
its real-space kernel decays within a few CTF periods, so the overlap hides the tile borders.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.fft

from cryocloud.errors import ModelError
from cryocloud.model import Microscope, Tomogram
from cryocloud.optics import ctf_1d
from cryocloud.denoise.tiling import map_tiles

DEFOCUS_ATTR = "defocus_a"


@dataclass(frozen=True)
class DeconvSettings:
    """Parameters of the deconvolution filter (Warp's names and defaults).

    strength: overall strength, 10^(3 strength) is the SNR at low frequency (1 ~ SNR 1000);
    snr_falloff: how fast the SNR falls with frequency (1.0 - 1.2 usual);
    highpass_nyquist: fraction of Nyquist below which the low frequencies are damped;
    phase_flipped: the data were CTF-corrected by phase flipping (use |ctf|);
    phase_shift_deg: phase-plate phase shift (deg).
    """

    strength: float = 1.0
    snr_falloff: float = 1.0
    highpass_nyquist: float = 0.02
    phase_flipped: bool = False
    phase_shift_deg: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.highpass_nyquist <= 1:
            raise ModelError("highpass_nyquist", f"expected a fraction of Nyquist in (0, 1], got {self.highpass_nyquist}")
        if self.snr_falloff < 0:
            raise ModelError("snr_falloff", f"expected a non-negative number, got {self.snr_falloff}")


def wiener_response(
    k_nyquist: np.ndarray, pixel_size_a: float, defocus_a: float, microscope: Microscope, settings: DeconvSettings
) -> np.ndarray:
    """Filter value at frequencies `k_nyquist` (fraction of Nyquist, 0..1) for `defocus_a` (A, underfocus > 0)."""
    k = np.clip(np.asarray(k_nyquist, dtype=np.float64), 0.0, 1.0)
    s = settings
    highpass = 1.0 - np.cos(np.minimum(1.0, k / s.highpass_nyquist) * np.pi)
    snr = np.exp(-k * s.snr_falloff * 100.0 / pixel_size_a) * 10.0 ** (3.0 * s.strength) * highpass + 1e-6
    ctf = -ctf_1d(
        k * 0.5 / pixel_size_a, defocus_a, voltage_kv=microscope.voltage_kv, cs_mm=microscope.cs_mm,
        amplitude_contrast=microscope.amplitude_contrast, phase_shift_rad=np.deg2rad(s.phase_shift_deg),
    )
    if s.phase_flipped:
        ctf = np.abs(ctf)
    return ctf / (ctf * ctf + 1.0 / snr)


def nyquist_fraction_grid(shape: tuple[int, int, int]) -> np.ndarray:
    """|k| as a fraction of Nyquist on the rfftn grid of `shape` (z, y, x)."""
    kz = np.fft.fftfreq(shape[0])[:, None, None]
    ky = np.fft.fftfreq(shape[1])[None, :, None]
    kx = np.fft.rfftfreq(shape[2])[None, None, :]
    return np.sqrt(kz * kz + ky * ky + kx * kx) / 0.5


def filter_block(block: np.ndarray, pixel_size_a: float, defocus_a: float, microscope: Microscope, settings: DeconvSettings) -> np.ndarray:
    """Deconvolve one in-memory block (z, y, x); float32 out."""
    response = wiener_response(nyquist_fraction_grid(block.shape), pixel_size_a, defocus_a, microscope, settings)
    spectrum = scipy.fft.rfftn(np.asarray(block, dtype=np.float32), workers=1)
    return scipy.fft.irfftn(spectrum * response.astype(np.float32), s=block.shape, workers=1).astype(np.float32)


def tomogram_defocus(tomo: Tomogram) -> float:
    """Defocus (A) recorded on the tomogram (attribute `defocus_a`), or a ModelError asking for it."""
    value = tomo.data.attrs.get(DEFOCUS_ATTR)
    if value is None:
        raise ModelError("defocus", "is not recorded on the tomogram; give the defocus in Angstrom (underfocus > 0)")
    return float(value)


def deconvolve(
    tomo: Tomogram,
    settings: DeconvSettings = DeconvSettings(),
    *,
    defocus_a: float | None = None,
    tile: int = 128,
    depth: int = 32,
) -> Tomogram:
    """Lazy CTF deconvolution of a tomogram (z, y, x); returns a Tomogram chunked in `tile` cubes.

    defocus_a: defocus (A, underfocus > 0), default the tomogram's `defocus_a` attribute;
    tile / depth: tile edge and overlap (voxels) of the chunked filter.
    """
    defocus = tomogram_defocus(tomo) if defocus_a is None else float(defocus_a)
    if not np.isfinite(defocus) or defocus <= 0:
        raise ModelError("defocus", f"expected a positive underfocus in Angstrom, got {defocus_a}")
    px = tomo.pixel_size
    out = map_tiles(
        tomo.data.data, lambda b: filter_block(b, px, defocus, tomo.microscope, settings), tile=tile, depth=depth
    )
    result = tomo.with_data(out)
    result.data.attrs.update({DEFOCUS_ATTR: defocus, "denoise": {"method": "deconv", "defocus_a": defocus, **vars(settings)}})
    return replace(result, data=result.data.rename(f"{tomo.data.name or 'tomogram'}_deconv"))
