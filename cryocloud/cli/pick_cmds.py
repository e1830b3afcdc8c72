"""`cryocloud match` (template matching into OME-Zarr maps) and `cryocloud extract-peaks` (particle lists)."""

from __future__ import annotations

import json
from typing import Optional, Tuple

import numpy as np
import typer
from rich.console import Console

from cryocloud.cli.app import app
from cryocloud.cli.options import guarded, storage_options
from cryocloud.errors import ModelError
from cryocloud.model import Tomogram
from cryocloud.pick.angles import parse_angle_list
from cryocloud.pick.figures import write_score_figures
from cryocloud.pick.formats import format_from_name, write_picks
from cryocloud.pick.job import MatchJob, PeaksJob, validated
from cryocloud.pick.results import read_search, run_match
from cryocloud.pick.template import read_template
from cryocloud.pick.weighting import TiltWeighting
from cryocloud.progress import compute
from cryocloud.store import is_mrc, open_url, read_tilt_series, read_volume, require_contrast

console = Console(highlight=False, stderr=True)


def _match_default(name: str):
    return MatchJob.model_fields[name].default


def _peaks_default(name: str):
    return PeaksJob.model_fields[name].default


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


def _read_level(url: str, level: int, options: dict | None) -> Tomogram:
    """The volume at `url` at pyramid `level`, or an MRC file's one level (the callers check its grid)."""
    return read_volume(url, level=0 if is_mrc(url) else level, storage_options=options)


def _on_grid(urls: tuple[str, ...], tomo, level: int, options: dict, field: str) -> tuple:
    """The volumes at `urls` (half tomograms, a null volume, a mask) at pyramid `level`, which must lie on
    the tomogram's grid (shape and voxel size); a ModelError naming `field` and the file otherwise."""
    volumes = tuple(_read_level(url, level, options) for url in urls)
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
    level: int = typer.Option(0, "--level", min=0, help="Pyramid level of the OME-Zarr tomogram, halves, null volume and mask to search (1 = binned by 2)."),
    template_voxel_size: Optional[float] = typer.Option(None, "--template-voxel-size", help="Template voxel size (A); EM files need it."),
    angular_increment: str = typer.Option(
        str(_match_default("angular_increment_deg")), "--angular-increment", help="Degrees, or crowther (resolution / particle diameter)."),
    symmetry: str = typer.Option(_match_default("symmetry"), "--symmetry", help="Particle symmetry: C1, Cn, Dn, T, O."),
    angle_list: Optional[str] = typer.Option(None, "--angle-list", help="Custom rotations: text, RELION rot tilt psi or 9 matrix values a line."),
    resolution: Optional[float] = typer.Option(None, "--resolution", help="Search resolution / low-pass (A; default 2.5 voxels)."),
    mask_radius: Optional[float] = typer.Option(None, "--mask-radius", help="Spherical mask radius (A; default from the template)."),
    non_spherical_mask: bool = typer.Option(_match_default("non_spherical_mask"), "--non-spherical-mask", help="Mask following the template's shape (slower)."),
    invert: bool = typer.Option(_match_default("invert"), "--invert", help="Invert the template's contrast."),
    tilt_series: Optional[str] = typer.Option(None, "--tilt-series", help="Tilt series (OME-Zarr) for the per-tilt wedge, CTF and dose weights."),
    tilt_range: Optional[str] = typer.Option(None, "--tilt-range", help="MIN,MAX,STEP (deg): a plain wedge when no tilt series is given."),
    ctf: str = typer.Option(_match_default("ctf"), "--ctf", help="signed (not CTF-corrected) | abs (phase-flipped) | none."),
    whiten: str = typer.Option(
        _match_default("whiten"), "--whiten",
        help="noise: by the noise spectrum of --whiten-halves / --whiten-null when given (else none); tomogram: by the tomogram's own power "
        "spectrum (a poor proxy for its noise); none.",
    ),
    whiten_halves: Optional[Tuple[str, str]] = typer.Option(
        None, "--whiten-halves", metavar="EVEN ODD",
        help="Spectral whitening by the noise spectrum of the even/odd half tomograms (the tomogram is their sum or mean).",
    ),
    whiten_null: Optional[str] = typer.Option(
        None, "--whiten-null", metavar="NULL",
        help="Spectral whitening by the power spectrum of the tomogram's null volume (for a deconvolved tomogram; after Noise2Noise it "
        "raised false picks on twins).",
    ),
    noise_chunk: int = typer.Option(_match_default("noise_chunk"), "--noise-chunk", help="Cube edge (voxels) for the half tomograms' (null volume's) noise spectrum."),
    defocus_gradient: bool = typer.Option(
        _match_default("defocus_gradient"), "--defocus-gradient/--no-defocus-gradient",
        help="CTF weight at each sub-volume's own defocus (depth, distance from the tilt axis).",
    ),
    background: bool = typer.Option(_match_default("background"), "--background-correction", help="Subtract a phase-randomised template search's excess score (2x the time)."),
    subvolume: int = typer.Option(_match_default("subvolume"), "--subvolume", help="FFT box edge (voxels, overlap included)."),
    batch_size: int = typer.Option(_match_default("batch_size"), "--batch-size", help="Rotations per task."),
    tomogram_mask: Optional[str] = typer.Option(None, "--tomogram-mask", help="OME-Zarr / MRC mask: search where > 0."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished result."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="S3-compatible endpoint."),
    anon: bool = typer.Option(False, "--anon", help="Anonymous read access (public buckets)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Dask scheduler address (default: cryocloud.cluster)."),
) -> None:
    """Template matching (cryocloud.pick.job.MatchJob); rerun the same command to resume an interrupted job."""
    from cryocloud.cluster import describe, session

    job = validated(MatchJob, dict(
        angular_increment_deg=angular_increment, symmetry=symmetry, resolution_a=resolution, mask_radius_a=mask_radius,
        non_spherical_mask=non_spherical_mask, invert=invert, ctf=ctf, whiten=whiten, defocus_gradient=defocus_gradient,
        background=background, subvolume=subvolume, batch_size=batch_size, noise_chunk=noise_chunk,
    ))
    read_options, write_options = storage_options(endpoint_url, anon=anon), storage_options(endpoint_url)
    tomo = read_volume(tomogram_url, level=level, storage_options=read_options)
    volume, template_px = read_template(template_path, tomo.pixel_size, template_voxel_size=template_voxel_size, storage_options=read_options)
    template = job.prepare(volume, template_px, tomo.pixel_size, tomogram_shape=tomo.shape, source=template_path)
    halves = None if whiten_halves is None else _on_grid(whiten_halves, tomo, level, read_options, "whiten_halves")
    null = None if whiten_null is None else _on_grid((whiten_null,), tomo, level, read_options, "whiten_null")[0]
    if angle_list:
        with open_url(angle_list, "r", storage_options=read_options) as f:
            rotations = parse_angle_list(f.read(), source=angle_list)
    else:
        rotations = job.rotations(template)
        console.print(f"angular increment {job.increment(template):.2f} deg, symmetry {job.symmetry}: {len(rotations):,} rotations")
    mask = None if tomogram_mask is None else _on_grid((tomogram_mask,), tomo, level, read_options, "tomogram_mask")[0].data > 0
    tilts = _tilts(tilt_series, tilt_range, tomo, read_options)
    with session(scheduler) as client:
        console.print(describe(client))
        require_contrast(tomo.data.data, tomogram_url, what="the tomogram")
        if mask is not None and not compute(mask.data.any(), quiet=True)[0]:
            raise ModelError("tomogram_mask", "has no voxel > 0; expected the region to search", source=tomogram_mask)
        summary = run_match(
            tomo, template, rotations, out_url, job=job, tilts=tilts, noise=job.noise(halves=halves, null=null), tomogram_mask=mask,
            overwrite=overwrite, storage_options=write_options,
            description={"tomogram": tomogram_url, "template": template_path, "pyramid_level": level, "whiten_halves": list(whiten_halves or []),
                         "whiten_null": whiten_null},
        )
    console.print(f"{out_url}: {summary['n_orientations']:,} orientations, score std {summary['score_std']:.4f}")


