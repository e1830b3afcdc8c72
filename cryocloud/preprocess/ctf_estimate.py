"""CTF estimation per tilt image, CTFFIND4-like, aware of the defocus gradient of tilted images.

Per tilt (one Dask task per tilt):
1. Spectra: the image (y, x) is cut into overlapping square tiles of `box` pixels; each tile's
   local defocus offset is delta = x' tan(t), x' its centre's distance from the tilt axis
   (geometry.py: df(x') = df0 + x' tan t in the aligned frame; in raw images the axis lies at
   `tilt_axis_angle` ccw from image y, and `shift_x/shift_y` move it off the centre). Tiles
   with nearly the same offset are grouped and their periodograms averaged; amplitude spectra
   (square root of the power) are used.
2. Background: the rotational average of the amplitude, binned finely in k^2 (where Thon rings
   are periodic), is smoothed by a running mean over one ring period; it is subtracted and the
   result divided by its local RMS (envelope normalisation).
3. 1D search: a grid over defocus scores the Pearson correlation between the normalised spectra
   (all groups together) and CTF^2 at each group's defocus (df + delta), within the resolution
   band [1/min_resolution_a, 1/max_resolution_a]; the best grid point is polished by a bounded
   scalar search, and the background is re-estimated with a window matched to that defocus.
4. 2D refinement: Nelder-Mead over (mean defocus, astigmatism vector (a cos 2 theta, a sin 2 theta))
   maximising the same correlation on the 2D half-plane spectra -> defocus U >= V and the angle
   of U (deg ccw from +x, as CTFFIND4).
5. Score: that correlation. Fit resolution: spectra are averaged in equiphase bins of the fitted
   CTF (chi), correlated with CTF^2 in windows of two Thon rings; the fit resolution is the
   spacing (A) where that correlation first drops below `resolution_threshold`.

Units: Angstrom, degrees; defocus positive = underfocus.
"""

from __future__ import annotations

from dataclasses import dataclass

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

FIT_COLUMNS = ("defocus_u", "defocus_v", "astigmatism_angle", "score", "fit_resolution_a")


@dataclass(frozen=True)
class CtfFit:
    """CTF parameters of one image: defocus U/V (A, U >= V), angle of U (deg ccw from +x),
    score (correlation of spectrum and model) and fit resolution (A)."""

    defocus_u: float
    defocus_v: float
    astigmatism_angle: float
    score: float
    fit_resolution_a: float

    def as_array(self) -> np.ndarray:
        return np.array([getattr(self, c) for c in FIT_COLUMNS])


@dataclass(frozen=True)
class CtfResult:
    """Output of `estimate_ctf`: the tilt series with defocus coordinates set and a per-tilt table
    (tilt_angle, defocus_u, defocus_v, astigmatism_angle, score, fit_resolution_a)."""

    tilt_series: TiltSeries
    table: pd.DataFrame


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


