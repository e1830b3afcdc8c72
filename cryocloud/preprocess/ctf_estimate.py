"""CTF estimation per tilt image, CTFFIND4-like, aware of the defocus gradient of tilted images.

Per tilt (one Dask task per tilt):
1. Spectra: the image (y, x) is cut into overlapping square tiles of `box` pixels; each tile's
   local defocus offset is delta = x' tan(t), x' its centre's distance from the tilt axis
   (geometry.py: df(x') = df0 + x' tan t in the aligned frame; in raw images the axis lies at
   `tilt_axis_angle` ccw from image y, and `shift_x/shift_y` move it off the centre). Tiles
   with nearly the same offset are grouped and their periodograms averaged; amplitude spectra
   (square root of the power) are used.
2. 1D search: rotational averages of the amplitude, binned finely in k^2 (where Thon rings are
   periodic), within the band [1/min_resolution_a, 1/max_resolution_a]. For each defocus of a
   grid, data and model CTF^2 (at each group's df + delta) are both high-passed by subtracting
   their running mean over two ring periods of that defocus (background removal that treats data
   and model alike), the data divided by its local RMS (envelope); the score is their Pearson
   correlation (all groups together). The best grid point is polished by a bounded scalar search.
3. Background for 2D: the same running mean at the 1D defocus, interpolated to every pixel of
   the band, is subtracted from the 2D spectra, which are divided by their local RMS.
4. 2D refinement: Nelder-Mead over (mean defocus, astigmatism vector (a cos 2 theta, a sin 2 theta))
   maximising the same correlation on the 2D half-plane spectra -> defocus U >= V and the angle
   of U (deg ccw from +x, as CTFFIND4).
5. Series: every tilt's 1D score curve over the full defocus range. A tilt whose curve has a
   clear peak (`CLEAR_PEAK_Z` robust standard deviations above the curve's median) keeps its own
   full-range defocus, whatever the spread of the series. Only a tilt without a clear peak (low
   dose, high tilt) is searched within a window around the series: centred on the median defocus
   of the clear tilts, half-width `series_window_a` widened to cover their spread (no clear tilt:
   centred on the best defocus of the summed curves). Such a tilt's fit is flagged poor, with or
   without the window (`series_window_a` None: every tilt searches the full range).
6. Score: that correlation. Fit resolution, as CTFFIND4 defines it: the spectra are averaged in
   equiphase bins of the fitted CTF (chi, so astigmatism and the tilt gradient are followed) and
   correlated with the fitted CTF^2 in a window sliding over the bins, about one Thon ring wide
   (growing by 10 % per CTF^2 extremum). Scanning out from the first CTF zero, the fit ends where
   the correlation falls below `resolution_threshold` (0.5) after more than 3 bins above 0.66, or
   below 0.1 after more than 3 bins above 0.1; the fit resolution is the spacing (A) of the last
   bin before that (the band limit when none falls). No bin above the threshold: no agreement,
   the spacing of the first bin checked, and the fit is flagged poor.

Units: Angstrom, degrees; defocus positive = underfocus.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import logging

import dask
import dask.array as da
import numpy as np
import pandas as pd
import scipy.fft
from scipy import ndimage, optimize

from cryocloud import progress
from cryocloud.errors import ModelError
from cryocloud.geometry import raw_to_aligned
from cryocloud.model import Microscope, TiltSeries
from cryocloud.optics import astigmatic_defocus, chi, ctf_from_chi, frequency_grid, wavelength_a

log = logging.getLogger(__name__)

FIT_COLUMNS = ("defocus_u", "defocus_v", "astigmatism_angle", "score", "fit_resolution_a", "poor_fit")

#: a 1D score curve has a clear peak when its maximum lies this many robust standard deviations
#: (1.4826 MAD) above its median; the maximum of pure-noise spectra reaches 2-4
CLEAR_PEAK_Z = 6.0


@dataclass(frozen=True)
class CtfFit:
    """CTF parameters of one image: defocus U/V (A, U >= V), angle of U (deg ccw from +x),
    score (correlation of spectrum and model), fit resolution (A) and whether the fit is poor
    (no clear defocus peak of its own, or no agreement of the fitted CTF with the spectrum)."""

    defocus_u: float
    defocus_v: float
    astigmatism_angle: float
    score: float
    fit_resolution_a: float
    poor_fit: bool = False

    def as_array(self) -> np.ndarray:
        return np.array([getattr(self, c) for c in FIT_COLUMNS])


@dataclass(frozen=True)
class CtfResult:
    """Output of `estimate_ctf`: the tilt series with defocus coordinates set and a per-tilt table
    (tilt_angle, defocus_u, defocus_v, astigmatism_angle, score, fit_resolution_a, poor_fit)."""

    tilt_series: TiltSeries
    table: pd.DataFrame

    @property
    def poor_tilts(self) -> list[int]:
        """Indices (stack order) of the tilts whose fit is poor."""
        return [int(i) for i in np.nonzero(self.table["poor_fit"].to_numpy())[0]]


@dataclass(frozen=True)
class TileSpectra:
    """Amplitude spectra (group, y, x_half) of tile groups with their defocus offsets (A) and tile counts."""

    amplitude: np.ndarray
    offsets_a: np.ndarray
    counts: np.ndarray
    pixel_size_a: float

    @property
    def box(self) -> int:
        return self.amplitude.shape[1]


def _taper(box: int, fraction: float = 0.1) -> np.ndarray:
    edge = max(1, int(box * fraction))
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(edge) + 0.5) / edge)
    w = np.ones(box)
    w[:edge], w[-edge:] = ramp, ramp[::-1]
    return np.outer(w, w)


def tile_grid(
    shape: tuple[int, int], box: int, pixel_size_a: float, tilt_axis_angle_deg: float, shift_xy_a=(0.0, 0.0)
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Tile corners (y0, x0) covering an image with 50 % overlap and each tile centre's distance x' (A)
    across the tilt axis (the aligned frame's x, geometry.py)."""
    ny, nx = shape
    corners = [(y0, x0) for y0 in range(0, ny - box + 1, box // 2) for x0 in range(0, nx - box + 1, box // 2)]
    centres = np.array([((x0 + box / 2 - nx // 2) * pixel_size_a, (y0 + box / 2 - ny // 2) * pixel_size_a) for y0, x0 in corners])
    aligned = raw_to_aligned(centres, tilt_axis_angle_deg, np.asarray(shift_xy_a, dtype=np.float64))
    return corners, aligned[:, 0]


def on_side(across_a: np.ndarray, side: int, pixel_size_a: float) -> np.ndarray:
    """Which distances x' (A) across the tilt axis lie on `side` (+1: x' > 0, -1: x' < 0), more than half a
    pixel off the axis (a tile centred on the axis belongs to neither side)."""
    return np.sign(side) * np.asarray(across_a) > 0.5 * pixel_size_a


def tile_offsets(
    shape: tuple[int, int], box: int, pixel_size_a: float, tilt_deg: float, tilt_axis_angle_deg: float, shift_xy_a=(0.0, 0.0)
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Tile corners (y0, x0) covering an image with 50 % overlap and each tile's defocus offset (A)."""
    corners, across = tile_grid(shape, box, pixel_size_a, tilt_axis_angle_deg, shift_xy_a)
    return corners, across * np.tan(np.deg2rad(tilt_deg))


def tile_spectra(
    image: np.ndarray,
    pixel_size_a: float,
    *,
    box: int = 256,
    tilt_deg: float = 0.0,
    tilt_axis_angle_deg: float = 0.0,
    shift_xy_a=(0.0, 0.0),
    group_width_a: float = 250.0,
    side: int = 0,
) -> TileSpectra:
    """Average tile periodograms of an image (y, x) in groups of similar defocus offset.

    Tiles whose offsets round to the same multiple of `group_width_a` form one group. `side` +1 / -1:
    only the tiles whose centre lies on that side of the tilt axis, more than half a pixel off it
    (x' > 0 / x' < 0); 0: all tiles.
    """
    image = np.asarray(image, dtype=np.float32)
    box = int(min(box, *image.shape)) // 2 * 2
    if box < 32:
        raise ModelError("image", f"is too small for CTF estimation: shape {image.shape}, need at least 32 x 32 pixels")
    corners, across = tile_grid(image.shape, box, pixel_size_a, tilt_axis_angle_deg, shift_xy_a)
    if side:
        kept = on_side(across, side, pixel_size_a)
        if not kept.any():
            raise ModelError("image", f"has no {box}-pixel tile on side {side:+d} of the tilt axis (shape {image.shape})")
        corners, across = [c for c, k in zip(corners, kept) if k], across[kept]
    offsets = across * np.tan(np.deg2rad(tilt_deg))
    tiles = np.stack([image[y0 : y0 + box, x0 : x0 + box] for y0, x0 in corners])
    tiles = (tiles - tiles.mean(axis=(1, 2), keepdims=True)) * _taper(box)
    power = np.abs(scipy.fft.rfft2(tiles)) ** 2
    keys = np.round(offsets / group_width_a).astype(int)
    groups = np.unique(keys)
    amp = np.stack([np.sqrt(power[keys == g].mean(axis=0)) for g in groups])
    mean_offsets = np.array([offsets[keys == g].mean() for g in groups])
    counts = np.array([np.sum(keys == g) for g in groups])
    return TileSpectra(amp.astype(np.float64), mean_offsets, counts, pixel_size_a)


def _running_mean(values: np.ndarray, width: int) -> np.ndarray:
    return ndimage.uniform_filter1d(values, size=max(int(width), 1), mode="nearest")


class _Spectra:
    """Background-subtracted, envelope-normalised spectra of the resolution band, ready for fitting."""

    def __init__(self, tiles: TileSpectra, k_lo: float, k_hi: float, ring_period_k2: float):
        ky, kx = frequency_grid((tiles.box, tiles.box), tiles.pixel_size_a, rfft=True)
        k2 = np.broadcast_to(ky * ky + kx * kx, tiles.amplitude.shape[1:])
        band = (k2 >= k_lo * k_lo) & (k2 <= k_hi * k_hi)
        if band.sum() < 50:
            raise ModelError("resolution band", f"holds too few spectrum pixels ({band.sum()}); widen min/max resolution")
        n_bins = 4 * tiles.box
        edges = np.linspace(k_lo * k_lo, k_hi * k_hi, n_bins + 1)
        bin_width = edges[1] - edges[0]
        index = np.clip(np.searchsorted(edges, k2[band]) - 1, 0, n_bins - 1)
        centres = 0.5 * (edges[1:] + edges[:-1])
        window = max(3, int(round(ring_period_k2 / bin_width)))
        data = []
        for amp in tiles.amplitude:
            values = amp[band]
            background = self._profile(values, index, n_bins, centres, window)
            residual = values - background[index]
            rms = np.sqrt(self._profile(residual**2, index, n_bins, centres, window))
            data.append(residual / np.maximum(rms[index], 1e-12))
        self.data = np.concatenate(data)
        self.ky = np.tile(np.broadcast_to(ky, k2.shape)[band], len(data))
        self.kx = np.tile(np.broadcast_to(kx, k2.shape)[band], len(data))
        self.k2 = self.ky**2 + self.kx**2
        self.offsets = np.repeat(tiles.offsets_a, band.sum())
        self.weights = np.repeat(tiles.counts.astype(np.float64), band.sum())

    @staticmethod
    def _profile(values: np.ndarray, index: np.ndarray, n_bins: int, centres: np.ndarray, window: int) -> np.ndarray:
        sums = np.bincount(index, values, minlength=n_bins)
        counts = np.bincount(index, minlength=n_bins)
        filled = counts > 0
        profile = np.interp(centres, centres[filled], sums[filled] / counts[filled])
        return _running_mean(profile, window)


def _weighted_pearson(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    wa = a - np.average(a, weights=w)
    wb = b - np.average(b, weights=w)
    denom = np.sqrt(np.sum(w * wa * wa) * np.sum(w * wb * wb))
    return float(np.sum(w * wa * wb) / denom) if denom > 0 else 0.0


class _Model:
    """CTF^2 of the spectra pixels for given defocus parameters."""

    def __init__(self, spectra: _Spectra, microscope: Microscope):
        self.s = spectra
        self.m = microscope
        self.lam = wavelength_a(microscope.voltage_kv)

    def chi(self, df_u: float, df_v: float, angle_deg: float) -> np.ndarray:
        s = self.s
        df = astigmatic_defocus(s.ky, s.kx, df_u, df_v, angle_deg) + s.offsets
        return chi(np.sqrt(s.k2), df, voltage_kv=self.m.voltage_kv, cs_mm=self.m.cs_mm)

    def score(self, df_u: float, df_v: float, angle_deg: float) -> float:
        model = ctf_from_chi(self.chi(df_u, df_v, angle_deg), self.m.amplitude_contrast) ** 2
        return _weighted_pearson(self.s.data, model, self.s.weights)


class _Profiles:
    """Rotational averages of the group spectra on fine bins uniform in k^2 (Thon rings periodic).

    The 1D score for a defocus filters data and model alike: each minus its running mean over two
    ring periods of that defocus, so background leakage affects both the same way."""

    def __init__(self, tiles: TileSpectra, k_lo: float, k_hi: float, microscope: Microscope):
        ky, kx = frequency_grid((tiles.box, tiles.box), tiles.pixel_size_a, rfft=True)
        k2 = np.broadcast_to(ky * ky + kx * kx, tiles.amplitude.shape[1:])
        band = (k2 >= k_lo * k_lo) & (k2 <= k_hi * k_hi)
        n_bins = tiles.box
        edges = np.linspace(k_lo * k_lo, k_hi * k_hi, n_bins + 1)
        index = np.clip(np.searchsorted(edges, k2[band]) - 1, 0, n_bins - 1)
        counts = np.bincount(index, minlength=n_bins)
        filled = counts > 0
        self.k2 = 0.5 * (edges[1:] + edges[:-1])[filled]
        self.bin_width = edges[1] - edges[0]
        self.profiles = np.stack([np.bincount(index, amp[band], minlength=n_bins)[filled] / counts[filled] for amp in tiles.amplitude])
        self.weights = np.outer(tiles.counts, np.sqrt(counts[filled])).ravel()
        self.offsets = tiles.offsets_a
        self.microscope = microscope
        self.lam = wavelength_a(microscope.voltage_kv)

    def _highpass(self, values: np.ndarray, window: int) -> np.ndarray:
        return values - ndimage.uniform_filter1d(values, size=window, axis=-1, mode="nearest")

    def score(self, df: float) -> float:
        window = int(np.clip(round(2.0 / (self.lam * df) / self.bin_width), 3, self.k2.size // 2))
        data = self._highpass(self.profiles, window)
        data = data / np.sqrt(np.maximum(ndimage.uniform_filter1d(data * data, size=window, axis=-1, mode="nearest"), 1e-30))
        m = self.microscope
        model = np.stack(
            [ctf_from_chi(chi(np.sqrt(self.k2), df + off, voltage_kv=m.voltage_kv, cs_mm=m.cs_mm), m.amplitude_contrast) ** 2 for off in self.offsets]
        )
        return _weighted_pearson(data.ravel(), self._highpass(model, window).ravel(), self.weights)


def clear_peak(scores: np.ndarray) -> np.ndarray:
    """Whether 1D score curves (last axis: the defocus grid) have a clear peak: a maximum CLEAR_PEAK_Z
    robust standard deviations (1.4826 MAD) above their median."""
    median = np.median(scores, axis=-1)
    spread = 1.4826 * np.median(np.abs(scores - median[..., None]), axis=-1)
    return scores.max(axis=-1) - median >= CLEAR_PEAK_Z * np.maximum(spread, 1e-12)


def _search_1d(profiles: _Profiles, defocus_range_a: tuple[float, float], step_a: float) -> tuple[float, np.ndarray]:
    """(best defocus (A), the scores on the grid of the range)."""
    lo, hi = defocus_range_a
    grid = np.arange(lo, hi + step_a, step_a)
    scores = np.array([profiles.score(df) for df in grid])
    best = grid[int(np.argmax(scores))]
    res = optimize.minimize_scalar(
        lambda df: -profiles.score(df), bounds=(max(lo, best - step_a), min(hi, best + step_a)), method="bounded",
        options={"xatol": 1.0},
    )
    return float(res.x), scores


def _refine_2d(model: _Model, df0: float, defocus_range_a: tuple[float, float], max_astigmatism_a: float) -> tuple[float, float, float]:
    lo, hi = defocus_range_a

    def params(p: np.ndarray) -> tuple[float, float, float]:
        mean, ax, ay = df0 + 1000.0 * p[0], 1000.0 * p[1], 1000.0 * p[2]
        half = np.hypot(ax, ay)
        return mean + half, mean - half, np.rad2deg(0.5 * np.arctan2(ay, ax))

    def cost(p: np.ndarray) -> float:
        u, v, ang = params(p)
        penalty = max(0.0, u - v - max_astigmatism_a) + max(0.0, lo - v) + max(0.0, u - hi)
        return -model.score(u, v, ang) + penalty * 1e-3

    starts = [np.array([0.0, 0.0, 0.0]), np.array([0.0, 0.3, 0.0]), np.array([0.0, 0.0, 0.3])]
    best = min(
        (optimize.minimize(cost, x0, method="Nelder-Mead", options={"xatol": 2e-3, "fatol": 1e-6, "initial_simplex": x0 + _SIMPLEX})
         for x0 in starts),
        key=lambda r: r.fun,
    )
    u, v, ang = params(best.x)
    return u, v, float((ang + 90.0) % 180.0 - 90.0)


_SIMPLEX = np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.15, 0.0], [0.0, 0.0, 0.15]])


def equiphase_profile(model: _Model, df_u: float, df_v: float, angle_deg: float, *, bins_per_ring: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The spectra averaged in equiphase bins of the fitted CTF: (k (1/A), data, phase chi + asin(A) (rad))
    per bin along increasing phase, `bins_per_ring` bins per Thon ring (pi of phase)."""
    c = model.chi(df_u, df_v, angle_deg)
    k = np.sqrt(model.s.k2)
    step = np.pi / bins_per_ring
    index = np.floor((c - c.min()) / step).astype(int)
    n = index.max() + 1
    counts = np.bincount(index, weights=model.s.weights, minlength=n)
    filled = counts > 0
    data = np.bincount(index, weights=model.s.data * model.s.weights, minlength=n)[filled] / counts[filled]
    kbin = np.bincount(index, weights=k * model.s.weights, minlength=n)[filled] / counts[filled]
    phase = c.min() + (np.nonzero(filled)[0] + 0.5) * step + np.arcsin(model.m.amplitude_contrast)
    return kbin, data, phase


def sliding_correlation(data: np.ndarray, phase: np.ndarray, *, bins_per_ring: int = 16) -> np.ndarray:
    """Per bin, the Pearson correlation of `data` and CTF^2 = sin^2(phase) in a window centred on it:
    half-width (1 + 0.1 n) half rings, n the CTF^2 extrema below the bin (as CTFFIND4); windows
    at the ends keep their width and shift inwards."""
    model = np.sin(phase) ** 2
    n_extrema = np.floor(phase / (0.5 * np.pi))
    half = np.maximum(2, np.round((1.0 + 0.1 * n_extrema) * bins_per_ring / 2)).astype(int)
    half = np.minimum(half, max(1, (data.size - 1) // 2))
    cc = np.empty(data.size)
    for i, h in enumerate(half):
        lo = int(np.clip(i - h, 0, max(0, data.size - 2 * h - 1)))
        sl = slice(lo, lo + 2 * h + 1)
        cc[i] = _weighted_pearson(data[sl], model[sl], np.ones(data[sl].size))
    return cc


def fit_resolution(k: np.ndarray, cc: np.ndarray, phase: np.ndarray, threshold: float = 0.5) -> tuple[float, bool]:
    """(spacing (A) up to which the fitted CTF agrees with the spectrum, whether it agrees at all).

    CTFFIND4's rule on the sliding correlation `cc`, scanned from the first CTF zero (phase pi, or
    the first bin when the band starts beyond it): the fit ends at the first bin below `threshold`
    after more than 3 bins above 0.66, or below 0.1 after more than 3 bins above 0.1; the spacing
    is that of the bin before (the last bin when none ends it). No bin above `threshold`: the
    spacing of the first bin checked, and False."""
    start = int(np.searchsorted(phase, np.pi)) if phase[-1] >= np.pi else 0
    start = min(start, k.size - 1)
    above_low = above_high = above_threshold = 0
    end = k.size
    for i in range(start, k.size):
        if (above_low > 3 and cc[i] < 0.1) or (above_high > 3 and cc[i] < threshold):
            end = i
            break
        above_low += cc[i] > 0.1
        above_high += cc[i] > 0.66
        above_threshold += cc[i] > threshold
    if above_threshold == 0:
        return float(1.0 / k[start]), False
    return float(1.0 / k[max(end - 1, start)]), True


@dataclass(frozen=True)
class CtfSearch:
    """Search settings. Box (pixels) of the spectrum tiles; defocus range and 1D grid step (A);
    resolution band (A); largest |defocus_u - defocus_v| (A); fit-resolution threshold;
    `series_window_a`: a tilt whose own score curve has no clear peak is searched within this
    distance (A) of the series' defocus, widened to cover the spread of the clear tilts (see
    `search_ranges`); None: every tilt searches the full range."""

    box: int = 256
    defocus_range_a: tuple[float, float] = (5000.0, 70000.0)
    defocus_step_a: float = 250.0
    min_resolution_a: float = 30.0
    max_resolution_a: float = 5.0
    max_astigmatism_a: float = 3000.0
    resolution_threshold: float = 0.5
    series_window_a: float | None = 5000.0

    def band(self, pixel_size_a: float) -> tuple[float, float]:
        """Spatial-frequency band (1/A) fitted: [1/min_resolution, min(1/max_resolution, 0.95 Nyquist)]."""
        lo, hi = self.defocus_range_a
        if lo <= 0 or hi <= lo:
            raise ModelError("defocus_range_a", f"expected 0 < min < max (A), got {self.defocus_range_a}")
        k_hi = min(1.0 / self.max_resolution_a, 0.5 / pixel_size_a * 0.95)
        k_lo = 1.0 / self.min_resolution_a
        if k_lo >= k_hi:
            raise ModelError("min_resolution_a", f"must be coarser than max resolution {1 / k_hi:.2f} A, got {self.min_resolution_a}")
        return k_lo, k_hi

    def resolution_range_a(self, pixel_size_a: float) -> tuple[float, float]:
        """(lowest, highest) resolution (A) actually fitted: the band, never beyond 0.95 Nyquist."""
        k_lo, k_hi = self.band(pixel_size_a)
        return 1.0 / k_lo, 1.0 / k_hi

    def grid(self) -> np.ndarray:
        lo, hi = self.defocus_range_a
        return np.arange(lo, hi + self.defocus_step_a, self.defocus_step_a)


def score_curve(tiles: TileSpectra, microscope: Microscope, search: CtfSearch) -> np.ndarray:
    """1D scores of the spectra on the defocus grid `search.grid()`."""
    profiles = _Profiles(tiles, *search.band(tiles.pixel_size_a), microscope)
    return np.array([profiles.score(df) for df in search.grid()])


def search_ranges(search: CtfSearch, *curves: np.ndarray) -> np.ndarray:
    """Per tilt (lo, hi, clear): the defocus range (A) its fit searches and whether its 1D score
    curve (on `search.grid()`) has a clear peak (CLEAR_PEAK_Z). Clear tilts search the full range;
    the others the series window (CtfSearch.series_window_a) around the clear tilts' median
    defocus, wide enough to cover them all (no clear tilt: around the best of the summed curves)."""
    grid = search.grid()
    scores = np.stack(curves)
    clear = clear_peak(scores)
    lo, hi = search.defocus_range_a
    ranges = np.tile([lo, hi, 0.0], (len(curves), 1))
    ranges[:, 2] = clear
    if search.series_window_a is None or clear.all():
        return ranges
    peaks = grid[np.argmax(scores, axis=1)]
    if clear.any():
        centre = float(np.median(peaks[clear]))
        half = max(search.series_window_a, float(np.max(np.abs(peaks[clear] - centre))) + search.defocus_step_a)
    else:
        centre, half = float(grid[int(np.argmax(scores.sum(axis=0)))]), search.series_window_a
    ranges[~clear, 0] = max(lo, centre - half)
    ranges[~clear, 1] = min(hi, centre + half)
    return ranges


def fit_tiles(tiles: TileSpectra, microscope: Microscope, search: CtfSearch, search_range: np.ndarray | None = None) -> CtfFit:
    """Fit U/V/angle to tile spectra within `search_range` (lo, hi, clear) from `search_ranges`
    (default: the full range; clear from its own 1D scores). Poor: no clear 1D peak, or the fitted
    CTF does not agree with the spectrum (`fit_resolution`)."""
    k_lo, k_hi = search.band(tiles.pixel_size_a)
    lo, hi, clear = (*search.defocus_range_a, None) if search_range is None else search_range
    df1, scores = _search_1d(_Profiles(tiles, k_lo, k_hi, microscope), (lo, hi), search.defocus_step_a)
    if clear is None:
        clear = bool(clear_peak(scores))
    model = _Model(_Spectra(tiles, k_lo, k_hi, 2.0 / (wavelength_a(microscope.voltage_kv) * df1)), microscope)
    u, v, ang = _refine_2d(model, df1, search.defocus_range_a, search.max_astigmatism_a)
    k, data, phase = equiphase_profile(model, u, v, ang)
    resolution, agrees = fit_resolution(k, sliding_correlation(data, phase), phase, search.resolution_threshold)
    return CtfFit(u, v, ang, model.score(u, v, ang), resolution, poor_fit=not (agrees and clear))


def fit_ctf(
    image: np.ndarray,
    pixel_size_a: float,
    *,
    microscope: Microscope = Microscope(),
    tilt_deg: float = 0.0,
    tilt_axis_angle_deg: float = 0.0,
    shift_xy_a=(0.0, 0.0),
    search: CtfSearch = CtfSearch(),
) -> CtfFit:
    """Fit defocus U/V and astigmatism angle to one image (y, x) over the full defocus range."""
    search.band(pixel_size_a)
    tiles = tile_spectra(image, pixel_size_a, box=search.box, tilt_deg=tilt_deg, tilt_axis_angle_deg=tilt_axis_angle_deg, shift_xy_a=shift_xy_a)
    return fit_tiles(tiles, microscope, search)


def _spectra_task(block: np.ndarray, pixel_size_a: float, box: int, tilt_deg: float, axis: float, shift) -> TileSpectra:
    return tile_spectra(block[0], pixel_size_a, box=box, tilt_deg=tilt_deg, tilt_axis_angle_deg=axis, shift_xy_a=shift)


def _fit_task(tiles: TileSpectra, microscope: Microscope, search: CtfSearch, ranges: np.ndarray | None, i: int) -> np.ndarray:
    return fit_tiles(tiles, microscope, search, None if ranges is None else ranges[i]).as_array()[None]


def ctf_fit_graph(ts: TiltSeries, search: CtfSearch = CtfSearch()) -> da.Array:
    """Lazy per-tilt fits (tilt, 6), columns FIT_COLUMNS. Per tilt: a spectra task, a 1D score
    curve task and a fit task; the fits wait for the search ranges of the series (`search_ranges`
    of all curves) unless `search.series_window_a` is None."""
    if ts.has_frames:
        raise ModelError("dims", "CTF estimation needs summed images (tilt, y, x); motion-correct the frames first")
    search.band(ts.pixel_size)
    arr = da.asarray(ts.data.data).astype(np.float32)
    arr = arr.rechunk((1,) + arr.shape[1:])
    shift_x = ts.per_tilt("shift_x")
    shift_y = ts.per_tilt("shift_y")
    spectra = []
    for i, block in enumerate(arr.to_delayed().ravel()):
        shift = (0.0 if shift_x is None else float(shift_x[i]), 0.0 if shift_y is None else float(shift_y[i]))
        spectra.append(dask.delayed(_spectra_task, pure=True)(block, ts.pixel_size, search.box, float(ts.tilt_angles[i]), ts.tilt_axis_angle, shift))
    ranges = None
    if search.series_window_a is not None:
        curves = [dask.delayed(score_curve, pure=True)(t, ts.microscope, search) for t in spectra]
        ranges = dask.delayed(search_ranges, pure=True)(search, *curves)
    rows = [
        da.from_delayed(dask.delayed(_fit_task, pure=True)(t, ts.microscope, search, ranges, i), shape=(1, len(FIT_COLUMNS)), dtype=np.float64)
        for i, t in enumerate(spectra)
    ]
    return da.concatenate(rows, axis=0)


def fits_table(ts: TiltSeries, fits: np.ndarray) -> pd.DataFrame:
    """Per-tilt table of fitted values (tilt order of `ts`)."""
    table = pd.DataFrame(np.asarray(fits), columns=list(FIT_COLUMNS))
    table["poor_fit"] = table["poor_fit"].astype(bool)
    table.insert(0, "tilt_angle", ts.tilt_angles)
    return table


def estimate_ctf(ts: TiltSeries, *, search: CtfSearch = CtfSearch(), quiet: bool = True, **settings) -> CtfResult:
    """Estimate the CTF of every tilt (Dask tasks per tilt) and set the defocus coordinates.

    `settings` override fields of `search` (e.g. defocus_range_a=(5000, 70000), box=256).
    Computes only the small per-tilt fit table; the image data of the returned series stay lazy.
    """
    try:
        search = replace(search, **settings)
    except TypeError as exc:
        raise ModelError("settings", f"unknown CTF search setting: {exc}") from None
    graph = ctf_fit_graph(ts, search)
    (fits,) = progress.compute(graph, description="CTF estimation", quiet=quiet)
    table = fits_table(ts, fits)
    poor = table.index[table["poor_fit"]]
    if len(poor):
        log.warning("CTF fit poor for %d of %d tilts (index: tilt angle deg): %s; check their defocus", len(poor), len(table),
                    ", ".join(f"{i}: {table['tilt_angle'][i]:.1f}" for i in poor))
    fitted = ts.with_per_tilt(
        defocus_u=table["defocus_u"], defocus_v=table["defocus_v"], astigmatism_angle=table["astigmatism_angle"]
    )
    return CtfResult(fitted, table)
