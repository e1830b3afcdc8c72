"""Template matching and peak extraction as jobs: validated parameters with one set of defaults,
built alike by `cryocloud match` / `extract-peaks` (from their options), by the pipeline (its
`match` and `peaks` config sections are these jobs plus the files they read) and in Python. `run()`
takes and returns lazy data and opens no file: the callers read the inputs and persist the
results through cryocloud.store (`cryocloud.pick.results`).

    job = MatchJob(angular_increment_deg=30.0)
    template = job.prepare(volume, template_voxel_size, tomogram.pixel_size)
    result = job.run(tomogram, template, TiltWeighting.from_tilt_series(tilt_series))
    particles, threshold = PeaksJob().run(ScoreMaps.of(result, template))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import pydantic
import xarray as xr

from cryocloud.errors import ModelError
from cryocloud.model import Particles, Tomogram, pixel_size_of
from cryocloud.pick.angles import crowther_increment, uniform_rotations
from cryocloud.pick.match import BlockCache, MatchResult, MatchSettings, match
from cryocloud.pick.null import check_same_search, empirical_threshold
from cryocloud.pick.peaks import BlockMoments, CutoffMethod, LocalSigma, MapNoise, extract_peaks, map_noise, search_sigma_threshold
from cryocloud.pick.spectrum import RadialSpectrum, noise_spectrum, null_spectrum
from cryocloud.pick.template import Template, check_fits, prepare_template
from cryocloud.pick.weighting import CtfMode, TiltWeighting
from cryocloud.segment.components import voxels_where
from cryocloud.segment.fiducials import fiducial_voxels

#: "noise": by the noise spectrum of the even/odd half tomograms or of the null volume when one is given (none
#: without); "tomogram": by the tomogram's own power spectrum (a poor proxy for its noise); "none"
WhitenMode = Literal["noise", "tomogram", "none"]
#: the search's low-pass when none is given, in voxels of the searched tomogram
DEFAULT_RESOLUTION_VOXELS = 2.5


class MatchJob(pydantic.BaseModel):
    """Template-matching parameters (the search; which files it reads is the caller's business)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    angular_increment_deg: float | Literal["crowther"] = pydantic.Field(
        30.0, description="degrees between orientations, or crowther: resolution / particle diameter (radians)")
    symmetry: str = pydantic.Field("C1", description="particle symmetry: C1, Cn, Dn, T, O")
    resolution_a: float | None = pydantic.Field(None, gt=0, description="search resolution / low-pass (A); default 2.5 voxels")
    mask_radius_a: float | None = pydantic.Field(None, gt=0, description="spherical mask radius (A); default from the template")
    non_spherical_mask: bool = pydantic.Field(False, description="mask following the template's shape (slower)")
    invert: bool = pydantic.Field(False, description="invert the template's contrast")
    ctf: CtfMode = pydantic.Field("signed", description="signed (not CTF-corrected) | abs (phase-flipped) | none")
    whiten: WhitenMode = pydantic.Field(
        "noise", description="spectral whitening: noise (by the even/odd half tomograms' or the null volume's noise spectrum "
        "when given, else none), tomogram (by its own power spectrum, a poor proxy for its noise: it lowered F4 on twins) or none")
    defocus_gradient: bool = pydantic.Field(True, description="CTF weight at each sub-volume's own defocus")
    background: bool = pydantic.Field(False, description="subtract a phase-randomised template search's excess score (2x the time)")
    subvolume: int = pydantic.Field(96, ge=16, description="FFT box edge (voxels, overlap included)")
    batch_size: int = pydantic.Field(1000, ge=1, description="rotations per task")
    noise_chunk: int = pydantic.Field(64, ge=8, description="cube edge (voxels) of the noise spectrum")

    @pydantic.field_validator("whiten", mode="before")
    @classmethod
    def _whiten_flag(cls, value: Any) -> Any:
        """true / false (older configs): noise / none."""
        return {True: "noise", False: "none"}.get(value, value) if isinstance(value, bool) else value

    @pydantic.field_validator("angular_increment_deg")
    @classmethod
    def _increment(cls, value: float | str) -> float | str:
        if isinstance(value, float) and not 0 < value <= 90:
            raise ValueError(f"expected degrees in (0, 90] or 'crowther', got {value}")
        return value

    def resolution(self, voxel_size: float) -> float:
        """The search's low-pass (A) on a tomogram of `voxel_size` (A)."""
        return self.resolution_a or DEFAULT_RESOLUTION_VOXELS * voxel_size

    def prepare(self, volume: np.ndarray, voxel_size: float, target_voxel_size: float, *,
                 tomogram_shape: tuple[int, ...] | None = None, source: str | None = None) -> Template:
        """The map `volume` (z, y, x) at `voxel_size` (A) resampled to the tomogram's `target_voxel_size`,
        masked and inverted as asked; checked first to fit a tomogram of `tomogram_shape` when given."""
        if tomogram_shape is not None:
            check_fits(volume.shape, voxel_size, tomogram_shape, target_voxel_size, source=source or "template")
        return prepare_template(volume, voxel_size, target_voxel_size, mask_radius_a=self.mask_radius_a,
                                non_spherical=self.non_spherical_mask, invert=self.invert, source=source)

    def increment(self, template: Template) -> float:
        """The angular increment (degrees) for `template` (already at the tomogram's voxel size)."""
        if self.angular_increment_deg == "crowther":
            px = template.voxel_size
            return crowther_increment(self.resolution(px), 2.0 * template.radius * px)
        return float(self.angular_increment_deg)

    def rotations(self, template: Template) -> np.ndarray:
        """The search's rotations (N, 3, 3): uniform at `increment`, reduced by the symmetry."""
        return uniform_rotations(self.increment(template), self.symmetry)

    def noise(self, *, halves: tuple[Tomogram, Tomogram] | None = None, null: Tomogram | None = None) -> RadialSpectrum | None:
        """The noise spectrum to whiten by, from the even/odd `halves` or the `null` volume (None without
        either); computed on the current Dask client, only the spectra come back."""
        if halves is not None and null is not None:
            raise ModelError("whiten_null", "give one noise source for the whitening: the half tomograms or the null volume")
        if (halves is not None or null is not None) and self.whiten != "noise":
            raise ModelError("whiten", f"is {self.whiten!r}; a noise source (half tomograms, null volume) is for whiten 'noise'")
        if halves is not None:
            return noise_spectrum(*halves, chunk=self.noise_chunk)
        return None if null is None else null_spectrum(null, chunk=self.noise_chunk)

    def settings(self, voxel_size: float, noise: RadialSpectrum | None = None) -> MatchSettings:
        """The search graph's settings on a tomogram of `voxel_size` (A), whitened by `noise` if given."""
        whiten = self.whiten == "tomogram" or (self.whiten == "noise" and noise is not None)
        return MatchSettings(resolution_a=self.resolution(voxel_size), subvolume=self.subvolume, batch_size=self.batch_size,
                             ctf=self.ctf, whiten=whiten, defocus_gradient=self.defocus_gradient, background=self.background,
                             noise=noise if whiten else None)

    def run(self, tomogram: Tomogram, template: Template, tilts: TiltWeighting | None = None, *, rotations: np.ndarray | None = None,
            noise: RadialSpectrum | None = None, mask: xr.DataArray | da.Array | np.ndarray | None = None,
            cache: BlockCache | None = None) -> MatchResult:
        """The lazy search of `tomogram` (`cryocloud.pick.match.match`): `template` from `self.prepare`,
        the per-tilt weighting `tilts`, `rotations` (default `self.rotations`), the `noise` spectrum
        (`self.noise`), the voxels to search (`mask` > 0) and a resume `cache`."""
        rotations = self.rotations(template) if rotations is None else rotations
        return match(tomogram, template, rotations, tilts=tilts, settings=self.settings(tomogram.pixel_size, noise),
                     tomogram_mask=mask, cache=cache)