def tile_offsets(
    shape: tuple[int, int], box: int, pixel_size_a: float, tilt_deg: float, tilt_axis_angle_deg: float, shift_xy_a=(0.0, 0.0)
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Tile corners (y0, x0) covering an image with 50 % overlap and each tile's defocus offset (A)."""
    ny, nx = shape
    corners = [(y0, x0) for y0 in range(0, ny - box + 1, box // 2) for x0 in range(0, nx - box + 1, box // 2)]
    centres = np.array([((x0 + box / 2 - nx // 2) * pixel_size_a, (y0 + box / 2 - ny // 2) * pixel_size_a) for y0, x0 in corners])
    aligned = raw_to_aligned(centres, tilt_axis_angle_deg, np.asarray(shift_xy_a, dtype=np.float64))
    return corners, aligned[:, 0] * np.tan(np.deg2rad(tilt_deg))


def tile_spectra(
    image: np.ndarray,
    pixel_size_a: float,
    *,
    box: int = 256,
    tilt_deg: float = 0.0,
    tilt_axis_angle_deg: float = 0.0,
    shift_xy_a=(0.0, 0.0),
    group_width_a: float = 250.0,
) -> TileSpectra:
    """Average tile periodograms of an image (y, x) in groups of similar defocus offset.

    Tiles whose offsets round to the same multiple of `group_width_a` form one group.
    """
    image = np.asarray(image, dtype=np.float32)
    box = int(min(box, *image.shape)) // 2 * 2
    if box < 32:
        raise ModelError("image", f"is too small for CTF estimation: shape {image.shape}, need at least 32 x 32 pixels")
    corners, offsets = tile_offsets(image.shape, box, pixel_size_a, tilt_deg, tilt_axis_angle_deg, shift_xy_a)
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


def _search_1d(model: _Model, defocus_range_a: tuple[float, float], step_a: float) -> float:
    lo, hi = defocus_range_a
    grid = np.arange(lo, hi + step_a, step_a)
    scores = np.array([model.score(df, df, 0.0) for df in grid])
    best = grid[int(np.argmax(scores))]
    res = optimize.minimize_scalar(
        lambda df: -model.score(df, df, 0.0), bounds=(max(lo, best - step_a), min(hi, best + step_a)), method="bounded",
        options={"xatol": 1.0},
    )
    return float(res.x)


def _refine_2d(model: _Model, df0: float, defocus_range_a: tuple[float, float], max_astigmatism_a: float) -> tuple[float, float, float]:
    lo, hi = defocus_range_a

    def params(p: np.ndarray) -> tuple[float, float, float]:
        mean, ax, ay = df0 + 1000.0 * p[0], 1000.0 * p[1], 1000.0 * p[2]
        half = np.hypot(ax, ay)
        return mean + half, mean - half, np.rad2deg(0.5 * np.arctan2(ay, ax))

    def cost(p: np.ndarray) -> float:
        u, v, ang = params(p)
        penalty = max(0.0, np.hypot(p[1], p[2]) * 1000.0 - max_astigmatism_a) + max(0.0, lo - v) + max(0.0, u - hi)
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


def equiphase_correlation(
    model: _Model, df_u: float, df_v: float, angle_deg: float, *, bins_per_ring: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Correlation of spectra and fitted CTF^2 in windows of two Thon rings.

    Returns (k (1/A), correlation) per window, along increasing chi (equiphase averaging).
    """
    c = model.chi(df_u, df_v, angle_deg)
    k = np.sqrt(model.s.k2)
    step = np.pi / bins_per_ring
    index = np.floor((c - c.min()) / step).astype(int)
    n = index.max() + 1
    counts = np.bincount(index, weights=model.s.weights, minlength=n)
    filled = counts > 0
    data = np.bincount(index, weights=model.s.data * model.s.weights, minlength=n)[filled] / counts[filled]
    kbin = np.bincount(index, weights=k * model.s.weights, minlength=n)[filled] / counts[filled]
    phase = c.min() + (np.nonzero(filled)[0] + 0.5) * step
    expected = ctf_from_chi(phase, model.m.amplitude_contrast) ** 2
    window = 2 * bins_per_ring
    ks, ccs = [], []
    for start in range(0, data.size - window + 1, bins_per_ring // 2):
        sl = slice(start, start + window)
        ks.append(kbin[sl].mean())
        ccs.append(_weighted_pearson(data[sl], expected[sl], np.ones(window)))
    return np.asarray(ks), np.asarray(ccs)


def fit_resolution(ks: np.ndarray, ccs: np.ndarray, threshold: float, k_hi: float) -> float:
    """Spacing (A) up to which windows correlate above `threshold` (the band limit if they all do)."""
    below = np.nonzero(ccs < threshold)[0]
    if ks.size == 0 or (below.size and below[0] == 0):
        return float(1.0 / ks[0]) if ks.size else float("inf")
    k = ks[below[0] - 1] if below.size else k_hi
    return float(1.0 / k)


def fit_ctf(
    image: np.ndarray,
    pixel_size_a: float,
    *,
    microscope: Microscope = Microscope(),
    tilt_deg: float = 0.0,
    tilt_axis_angle_deg: float = 0.0,
    shift_xy_a=(0.0, 0.0),
    box: int = 256,
    defocus_range_a: tuple[float, float] = (5000.0, 70000.0),
    defocus_step_a: float = 250.0,
    min_resolution_a: float = 30.0,
    max_resolution_a: float = 5.0,
    max_astigmatism_a: float = 3000.0,
    resolution_threshold: float = 0.5,
) -> CtfFit:
    """Fit defocus U/V and astigmatism angle to one image (y, x); see the module docstring."""
    if defocus_range_a[0] <= 0 or defocus_range_a[1] <= defocus_range_a[0]:
        raise ModelError("defocus_range_a", f"expected 0 < min < max (A), got {defocus_range_a}")
    k_hi = min(1.0 / max_resolution_a, 0.5 / pixel_size_a * 0.95)
    k_lo = 1.0 / min_resolution_a
    if k_lo >= k_hi:
        raise ModelError("min_resolution_a", f"must be coarser than max resolution {1 / k_hi:.2f} A, got {min_resolution_a}")
    tiles = tile_spectra(image, pixel_size_a, box=box, tilt_deg=tilt_deg, tilt_axis_angle_deg=tilt_axis_angle_deg, shift_xy_a=shift_xy_a)
    lam = wavelength_a(microscope.voltage_kv)
    coarse = _Model(_Spectra(tiles, k_lo, k_hi, 1.0 / (lam * defocus_range_a[0])), microscope)
    df1 = _search_1d(coarse, defocus_range_a, defocus_step_a)
    model = _Model(_Spectra(tiles, k_lo, k_hi, 2.0 / (lam * df1)), microscope)
    df1 = _search_1d(model, (max(defocus_range_a[0], df1 - 2 * defocus_step_a), min(defocus_range_a[1], df1 + 2 * defocus_step_a)), defocus_step_a / 5)
    u, v, ang = _refine_2d(model, df1, defocus_range_a, max_astigmatism_a)
    score = model.score(u, v, ang)
    ks, ccs = equiphase_correlation(model, u, v, ang)
    return CtfFit(u, v, ang, score, fit_resolution(ks, ccs, resolution_threshold, k_hi))


def _fit_task(block: np.ndarray, pixel_size_a: float, microscope: Microscope, tilt_deg: float, axis: float, shift, options: dict) -> np.ndarray:
    return fit_ctf(block[0], pixel_size_a, microscope=microscope, tilt_deg=tilt_deg, tilt_axis_angle_deg=axis, shift_xy_a=shift, **options).as_array()[None]


def ctf_fit_graph(ts: TiltSeries, **options) -> da.Array:
    """Lazy per-tilt fits (tilt, 5): columns FIT_COLUMNS; one Dask task per tilt. Options as `fit_ctf`."""
    if ts.has_frames:
        raise ModelError("dims", "CTF estimation needs summed images (tilt, y, x); motion-correct the frames first")
    arr = da.asarray(ts.data.data).astype(np.float32)
    arr = arr.rechunk((1,) + arr.shape[1:])
    shift_x = ts.per_tilt("shift_x")
    shift_y = ts.per_tilt("shift_y")
    task = dask.delayed(_fit_task, pure=True)
    rows = []
    for i, block in enumerate(arr.to_delayed().ravel()):
        shift = (0.0 if shift_x is None else float(shift_x[i]), 0.0 if shift_y is None else float(shift_y[i]))
        fit = task(block, ts.pixel_size, ts.microscope, float(ts.tilt_angles[i]), ts.tilt_axis_angle, shift, options)
        rows.append(da.from_delayed(fit, shape=(1, len(FIT_COLUMNS)), dtype=np.float64))
    return da.concatenate(rows, axis=0)


def fits_table(ts: TiltSeries, fits: np.ndarray) -> pd.DataFrame:
    """Per-tilt table of fitted values (tilt order of `ts`)."""
    table = pd.DataFrame(np.asarray(fits), columns=list(FIT_COLUMNS))
    table.insert(0, "tilt_angle", ts.tilt_angles)
    return table


def estimate_ctf(
    ts: TiltSeries,
    *,
    defocus_range_a: tuple[float, float] = (5000.0, 70000.0),
    box: int = 256,
    min_resolution_a: float = 30.0,
    max_resolution_a: float = 5.0,
    quiet: bool = True,
    **options,
) -> CtfResult:
    """Estimate the CTF of every tilt (Dask, one task per tilt) and set the defocus coordinates.

    Computes only the small per-tilt fit table; the image data of the returned series stay lazy.
    """
    graph = ctf_fit_graph(
        ts, defocus_range_a=defocus_range_a, box=box, min_resolution_a=min_resolution_a, max_resolution_a=max_resolution_a, **options
    )
    (fits,) = progress.compute(graph, description="CTF estimation", quiet=quiet)
    table = fits_table(ts, fits)
    fitted = ts.with_per_tilt(
        defocus_u=table["defocus_u"], defocus_v=table["defocus_v"], astigmatism_angle=table["astigmatism_angle"]
    )
    return CtfResult(fitted, table)
