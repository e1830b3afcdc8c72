"""Figures of the preprocessing stages (matplotlib, Agg): drift traces, spectrum with fitted CTF
rings, defocus against tilt angle. Functions return a Figure; `save_png` writes it to a URL."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from cryocloud.model import Microscope
from cryocloud.optics import ctf_2d
from cryocloud.plotting import subplots
from cryocloud.preprocess.ctf_estimate import CtfFit, tile_spectra


def drift_figure(shifts: xr.DataArray, *, max_panels: int = 64) -> Figure:
    """Trajectories (x, y in A) of the frames of each tilt, one small panel per tilt, first frame marked."""
    values = np.asarray(shifts.values)
    n = min(values.shape[0], max_panels)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = subplots(rows, cols, figsize=(2.0 * cols, 2.0 * rows), squeeze=False, sharex=True, sharey=True)
    angles = shifts.coords["tilt_angle"].values if "tilt_angle" in shifts.coords else np.arange(n)
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            ax.axis("off")
            continue
        ax.plot(values[i, :, 0], values[i, :, 1], "-o", ms=2, lw=1)
        ax.plot(values[i, 0, 0], values[i, 0, 1], "s", color="red", ms=4)
        ax.set_title(f"{angles[i]:.1f} deg", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_aspect("equal", adjustable="box")
    fig.supxlabel("shift x (A)")
    fig.supylabel("shift y (A)")
    fig.suptitle("Frame drift per tilt (red: first frame)")
    fig.tight_layout()
    return fig


def spectrum_figure(
    image: np.ndarray,
    fit: CtfFit,
    pixel_size_a: float,
    *,
    microscope: Microscope = Microscope(),
    tilt_deg: float = 0.0,
    tilt_axis_angle_deg: float = 0.0,
    box: int = 256,
) -> Figure:
    """Amplitude spectrum of an image (tiles averaged, radial median removed; left half) beside
    the fitted CTF^2 (right half); the zeros of the fitted CTF are drawn over the data half."""
    tiles = tile_spectra(image, pixel_size_a, box=box, tilt_deg=tilt_deg, tilt_axis_angle_deg=tilt_axis_angle_deg)
    amp = np.average(tiles.amplitude, axis=0, weights=tiles.counts)
    n = tiles.box
    full = np.fft.fftshift(_full_plane(amp, n))
    log_amp = np.log(np.maximum(full, 1e-12))
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - n // 2, xx - n // 2)
    rings = np.arange(int(r.max()) + 1)
    log_amp -= np.array([np.median(log_amp[np.abs(r - ri) < 1.5]) for ri in rings])[r.astype(int)]
    ctf = np.fft.fftshift(
        ctf_2d((n, n), pixel_size_a, fit.defocus_u, fit.defocus_v, fit.astigmatism_angle, voltage_kv=microscope.voltage_kv,
               cs_mm=microscope.cs_mm, amplitude_contrast=microscope.amplitude_contrast, rfft=False)
    )
    show = log_amp.copy()
    centre = r < 3
    show[centre] = 0
    lo, hi = np.percentile(show[~centre], [2, 98])
    composite = np.where(xx < n // 2, (show - lo) / (hi - lo), ctf**2)
    fig, ax = subplots(figsize=(5, 5))
    ax.imshow(np.clip(composite, 0, 1), cmap="gray", origin="lower")
    ax.contour(np.where(xx < n // 2, ctf, np.nan), levels=[0.0], colors="yellow", linewidths=0.5)
    ax.set_title(
        f"U {fit.defocus_u / 1e4:.3f} um, V {fit.defocus_v / 1e4:.3f} um, {fit.astigmatism_angle:.0f} deg\n"
        f"score {fit.score:.3f}, fit resolution {fit.fit_resolution_a:.1f} A (left data, right fit)",
        fontsize=9,
    )
    ax.axis("off")
    fig.tight_layout()
    return fig


def _full_plane(half: np.ndarray, n: int) -> np.ndarray:
    """Full (n, n) spectrum from the rfft2 half plane (Hermitian symmetry of a real image's power)."""
    full = np.empty((n, n))
    full[:, : half.shape[1]] = half
    mirror = half[(-np.arange(n)) % n][:, 1 : n - half.shape[1] + 1][:, ::-1]
    full[:, half.shape[1] :] = mirror
    return full


def defocus_figure(table: pd.DataFrame, *, truth: pd.DataFrame | None = None) -> Figure:
    """Defocus U and V (um) against tilt angle; optional truth table with the same columns."""
    fig, ax = subplots(figsize=(6, 3.5))
    t = table.sort_values("tilt_angle")
    ax.plot(t["tilt_angle"], t["defocus_u"] / 1e4, "o-", ms=3, label="defocus U")
    ax.plot(t["tilt_angle"], t["defocus_v"] / 1e4, "s-", ms=3, label="defocus V")
    if truth is not None:
        tt = truth.sort_values("tilt_angle")
        ax.plot(tt["tilt_angle"], 0.5 * (tt["defocus_u"] + tt["defocus_v"]) / 1e4, "k--", lw=1, label="true (mean)")
    ax.set_xlabel("tilt angle (deg)")
    ax.set_ylabel("defocus (um)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def png_bytes(fig: Figure, *, dpi: int = 120) -> bytes:
    """The figure as PNG bytes (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_png(fig: Figure, target: Any) -> None:
    """Write a figure as PNG to an open binary file object."""
    target.write(png_bytes(fig))
