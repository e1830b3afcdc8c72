"""`cryocloud match` (template matching into OME-Zarr maps) and `cryocloud extract-peaks` (particle lists)."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional, Tuple

import numpy as np
import typer
from rich.console import Console

from cryocloud.cli.app import app
from cryocloud.cli.options import guarded, storage_options
from cryocloud.errors import ModelError
from cryocloud.pick.angles import crowther_increment, parse_angle_list, uniform_rotations
from cryocloud.pick.figures import write_score_figures
from cryocloud.pick.formats import format_from_name, write_picks
from cryocloud.pick.match import MatchSettings
from cryocloud.pick.peaks import extract_peaks
from cryocloud.pick.results import block_moments_of, read_match, run_match
from cryocloud.pick.spectrum import noise_spectrum, null_spectrum
from cryocloud.pick.template import check_fits, map_from_model, prepare_template, read_map
from cryocloud.pick.weighting import TiltWeighting
from cryocloud.progress import compute
from cryocloud.store import open_url, read_tilt_series, read_volume, require_contrast

console = Console(highlight=False, stderr=True)
MODEL_SUFFIXES = (".cif", ".cif.gz", ".mmcif", ".pdb", ".pdb.gz", ".ent")


def _tilts(tilt_series: Optional[str], tilt_range: Optional[str], tomogram, options) -> TiltWeighting | None:
    if tilt_series:
        return TiltWeighting.from_tilt_series(read_tilt_series(tilt_series, storage_options=options))
    if tilt_range:
        try:
            lo, hi, step = (float(v) for v in tilt_range.split(","))
        except ValueError:
            raise ModelError("tilt_range", f"expected MIN,MAX,STEP in degrees, got {tilt_range!r}") from None
        return TiltWeighting.wedge(lo, hi, step)
    if tomogram.tilt_angles is not None:
        return TiltWeighting(np.asarray(tomogram.tilt_angles), microscope=tomogram.microscope)
    return None


def _fiducials(url: str, shape: tuple[int, ...], sigma: float, options: dict) -> np.ndarray:
    """Fiducial voxels (M, 3) of the searched tomogram at `url`, which must have the score map's `shape`."""
    from cryocloud.segment.fiducials import fiducial_voxels

    tomo = read_volume(url, storage_options=options)
    if tuple(tomo.shape) != shape:
        raise ModelError("avoid_fiducials", f"{url}: shape {tuple(tomo.shape)}, expected the score map's {shape} (give the searched tomogram)")
    return fiducial_voxels(tomo.data.data, sigma=sigma)


def _mask_voxels(url: str, shape: tuple[int, ...], options: dict) -> np.ndarray:
    """Voxel indices (M, 3) where the label image / mask at `url` (the score map's `shape`) is > 0."""
    from cryocloud.segment.components import voxels_where

    volume = read_volume(url, storage_options=options)
    if tuple(volume.shape) != shape:
        raise ModelError("avoid_mask", f"{url}: shape {tuple(volume.shape)}, expected the score map's {shape}")
    return voxels_where(volume.data.data > 0, description="mask voxels")


def _null_threshold(url: str, summary: dict, min_distance_voxels: float, n_false: float | None, options: dict) -> tuple[float, object]:
    """(empirical cut-off (cryocloud.pick.null), score map) of the finished null search at `url`,
    which must be `summary`'s search (same fingerprint) on a volume of the same shape."""
    from cryocloud.pick.null import check_same_search, empirical_threshold

    if not n_false:
        raise ModelError("null_match", "sets the false-alarm cut-off; give --n-false > 0 with it")
    null_scores, _, _, null_summary = read_match(url, storage_options=options)
    check_same_search(summary, null_summary, source=f"{url}/match.json")
    return empirical_threshold(null_scores, min_distance_voxels=min_distance_voxels, n_false=n_false, source=url), null_scores


