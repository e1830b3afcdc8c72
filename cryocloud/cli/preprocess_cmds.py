"""Preprocessing commands: `assemble`, `motion`, `ctf`, `ctf-correct`, `dose-weight`.

Movies (MRC/TIFF, one file per tilt) come from a folder or bucket prefix with a SerialEM .mdoc
that names them (SubFramePath); images and results are OME-Zarr tilt series. Outputs next to
OUT (a `.zarr` URL): `<stem>_even.zarr`, `<stem>_odd.zarr`, `<stem>_shifts.csv`, `<stem>_drift.png`
(motion); `<stem>_ctffind4.txt`, `<stem>_ctf.png`, with --handedness `<stem>_handedness.json` (ctf).
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import pandas as pd
import pydantic
import typer
from rich.console import Console

from cryocloud.cli.app import app
from cryocloud.cli.options import guarded, read_write_options
from cryocloud.errors import ModelError
from cryocloud.model import Microscope, TiltSeries
from cryocloud.pipeline.config import MotionParams
from cryocloud.pipeline.movies import checked_params, detector_correction
from cryocloud.preprocess.detector import DetectorCorrection, FixedPattern, detector_corrected_sums
from cryocloud.preprocess.assemble import assemble as assemble_series, stack_movies
from cryocloud.preprocess.ctf_correct import ctf_multiply, phase_flip
from cryocloud.preprocess.ctf_estimate import FIT_COLUMNS, CtfFit, CtfSearch, estimate_ctf
from cryocloud.preprocess.ctffind_io import apply_ctf_table, format_ctffind, parse_ctffind
from cryocloud.preprocess.dose import dose_weight as dose_weight_series
from cryocloud.preprocess.figures import defocus_figure, drift_figure, png_bytes, spectrum_figure
from cryocloud.preprocess.handedness import estimate_handedness, with_negated_tilt_angles
from cryocloud.preprocess.motion import motion_correct, summed_like
from cryocloud.preprocess.movies import movie_url, read_movie
from cryocloud.store import open_url, read_tilt_series, write_tilt_series
from cryocloud.store.mdoc import Mdoc, read_mdoc
from cryocloud.store.portal import is_portal_url
from cryocloud.store.textfiles import read_text, write_text

console = Console(highlight=False, stderr=True)

ANON = typer.Option(False, "--anon", help="Anonymous read access (public buckets).")
ENDPOINT = typer.Option(None, "--endpoint-url", help="S3-compatible endpoint.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace existing outputs.")


def sibling(out_url: str, suffix: str) -> str:
    """`<stem><suffix>` next to an output URL (stem without `.zarr`)."""
    base = out_url.rstrip("/")
    return (base[: -len(".zarr")] if base.endswith(".zarr") else base) + suffix


def _movie_frames(movies: str, parsed: Mdoc, pixel_size: Optional[float], exposure: Optional[float], options: Optional[dict]) -> TiltSeries:
    px = pixel_size or parsed.pixel_size
    if px is None:
        raise ModelError("pixel_size", "the mdoc has no PixelSpacing; pass --pixel-size (A)", source=parsed.source)
    urls = [movie_url(movies, p) for p in parsed.sub_frame_path]
    doses = np.full(parsed.n_tilts, exposure) if exposure is not None else parsed.exposure_dose
    if np.any(~np.isfinite(doses)) or not np.any(doses > 0):
        raise ModelError("ExposureDose", "missing or zero in the mdoc; pass --exposure (e/A^2 per tilt)", source=parsed.source)
    prior = parsed.prior_record_dose
    scope = Microscope(voltage_kv=parsed.voltage_kv) if parsed.voltage_kv else None
    return stack_movies(
        [read_movie(u, pixel_size=px, storage_options=options) for u in urls],
        tilt_angles=parsed.tilt_angle, pixel_size=px, exposure=doses, acquisition_order=parsed.acquisition_order,
        pre_exposure=None if exposure is not None or np.any(np.isnan(prior)) else prior, microscope=scope,
        tilt_axis_angle=parsed.tilt_axis_angle or 0.0, names=urls,
    )


def _detector(movies: str, parsed: Mdoc, options: Optional[dict], **settings) -> Optional[DetectorCorrection]:
    """The detector correction the options name (`settings`: MotionParams fields), the mdoc's GainReference
    when no --gain is given; checked against the first movie."""
    try:
        params = MotionParams(**settings)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        raise ModelError(f"--{str(err['loc'][0]).replace('_', '-')}", f"{err['msg']}, got {err['input']!r}") from None
    params = checked_params(params, parsed, movies, options)
    if params.gain:
        console.print(f"gain reference {params.gain} (rotated {params.gain_rotate} deg, flip {params.gain_flip})")
    return detector_correction(params, options)


def _assembled(movies, parsed, pixel_size, exposure, dark_fraction, options) -> TiltSeries:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    result = assemble_series(_movie_frames(movies, parsed, pixel_size, exposure, options), dark_fraction=dark_fraction)
    for d in result.dropped:
        console.print(f"dropped tilt {d.index} ({d.tilt_angle:.2f} deg): {d.reason}")
    ts = result.tilt_series
    console.print(f"{ts.n_tilts} tilts, {ts.tilt_angles.min():.1f} .. {ts.tilt_angles.max():.1f} deg, "
                  f"{ts.data.sizes['frame']} frames of {ts.data.sizes['y']} x {ts.data.sizes['x']} px at {ts.pixel_size:.3f} A")
    return ts


MOVIES = typer.Argument(..., help="Folder or bucket prefix holding the movies (MRC/TIFF) named in the mdoc.")
MDOC = typer.Option(..., "--mdoc", help="SerialEM .mdoc of the tilt series.")
PIXEL = typer.Option(None, "--pixel-size", help="Pixel size (A), if the mdoc has none.")
EXPOSURE = typer.Option(None, "--exposure", help="Exposure per tilt (e/A^2), overriding the mdoc's ExposureDose.")
DARK = typer.Option(0.3, "--dark-fraction", help="Drop tilts darker than this fraction of the median tilt.")
GAIN = typer.Option(None, "--gain", help="Gain reference (MRC/TIFF) that multiplies the frames; default: the mdoc's GainReference beside the movies.")
GAIN_ROTATE = typer.Option(0, "--gain-rotate", help="Rotate the gain counter-clockwise by 0, 90, 180 or 270 deg (MotionCor2 -RotGain 0..3).")
GAIN_FLIP = typer.Option("none", "--gain-flip", help="Then flip it: none, y (upside down, -FlipGain 1) or x (left-right, -FlipGain 2).")
DEFECTS = typer.Option(None, "--defects", help="Defect map (MRC/TIFF, nonzero = bad pixel); bad pixels take the mean of good neighbours.")
HOT = typer.Option(False, "--detect-hot-pixels", help="Also fill pixels whose frame sum lies --hot-pixel-sigma robust sigmas above the median.")
HOT_SIGMA = typer.Option(10.0, "--hot-pixel-sigma", help="Threshold of --detect-hot-pixels (robust sigmas).")


@app.command()
@guarded(inputs=("movies", "mdoc", "gain", "defects"), outputs=("out_url",))
def assemble(
    movies: str = MOVIES,
    out_url: str = typer.Argument(..., help="Output tilt series (OME-Zarr) of the plain frame sums."),
    mdoc: str = MDOC,
    pixel_size: Optional[float] = PIXEL,
    exposure: Optional[float] = EXPOSURE,
    dark_fraction: float = DARK,
    gain: Optional[str] = GAIN,
    gain_rotate: int = GAIN_ROTATE,
    gain_flip: str = GAIN_FLIP,
    defects: Optional[str] = DEFECTS,
    detect_hot_pixels: bool = HOT,
    hot_pixel_sigma: float = HOT_SIGMA,
    overwrite: bool = OVERWRITE,
    anon: bool = ANON,
    endpoint_url: Optional[str] = ENDPOINT,
) -> None:
    """Assemble movies + mdoc into a tilt series sorted by angle (frames gain-corrected and summed without
    alignment; use `cryocloud motion` to align them); dark or empty tilts are dropped with their reason."""
    read, write = read_write_options(endpoint_url, anon)
    parsed = read_mdoc(mdoc, storage_options=read)
    detector = _detector(movies, parsed, read, gain=gain, gain_rotate=gain_rotate, gain_flip=gain_flip, defects=defects,
                         detect_hot_pixels=detect_hot_pixels, hot_pixel_sigma=hot_pixel_sigma)
    frames = _assembled(movies, parsed, pixel_size, exposure, dark_fraction, read)
    summed = summed_like(frames, detector_corrected_sums(frames.data.data, detector))
    write_tilt_series(summed, out_url, overwrite=overwrite, storage_options=write, metadata={"stage": "assemble", "parameters": {"dark_fraction": dark_fraction}})
    console.print(f"wrote {out_url}")


@app.command()
@guarded(inputs=("movies", "mdoc", "gain", "defects"), outputs=("out_url",))
def motion(
    movies: str = MOVIES,
    out_url: str = typer.Argument(..., help="Output tilt series (OME-Zarr) of the aligned sums."),
    mdoc: str = MDOC,
    bfactor: float = typer.Option(150.0, "--bfactor", help="B-factor (A^2) of the alignment filter."),
    iterations: int = typer.Option(10, "--iterations", help="Maximum alignment iterations."),
    max_shift: Optional[float] = typer.Option(None, "--max-shift", help="Search radius (A); default a quarter of the image."),
    patches: Optional[str] = typer.Option(None, "--patches", help="Local motion patch grid, e.g. 3x3 (default: global only)."),
    pixel_size: Optional[float] = PIXEL,
    exposure: Optional[float] = EXPOSURE,
    dark_fraction: float = DARK,
    gain: Optional[str] = GAIN,
    gain_rotate: int = GAIN_ROTATE,
    gain_flip: str = GAIN_FLIP,
    defects: Optional[str] = DEFECTS,
    detect_hot_pixels: bool = HOT,
    hot_pixel_sigma: float = HOT_SIGMA,
    dose_weight_frames: bool = typer.Option(False, "--dose-weight-frames", help="Dose-weight the sums per frame (Grant & Grigorieff 2015)."),
    dose_per_frame: Optional[float] = typer.Option(None, "--dose-per-frame", help="e/A^2 per frame (default: the tilt's exposure / frames)."),
    overwrite: bool = OVERWRITE,
    anon: bool = ANON,
    endpoint_url: Optional[str] = ENDPOINT,
) -> None:
    """Motion-correct movies: writes the sum, even/odd-frame sums, the shifts (CSV) and drift traces (PNG).
    Frames are gain-corrected and their bad pixels filled first; a movie whose frames still show a fixed
    detector pattern is named in a warning."""
    grid = None
    if patches:
        try:
            grid = tuple(int(v) for v in patches.lower().split("x"))
            assert len(grid) == 2
        except (ValueError, AssertionError):
            raise ModelError("--patches", f"expected NYxNX such as 3x3, got {patches!r}") from None
    read, write = read_write_options(endpoint_url, anon)
    parsed = read_mdoc(mdoc, storage_options=read)
    detector = _detector(movies, parsed, read, gain=gain, gain_rotate=gain_rotate, gain_flip=gain_flip, defects=defects,
                         detect_hot_pixels=detect_hot_pixels, hot_pixel_sigma=hot_pixel_sigma, dose_per_frame=dose_per_frame)
    frames = _assembled(movies, parsed, pixel_size, exposure, dark_fraction, read)
    result = motion_correct(frames, bfactor_a2=bfactor, iterations=iterations, max_shift_a=max_shift, patches=grid, detector=detector,
                            dose_weight_frames=dose_weight_frames, dose_per_frame=dose_per_frame)
    params = {"bfactor_a2": bfactor, "iterations": iterations, "max_shift_a": max_shift, "patches": patches,
              "gain": gain, "gain_rotate": gain_rotate, "gain_flip": gain_flip, "defects": defects,
              "hot_pixel_sigma": hot_pixel_sigma if detect_hot_pixels else None, "dose_weight_frames": dose_weight_frames,
              "dose_per_frame": dose_per_frame}
    for ts, url in ((result.sum, out_url), (result.even, sibling(out_url, "_even.zarr")), (result.odd, sibling(out_url, "_odd.zarr"))):
        write_tilt_series(ts, url, overwrite=overwrite, storage_options=write, metadata={"stage": "motion", "parameters": params})
    shifts, pattern = result.shifts.compute(), result.fixed_pattern.compute()
    angles = shifts.coords["tilt_angle"].values
    for t in range(shifts.sizes["tilt"]):
        max_shift_px = float(np.sqrt((shifts.values[t] ** 2).sum(axis=1)).max()) / frames.pixel_size
        evidence = FixedPattern(float(pattern.values[t]), max_shift_px)
        if evidence.flagged:
            console.print("warning: " + evidence.message(f"tilt {t} ({angles[t]:.1f} deg)"))
    table = pd.DataFrame(
        [(t, float(shifts.coords["tilt_angle"][t]), f, *shifts.values[t, f]) for t in range(shifts.sizes["tilt"]) for f in range(shifts.sizes["frame"])],
        columns=["tilt", "tilt_angle", "frame", "shift_x_a", "shift_y_a"],
    )
    write_text(sibling(out_url, "_shifts.csv"), table.to_csv(index=False), overwrite=overwrite, storage_options=write)
    with open_url(sibling(out_url, "_drift.png"), "wb", storage_options=write) as f:
        f.write(png_bytes(drift_figure(shifts)))
    console.print(f"wrote {out_url} (+ _even, _odd, _shifts.csv, _drift.png)")


@app.command()
@guarded(inputs=("in_url",), outputs=("out_url", "ctffind"))
def ctf(
    in_url: str = typer.Argument(..., help="Tilt series (OME-Zarr)."),
    out_url: Optional[str] = typer.Option(None, "--output", help="Also write the tilt series with its defocus values (OME-Zarr)."),
    ctffind: Optional[str] = typer.Option(None, "--ctffind", help="CTFFIND4 text output (default: <input stem>_ctffind4.txt)."),
    min_defocus: float = typer.Option(5000.0, "--min-defocus", help="Defocus search range start (A)."),
    max_defocus: float = typer.Option(70000.0, "--max-defocus", help="Defocus search range end (A)."),
    box: int = typer.Option(256, "--box", help="Spectrum tile size (pixels)."),
    min_res: float = typer.Option(30.0, "--min-res", help="Lowest resolution fitted (A)."),
    max_res: float = typer.Option(5.0, "--max-res", help="Highest resolution fitted (A; at most 0.95 Nyquist)."),
    series_window: float = typer.Option(
        5000.0, "--series-window", min=0.0,
        help="Half-width (A) of the defocus window searched for tilts whose own fit shows no clear peak, around the series' "
             "defocus and widened to the spread of the clear tilts (those search the full range); 0: every tilt searches the full range.",
    ),
    check_handedness: bool = typer.Option(
        False, "--handedness",
        help="First check the sign of the tilt angles from the defocus difference across the tilt axis (right / flipped / "
             "undetermined; writes <stem>_handedness.json, and the verdict into --output's metadata).",
    ),
    fix_handedness: bool = typer.Option(
        False, "--fix-handedness",
        help="With the check: when the hand is flipped, negate the tilt angles before fitting the CTF; --output then holds "
             "the corrected series.",
    ),
    overwrite: bool = OVERWRITE,
    anon: bool = ANON,
    endpoint_url: Optional[str] = ENDPOINT,
) -> None:
    """Estimate defocus U/V and astigmatism per tilt; writes CTFFIND4 text and a figure (spectrum of
    the tilt nearest 0 deg with its fitted rings, defocus against tilt). Tilts whose fit is poor are
    named in a warning and in a `# Poor fits` comment of the CTFFIND4 text."""
    read, write = read_write_options(endpoint_url, anon)
    if out_url is None and is_portal_url(in_url):
        raise ModelError("--output", "the input is on the CryoET Data Portal (read-only): name an output for the results and figures", source=in_url)
    if fix_handedness and out_url is None:
        raise ModelError("--output", "--fix-handedness writes the corrected tilt series there (the input is never written); name one")
    ts = read_tilt_series(in_url, storage_options=read)
    search = CtfSearch(box=box, defocus_range_a=(min_defocus, max_defocus), min_resolution_a=min_res, max_resolution_a=max_res,
                       series_window_a=series_window or None)
    base = out_url or in_url
    handedness = None
    if check_handedness or fix_handedness:
        handedness = estimate_handedness(ts, search=search, quiet=False)
        console.print(handedness.describe())
        write_text(sibling(base, "_handedness.json"), handedness.to_json(), overwrite=overwrite, storage_options=write)
        if fix_handedness and handedness.verdict == "flipped":
            ts = with_negated_tilt_angles(ts)
            console.print("tilt angles negated (--fix-handedness): the CTF is fitted, and --output written, with them")
    result = estimate_ctf(ts, search=search, quiet=False)
    text_url = ctffind or sibling(base, "_ctffind4.txt")
    text = format_ctffind(result.table, pixel_size_a=ts.pixel_size, microscope=ts.microscope, input_name=in_url, box=box,
                          resolution_range_a=search.resolution_range_a(ts.pixel_size), defocus_range_a=(min_defocus, max_defocus))
    write_text(text_url, text, overwrite=overwrite, storage_options=write)
    if out_url:
        write_tilt_series(result.tilt_series, out_url, overwrite=overwrite, storage_options=write,
                          metadata={"stage": "ctf", "parameters": {"box": box, "defocus_range_a": [min_defocus, max_defocus],
                                                                   "series_window_a": series_window or None,
                                                                   "fix_handedness": fix_handedness},
                                    **({} if handedness is None else {"handedness": handedness.summary()})})
    i = int(np.argmin(np.abs(ts.tilt_angles)))
    image = np.asarray(ts.data.data[i])
    fit = CtfFit(*(float(result.table[c][i]) for c in FIT_COLUMNS))
    with open_url(sibling(base, "_ctf.png"), "wb", storage_options=write) as f:
        f.write(png_bytes(spectrum_figure(image, fit, ts.pixel_size, microscope=ts.microscope, tilt_deg=float(ts.tilt_angles[i]),
                                          tilt_axis_angle_deg=ts.tilt_axis_angle, box=box)))
    with open_url(sibling(base, "_defocus.png"), "wb", storage_options=write) as f:
        f.write(png_bytes(defocus_figure(result.table)))
    console.print(result.table.round(3).to_string(index=False))
    console.print(f"wrote {text_url}")


@app.command("ctf-correct")
@guarded(inputs=("in_url", "ctffind"), outputs=("out_url",))
def ctf_correct(
    in_url: str = typer.Argument(..., help="Tilt series (OME-Zarr) with defocus values, or give --ctffind."),
    out_url: str = typer.Argument(..., help="Corrected tilt series (OME-Zarr)."),
    ctffind: Optional[str] = typer.Option(None, "--ctffind", help="CTFFIND4 text with one row per tilt (stack order)."),
    mode: str = typer.Option("flip", "--mode", help="flip (phase flipping) or multiply (CTF multiplication)."),
    defocus_tolerance: float = typer.Option(500.0, "--defocus-tolerance", help="Largest defocus change within a strip (A)."),
    overwrite: bool = OVERWRITE,
    anon: bool = ANON,
    endpoint_url: Optional[str] = ENDPOINT,
) -> None:
    """CTF correction in strips parallel to the tilt axis."""
    if mode not in ("flip", "multiply"):
        raise ModelError("--mode", f"expected flip or multiply, got {mode!r}")
    read, write = read_write_options(endpoint_url, anon)
    ts = read_tilt_series(in_url, storage_options=read)
    if ctffind:
        loc, text = read_text(ctffind, storage_options=read)
        ts = apply_ctf_table(ts, parse_ctffind(text, loc.url), source=loc.url)
    out = (phase_flip if mode == "flip" else ctf_multiply)(ts, defocus_tolerance_a=defocus_tolerance)
    write_tilt_series(out, out_url, overwrite=overwrite, storage_options=write,
                      metadata={"stage": "ctf-correct", "parameters": {"mode": mode, "defocus_tolerance_a": defocus_tolerance}})
    console.print(f"wrote {out_url}")


@app.command("dose-weight")
@guarded(inputs=("in_url",), outputs=("out_url",))
def dose_weight(
    in_url: str = typer.Argument(..., help="Tilt series (OME-Zarr) with exposure and pre-exposure per tilt."),
    out_url: str = typer.Argument(..., help="Dose-weighted tilt series (OME-Zarr)."),
    overwrite: bool = OVERWRITE,
    anon: bool = ANON,
    endpoint_url: Optional[str] = ENDPOINT,
) -> None:
    """Apply the exposure filter of each tilt (from its pre-exposure and exposure)."""
    read, write = read_write_options(endpoint_url, anon)
    ts = read_tilt_series(in_url, storage_options=read)
    write_tilt_series(dose_weight_series(ts), out_url, overwrite=overwrite, storage_options=write, metadata={"stage": "dose-weight"})
    console.print(f"wrote {out_url}")