@dataclass(frozen=True)
class ScoreMaps:
    """A finished search as peak extraction reads it: lazy `scores` and `orientation` maps (z, y, x)
    on the searched tomogram's grid (coordinates in A), the `rotations` (N, 3, 3), the standard
    deviation `score_std` and count `n_search` of every score evaluated, the per-block moments
    (None for searches stored before them), the particle radius (A) and the search's identity
    (`search_id`: the same template, orientations, weights and settings)."""

    scores: xr.DataArray
    orientation: xr.DataArray
    rotations: np.ndarray
    score_std: float
    n_search: float
    particle_radius_a: float
    block_moments: BlockMoments | None = None
    search_id: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.scores.shape)

    @property
    def n_voxels(self) -> float:
        """The voxels searched (all but those a tomogram mask left out)."""
        return self.n_search / len(self.rotations)

    @classmethod
    def of(cls, result: MatchResult, template: Template, search_id: str | None = None) -> "ScoreMaps":
        """The score maps of a lazy search with `template`, computed in one pass (maps in memory, so peak
        extraction does not search again); for volumes too large for that, `cryocloud.pick.results.run_match`."""
        scores, orientation, blocks = dask.compute(result.scores, result.orientation, result.block_moments)
        sigma, count = blocks.total()
        return cls(scores, orientation, result.rotations, sigma, count, template.particle_radius * template.voxel_size, blocks, search_id)