def _on_grid(urls: tuple[str, ...], tomo, options: dict, field: str) -> tuple:
    """The volumes at `urls` (half tomograms, a null volume), which must lie on the tomogram's grid
    (shape and voxel size); a ModelError naming `field` and the file otherwise."""
    volumes = tuple(read_volume(url, storage_options=options) for url in urls)
    for url, volume in zip(urls, volumes):
        if volume.shape != tomo.shape or abs(volume.pixel_size - tomo.pixel_size) > 1e-3 * tomo.pixel_size:
            raise ModelError(field, f"{url}: shape {volume.shape} at {volume.pixel_size} A, expected the tomogram's {tomo.shape} at {tomo.pixel_size} A")
    return volumes


@app.command()
@guarded(inputs=("tomogram_url", "template_path", "angle_list", "tilt_series", "whiten_halves", "whiten_null", "tomogram_mask"), outputs=("out_url",))
def match(
    tomogram_url: str = typer.Argument(..., help="Tomogram: OME-Zarr or MRC (local path, file:// or s3://)."),
    template_path: str = typer.Argument(..., help="Template: MRC / EM map, or an atomic model (.cif/.pdb, local)."),
    out_url: str = typer.Argument(..., help="Output folder: scores.zarr, orientation.zarr, angles.npy, match.json."),
    template_voxel_size: Optional[float] = typer.Option(None, "--template-voxel-size", help="Template voxel size (A); EM files need it."),
    angular_increment: Optional[float] = typer.Option(None, "--angular-increment", help="Degrees (default: Crowther, resolution / diameter)."),
    symmetry: str = typer.Option("C1", "--symmetry", help="Particle symmetry: C1, Cn, Dn, T, O."),
    angle_list: Optional[str] = typer.Option(None, "--angle-list", help="Custom rotations: text, RELION rot tilt psi or 9 matrix values a line."),
    resolution: Optional[float] = typer.Option(None, "--resolution", help="Search resolution / low-pass (A; default 3 voxels)."),
    mask_radius: Optional[float] = typer.Option(None, "--mask-radius", help="Spherical mask radius (A; default from the template)."),
    non_spherical_mask: bool = typer.Option(False, "--non-spherical-mask", help="Mask following the template's shape (slower)."),
    invert: bool = typer.Option(False, "--invert", help="Invert the template's contrast."),
    tilt_series: Optional[str] = typer.Option(None, "--tilt-series", help="Tilt series (OME-Zarr) for the per-tilt wedge, CTF and dose weights."),
    tilt_range: Optional[str] = typer.Option(None, "--tilt-range", help="MIN,MAX,STEP (deg): a plain wedge when no tilt series is given."),
    ctf: str = typer.Option("signed", "--ctf", help="signed (not CTF-corrected) | abs (phase-flipped) | none."),
    whiten: bool = typer.Option(False, "--whiten", help="Spectral whitening by the tomogram's own power spectrum (a poor proxy for its noise)."),
    whiten_halves: Optional[Tuple[str, str]] = typer.Option(
        None, "--whiten-halves", metavar="EVEN ODD",
        help="Spectral whitening by the noise spectrum of the even/odd half tomograms (the tomogram is their sum or mean).",
    ),
    whiten_null: Optional[str] = typer.Option(
        None, "--whiten-null", metavar="NULL",
        help="Spectral whitening by the power spectrum of the tomogram's null volume (for a deconvolved tomogram; after Noise2Noise it "
        "raised false picks on twins).",
    ),
    noise_chunk: int = typer.Option(64, "--noise-chunk", help="Cube edge (voxels) for the half tomograms' (null volume's) noise spectrum."),
    defocus_gradient: bool = typer.Option(
        True, "--defocus-gradient/--no-defocus-gradient", help="CTF weight at each sub-volume's own defocus (depth, distance from the tilt axis)."
    ),
    background: bool = typer.Option(False, "--background-correction", help="Subtract a phase-randomised template search's excess score (2x the time)."),
    subvolume: int = typer.Option(128, "--subvolume", help="FFT box edge (voxels, overlap included)."),
    batch_size: int = typer.Option(1000, "--batch-size", help="Rotations per task."),
    tomogram_mask: Optional[str] = typer.Option(None, "--tomogram-mask", help="OME-Zarr / MRC mask: search where > 0."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished result."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="S3-compatible endpoint."),
    anon: bool = typer.Option(False, "--anon", help="Anonymous read access (public buckets)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Dask scheduler address (default: cryocloud.cluster)."),
) -> None:
    """Template matching; rerun the same command to resume an interrupted job."""
    from cryocloud.cluster import describe, session

    if ctf not in ("signed", "abs", "none"):
        raise ModelError("ctf", f"expected signed, abs or none, got {ctf!r}")
    read_options, write_options = storage_options(endpoint_url, anon=anon), storage_options(endpoint_url)
    tomo = read_volume(tomogram_url, storage_options=read_options)
    px = tomo.pixel_size
    if template_path.lower().endswith(MODEL_SUFFIXES):
        volume, template_px = map_from_model(template_path, px), px
    else:
        volume, template_px = read_map(template_path, voxel_size=template_voxel_size, storage_options=read_options)
    check_fits(volume.shape, template_px, tomo.shape, px, source=template_path)
    template = prepare_template(volume, template_px, px, mask_radius_a=mask_radius, non_spherical=non_spherical_mask, invert=invert, source=template_path)
    if whiten_halves is not None and whiten_null is not None:
        raise ModelError("whiten_null", "give one noise source for the whitening: --whiten-halves or --whiten-null")
    settings = MatchSettings(
        resolution_a=resolution, subvolume=subvolume, batch_size=batch_size, ctf=ctf,
        whiten=whiten or whiten_halves is not None or whiten_null is not None, defocus_gradient=defocus_gradient, background=background,
    )
    halves = None if whiten_halves is None else _on_grid(whiten_halves, tomo, read_options, "whiten_halves")
    null = None if whiten_null is None else _on_grid((whiten_null,), tomo, read_options, "whiten_null")[0]
    if angle_list:
        with open_url(angle_list, "r", storage_options=read_options) as f:
            rotations = parse_angle_list(f.read(), source=angle_list)
    else:
        increment = angular_increment or crowther_increment(resolution or 3.0 * px, 2.0 * template.radius * px)
        rotations = uniform_rotations(increment, symmetry)
        console.print(f"angular increment {increment:.2f} deg, symmetry {symmetry}: {len(rotations):,} rotations")
    mask = None if tomogram_mask is None else _on_grid((tomogram_mask,), tomo, read_options, "tomogram_mask")[0].data > 0
    tilts = _tilts(tilt_series, tilt_range, tomo, read_options)
    with session(scheduler) as client:
        console.print(describe(client))
        require_contrast(tomo.data.data, tomogram_url, what="the tomogram")
        if mask is not None and not compute(mask.data.any(), quiet=True)[0]:
            raise ModelError("tomogram_mask", "has no voxel > 0; expected the region to search", source=tomogram_mask)
        if halves is not None:
            settings = replace(settings, noise=noise_spectrum(*halves, chunk=noise_chunk))
        if null is not None:
            settings = replace(settings, noise=null_spectrum(null, chunk=noise_chunk))
        summary = run_match(
            tomo, template, rotations, out_url, tilts=tilts, settings=settings, tomogram_mask=mask, overwrite=overwrite, storage_options=write_options,
            description={"tomogram": tomogram_url, "template": template_path, "symmetry": symmetry, "whiten_halves": list(whiten_halves or []), "whiten_null": whiten_null},
        )
    console.print(f"{out_url}: {summary['n_orientations']:,} orientations, score std {summary['score_std']:.4f}")


@app.command("extract-peaks")
@guarded(inputs=("match_url", "avoid_fiducials", "avoid_mask", "null_match"), outputs=("out_url",))
def extract_peaks_cmd(
    match_url: str = typer.Argument(..., help="Output folder of `cryocloud match`."),
    out_url: str = typer.Argument(..., help="Particle list: .ndjson (portal), .star (RELION 5), .json (copick) or .csv."),
    format: Optional[str] = typer.Option(None, "--format", help="ndjson | star | copick | csv (default from the name)."),
    min_distance: Optional[float] = typer.Option(
        None, "--min-distance", help="Minimum distance between picks (A; default the particle's diameter recorded by `match`, for older results the mask radius).",
    ),
    n_false: Optional[float] = typer.Option(1.0, "--n-false", help="Expected false positives of the statistical cut-off (0: none)."),
    number: Optional[int] = typer.Option(None, "--number", help="Keep at most this many particles."),
    local_sigma: str = typer.Option(
        "slab", "--local-sigma",
        help="Score sigma of the cut-off: global (all scores), block (each sub-volume's own), slab (each z row of sub-volumes).",
    ),
    sigma_floor: bool = typer.Option(True, "--sigma-floor/--no-sigma-floor", help="A local sigma is never taken below the global one."),
    object_name: str = typer.Option("particle", "--object-name", help="Class / copick object name."),
    avoid_fiducials: Optional[str] = typer.Option(
        None, "--avoid-fiducials", help="The searched tomogram: no picks within a particle radius of its gold fiducials.",
    ),
    fiducial_sigma: float = typer.Option(20.0, "--fiducial-sigma", help="Fiducial voxels lie beyond the tomogram's median +- this many robust s.d."),
    avoid_mask: Optional[str] = typer.Option(
        None, "--avoid-mask", help="Label image or mask on the searched grid (e.g. `segment membranes` output): no pick centred where it is > 0.",
    ),
    null_match: Optional[str] = typer.Option(
        None, "--null-match", help="`cryocloud match` output of the same search on the tomogram's null volume (half the even/odd "
        "difference, denoised alike: `denoise predict --difference`): the cut-off is never below its empirical one.",
    ),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Write <out>_slices.png and <out>_histogram.png."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="S3-compatible endpoint."),
) -> None:
    """Pick particles from a score map: false-alarm cut-off and/or a fixed number, non-maximum suppression."""
    options = storage_options(endpoint_url)
    fmt = format or format_from_name(out_url)
    scores, orientation, rotations, summary = read_match(match_url, storage_options=options)
    px = float(summary["voxel_size"])
    particle_radius_a = float(summary.get("particle_radius_voxels", summary["template_radius_voxels"] / 2)) * px
    radius_a = min_distance or 2.0 * particle_radius_a
    shape = tuple(int(n) for n in summary["shape_zyx"])
    gold = None if avoid_fiducials is None else _fiducials(avoid_fiducials, shape, fiducial_sigma, options)
    avoid = [] if gold is None else [(gold, particle_radius_a)]
    if avoid_mask is not None:
        avoid.append((_mask_voxels(avoid_mask, shape, options), 0.5 * px))
    null, null_scores = (None, None) if null_match is None else _null_threshold(null_match, summary, radius_a / px, n_false, options)
    particles, threshold = extract_peaks(
        scores, orientation, rotations, radius_a=radius_a, n_false=n_false or None, number=number,
        score_std=summary["score_std"], n_search=summary["n_search"], block_moments=block_moments_of(summary, f"{match_url}/match.json"),
        local_sigma=local_sigma, sigma_floor=sigma_floor, tomogram=str(summary.get("tomogram", "")), class_name=object_name,
        avoid=avoid, null_threshold=null,
    )
    write_picks(particles, out_url, fmt, storage_options=options, pixel_size=px, shape_zyx=shape, object_name=object_name)
    cut = "none" if threshold is None else f"{threshold:.4f}"
    empirical = "" if null is None else f", the null search's {null:.4f}"
    console.print(f"{out_url}: {len(particles)} particles (cut-off {cut}{empirical}, at least {radius_a:.1f} A apart)")
    if figures:
        write_score_figures(scores, particles, threshold, out_url.rsplit(".", 1)[0], radius_a=particle_radius_a, title=match_url,
                            null_scores=null_scores, null_threshold=null, storage_options=options)