@app.command("extract-peaks")
@guarded(inputs=("match_url", "avoid_fiducials", "avoid_mask", "null_match", "tilt_series"), outputs=("out_url",))
def extract_peaks_cmd(
    match_url: str = typer.Argument(..., help="Output folder of `cryocloud match`."),
    out_url: str = typer.Argument(
        ..., help="Particle list: .ndjson (portal), .star (RELION 5 particles), .json (copick) or .csv; with --format relion5 a folder."),
    format: Optional[str] = typer.Option(
        None, "--format", help="ndjson | star | copick | csv (default from the name) | relion5: a RELION 5 set (optimisation_set.star, "
        "tomograms.star, tilt_series/NAME.star and .mrcs, particles.star; needs --tilt-series)."),
    tilt_series: Optional[str] = typer.Option(
        None, "--tilt-series", help="relion5: the tilt series the tomogram was reconstructed from (OME-Zarr, with its alignment and defocus)."),
    tomo_name: Optional[str] = typer.Option(None, "--tomo-name", help="rlnTomoName / particles' tomogram (default: the tilt series' or tomogram's file name)."),
    min_distance: Optional[float] = typer.Option(
        None, "--min-distance", help="Minimum distance between picks (A; default the particle's diameter recorded by `match`, for older results the mask radius).",
    ),
    n_false: Optional[float] = typer.Option(_peaks_default("n_false"), "--n-false", help="Expected false positives of the statistical cut-off (0: none)."),
    number: Optional[int] = typer.Option(None, "--number", help="Keep at most this many particles."),
    local_sigma: str = typer.Option(
        _peaks_default("local_sigma"), "--local-sigma",
        help="With --cutoff-method search-sigma, the score sigma of the cut-off: global (all scores), block (each sub-volume's own), "
        "slab (each z row of sub-volumes).",
    ),
    sigma_floor: bool = typer.Option(_peaks_default("sigma_floor"), "--sigma-floor/--no-sigma-floor", help="A local sigma is never taken below the global one."),
    cutoff_method: str = typer.Option(
        _peaks_default("cutoff_method"), "--cutoff-method",
        help="robust-sigma: the best-score map's median and lower-half sigma, each voxel one trial (holds on dense specimens); "
        "search-sigma: the sigma of every score evaluated, voxels x orientations as trials (with --local-sigma).",
    ),
    object_name: str = typer.Option("particle", "--object-name", help="Class / copick object name."),
    avoid_fiducials: Optional[str] = typer.Option(
        None, "--avoid-fiducials", help="The searched tomogram (read at the searched pyramid level): no picks within a particle radius of its gold fiducials.",
    ),
    fiducial_sigma: float = typer.Option(
        _peaks_default("fiducial_sigma"), "--fiducial-sigma", help="Fiducial voxels lie beyond the tomogram's median +- this many robust s.d."),
    avoid_mask: Optional[str] = typer.Option(
        None, "--avoid-mask", help="Label image or mask on the searched grid (e.g. `segment membranes` output, read at the searched pyramid "
        "level): no pick centred where it is > 0.",
    ),
    null_match: Optional[str] = typer.Option(
        None, "--null-match", help="`cryocloud match` output of the same search on the tomogram's null volume (half the even/odd "
        "difference, denoised alike: `denoise predict --difference`): the cut-off is never below its empirical one.",
    ),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Write <out>_slices.png and <out>_histogram.png (<out>_cutoff.json, "
                                 "what set the cut-off, is always written)."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="S3-compatible endpoint."),
) -> None:
    """Pick particles from a score map (cryocloud.pick.job.PeaksJob): false-alarm cut-off and/or a fixed number, non-maximum suppression."""
    from cryocloud.pipeline.batch import series_name

    options = storage_options(endpoint_url)
    fmt = format or format_from_name(out_url)
    if fmt == "relion5" and tilt_series is None:
        raise ModelError("tilt_series", "--format relion5 needs --tilt-series (the tilt images and their alignment)")
    job = validated(PeaksJob, dict(n_false=n_false or None, number=number, local_sigma=local_sigma, sigma_floor=sigma_floor,
                                   cutoff_method=cutoff_method, min_distance_a=min_distance, fiducial_sigma=fiducial_sigma))
    maps, summary = read_search(match_url, storage_options=options)
    level = int(summary.get("pyramid_level", 0))
    searched = None if avoid_fiducials is None else _read_level(avoid_fiducials, level, options)
    mask = None if avoid_mask is None else _read_level(avoid_mask, level, options).data
    null = null_scores = None
    if null_match is not None:
        null_maps, _ = read_search(null_match, storage_options=options)
        null, null_scores = job.null_threshold(maps, null_maps, source=null_match), null_maps.scores
    avoid = job.avoided(maps, searched=searched, mask=mask, sources=(avoid_fiducials, avoid_mask))
    name = tomo_name or series_name(tilt_series or str(summary.get("tomogram", "")))
    if fmt in ("star", "relion5") and not name.strip():  # RELION needs rlnTomoName; the other formats may leave it empty
        raise ModelError("tomo_name", "cannot tell the tomogram's name from its URL; give --tomo-name", source=match_url)
    cutoff = job.cutoff(maps, null_threshold=null)
    particles, threshold = job.run(maps, avoid=avoid, cutoff=cutoff, tomogram=name, object_name=object_name)
    shape, px = maps.shape, float(summary["voxel_size"])
    if level and fmt in ("star", "relion5"):  # centred coordinates: from the full-resolution tomogram's centre
        full = read_volume(str(summary.get("tomogram", "")), level=0, storage_options=options)
        shape, px = full.shape, full.pixel_size
    if fmt == "relion5":
        from cryocloud.store.relion5 import RelionTomogram, write_relion5

        ts = read_tilt_series(tilt_series, storage_options=options)
        write_relion5(out_url, particles, [RelionTomogram(name, ts, shape, px)], storage_options=options)
    else:
        write_picks(particles, out_url, fmt, storage_options=options, pixel_size=px, shape_zyx=shape, object_name=object_name)
    with open_url(f"{out_url.rsplit('.', 1)[0]}_cutoff.json", "w", storage_options=options) as f:
        json.dump({"n_particles": len(particles), **cutoff.as_dict()}, f, indent=1)
    cut = "none" if threshold is None else f"{threshold:.4f} ({cutoff.method})"
    empirical = "" if null is None else f", the null search's {null:.4f}"
    console.print(f"{out_url}: {len(particles)} particles (cut-off {cut}{empirical}, at least {job.min_distance(maps):.1f} A apart)")
    if figures:
        write_score_figures(maps.scores, particles, threshold, out_url.rsplit(".", 1)[0], radius_a=maps.particle_radius_a, title=match_url,
                            null_scores=null_scores, null_threshold=null, storage_options=options)