@dataclass(frozen=True)
class Cutoff:
    """A peak extraction's false-alarm cut-off and what set it. `method`: "robust-sigma" (the best-score
    map's lower half, `map_noise`), "search-sigma" (the search's score sigma, per block with a local
    sigma: `value` is then the lowest block's), "null-search" (the null search's empirical cut-off,
    higher than the statistical one) or "none" (a number of picks only); `figures` the numbers
    behind it, both estimates' included (JSON-ready: `as_dict`)."""

    method: str
    value: float | None
    map_noise: MapNoise | None = None
    null_threshold: float | None = None
    figures: dict | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"cutoff_method": self.method, "cutoff": self.value, **(self.figures or {})}


class PeaksJob(pydantic.BaseModel):
    """Peak-extraction parameters: the false-alarm cut-off and/or a number, the spacing, and what to keep
    picks away from."""

    model_config = pydantic.ConfigDict(extra="forbid")

    n_false: float | None = pydantic.Field(1.0, gt=0, description="expected false positives (statistical cut-off); None: none")
    number: int | None = pydantic.Field(None, gt=0, description="or keep the best N")
    local_sigma: LocalSigma = pydantic.Field(
        "slab", description="with cutoff_method search-sigma, the score sigma of the cut-off: global (all scores), block (each "
        "sub-volume's own), slab (each z row of sub-volumes)")
    sigma_floor: bool = pydantic.Field(True, description="a local sigma is never taken below the global one")
    cutoff_method: CutoffMethod = pydantic.Field(
        "robust-sigma", description="false-alarm cut-off from: robust-sigma (the best-score map's median and lower-half sigma, each voxel "
        "one trial: holds on dense specimens) or search-sigma (the standard deviation of every score evaluated, voxels x orientations "
        "as trials, with local_sigma)")
    min_distance_a: float | None = pydantic.Field(
        None, gt=0, description="minimum distance between picks (A); default the particle's diameter (twice the template's equivalent_radius)")
    fiducial_sigma: float | None = pydantic.Field(
        20.0, gt=0, description="no picks within a particle radius of fiducials (gold: voxels of the searched tomogram beyond its "
        "median +- this many robust s.d.); None: picks may lie on them")

    def min_distance(self, maps: ScoreMaps) -> float:
        """The minimum distance between picks (A)."""
        return self.min_distance_a or 2.0 * maps.particle_radius_a

    def null_threshold(self, maps: ScoreMaps, null: ScoreMaps, *, source: str = "null search") -> float:
        """The empirical cut-off (cryocloud.pick.null) of `null`, the same search as `maps` on the
        tomogram's null volume (`source` names it in errors)."""
        if self.n_false is None:
            raise ModelError("null_match", "sets the false-alarm cut-off; give n_false > 0 with it")
        check_same_search({"search_id": maps.search_id, "shape_zyx": list(maps.shape)},
                          {"search_id": null.search_id, "shape_zyx": list(null.shape)}, source=source)
        px = _voxel_size(maps)
        return empirical_threshold(null.scores, min_distance_voxels=self.min_distance(maps) / px, n_false=self.n_false, source=source)

    def cutoff(self, maps: ScoreMaps, *, null_threshold: float | None = None) -> Cutoff:
        """The false-alarm cut-off `run` applies to `maps` (one pass over the score map for its robust
        noise) with both estimates' figures; `null_threshold` from `self.null_threshold`."""
        if self.n_false is None:
            return Cutoff("none", None)
        noise = map_noise(maps.scores, maps.n_voxels)
        local = maps.block_moments if self.local_sigma != "global" else None
        search = search_sigma_threshold(maps.score_std, maps.n_search, self.n_false, local, self.local_sigma, self.sigma_floor)
        robust = noise.threshold(self.n_false)
        statistical = robust if self.cutoff_method == "robust-sigma" else search
        value, method = statistical, self.cutoff_method
        if null_threshold is not None and null_threshold > statistical:
            value, method = float(null_threshold), "null-search"
        figures = {"n_false": self.n_false, "robust_sigma": {"threshold": robust, "median": noise.median, "sigma": noise.sigma,
                                                             "n_voxels": noise.n_voxels},
                   "search_sigma": {"threshold": search, "sigma": maps.score_std, "n_search": maps.n_search, "local_sigma": self.local_sigma},
                   "null_search": {"threshold": null_threshold}}
        return Cutoff(method, value, noise if self.cutoff_method == "robust-sigma" else None, null_threshold, figures)

    def avoided(self, maps: ScoreMaps, *, searched: Tomogram | None = None, mask: Any = None,
                sources: tuple[str | None, str | None] = (None, None)) -> dict[str, tuple[np.ndarray, float]]:
        """What no pick may lie near, as voxels (M, 3) on the score maps' grid and a radius (A):
        "fiducials" of the `searched` tomogram (with `fiducial_sigma`) within a particle radius;
        "mask", the voxels where `mask` > 0, within half a voxel. Both must be on the score maps'
        grid, else a ModelError naming avoid_fiducials / avoid_mask and their `sources` (URLs)."""
        avoid = {}
        if searched is not None and self.fiducial_sigma is not None:
            _require_grid(searched.shape, maps, "avoid_fiducials", sources[0])
            avoid["fiducials"] = (fiducial_voxels(searched.data.data, sigma=self.fiducial_sigma), maps.particle_radius_a)
        if mask is not None:
            _require_grid(np.shape(mask), maps, "avoid_mask", sources[1])
            data = mask.data if isinstance(mask, xr.DataArray) else mask
            avoid["mask"] = (voxels_where(data > 0, description="mask voxels"), 0.5 * _voxel_size(maps))
        return avoid

    def run(self, maps: ScoreMaps, *, avoid: dict[str, tuple[np.ndarray, float]] | None = None, null_threshold: float | None = None,
            cutoff: Cutoff | None = None, tomogram: str = "", object_name: str = "particle") -> tuple[Particles, float | None]:
        """Particles picked from `maps` (positions in A in the searched tomogram's frame) and the cut-off
        used; none near what `avoid` (from `self.avoided`) lists; `null_threshold` from
        `self.null_threshold`, or `cutoff` from `self.cutoff` (computed here when not given: pass it to
        report what set the cut-off without a second pass); `tomogram` and `object_name` label the particles."""
        if cutoff is not None and null_threshold is not None:
            raise ModelError("null_threshold", "give it to `cutoff` (which then carries it) or to run, not both")
        cutoff = self.cutoff(maps, null_threshold=null_threshold) if cutoff is None else cutoff
        return extract_peaks(
            maps.scores, maps.orientation, maps.rotations, radius_a=self.min_distance(maps), n_false=self.n_false, number=self.number,
            score_std=maps.score_std, n_search=maps.n_search, block_moments=maps.block_moments, local_sigma=self.local_sigma,
            sigma_floor=self.sigma_floor, tomogram=tomogram, class_name=object_name, avoid=list((avoid or {}).values()),
            null_threshold=cutoff.null_threshold, map_noise=cutoff.map_noise,
        )


def _voxel_size(maps: ScoreMaps) -> float:
    return pixel_size_of(maps.scores)


def _require_grid(shape: tuple[int, ...], maps: ScoreMaps, field: str, source: str | None) -> None:
    if tuple(shape) != maps.shape:
        raise ModelError(field, f"shape {tuple(shape)}, expected the score map's {maps.shape} (the searched grid)", source=source)


def validated(job: type[pydantic.BaseModel], values: dict[str, Any]) -> Any:
    """`job` (MatchJob, PeaksJob) built from `values` (command-line options, say); a ModelError
    naming the first bad field otherwise."""
    try:
        return job.model_validate(values)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        raise ModelError(".".join(str(x) for x in error["loc"][:1]) or "options", f"{error['msg']} (got {error.get('input')!r})") from None
