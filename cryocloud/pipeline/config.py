"""The pipeline config: a pydantic model whose unknown keys and bad values are errors naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml

from cryocloud.denoise.noise2noise import N2NConfig
from cryocloud.errors import CryocloudError
from cryocloud.pick.job import MatchJob, PeaksJob
from cryocloud.segment import MembraneSettings

#: every stage in pipeline order; `simulate` or `input` (or `movies`, motion from frames) supplies the tilt series
STAGE_NAMES = ("simulate", "input", "motion", "ctf", "align", "reconstruct", "denoise", "segment", "match", "peaks", "average")


class _Section(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class SimulateParams(_Section):
    """Used when no input is given: a preset of `cryocloud.simulate` plus field overrides."""

    preset: Literal["toy", "small", "realistic"] = "small"
    overrides: dict[str, Any] = pydantic.Field(
        default_factory=lambda: {"tilt_axis_angle_deg": 85.0, "shift_sigma_a": 40.0, "frames_per_tilt": 4},
        description="SimulationConfig fields; the default misaligns the images as a microscope does and writes "
                    "4-frame movies (motion-corrected by the motion stage)",
    )

    def frames_per_tilt(self) -> int:
        """Movie frames per tilt the simulation writes (0: none; then no motion stage)."""
        from cryocloud.simulate import preset

        return preset(self.preset, **self.overrides).frames_per_tilt


class MotionParams(_Section):
    """Motion correction of movies (input: a SerialEM .mdoc whose SubFramePath movies lie beside it)."""

    bfactor_a2: float = pydantic.Field(150.0, ge=0, description="B-factor of the alignment filter (A^2)")
    iterations: int = pydantic.Field(10, ge=1)
    max_shift_a: float | None = pydantic.Field(None, gt=0, description="search radius (A); default a quarter of the image")
    pixel_size_a: float | None = pydantic.Field(None, gt=0, description="when the mdoc has no PixelSpacing (A)")
    exposure: float | None = pydantic.Field(None, gt=0, description="e/A^2 per tilt, when the mdoc has no ExposureDose")
    gain: str | None = pydantic.Field(None, description="gain reference (MRC/TIFF, multiplies the frames); default: the mdoc's "
                                      "GainReference, looked for beside the movies")
    gain_rotate: Literal[0, 90, 180, 270] = pydantic.Field(0, description="rotate the gain counter-clockwise (deg; MotionCor2 -RotGain)")
    gain_flip: Literal["none", "x", "y"] = pydantic.Field("none", description="then flip it: y upside down, x left-right (-FlipGain 1, 2)")
    defects: str | None = pydantic.Field(None, description="defect map (MRC/TIFF, nonzero = bad pixel), filled from good neighbours")
    detect_hot_pixels: bool = pydantic.Field(False, description="also fill pixels whose frame sum is hot_pixel_sigma robust sigmas high")
    hot_pixel_sigma: float = pydantic.Field(10.0, gt=0)
    dose_weight_frames: bool = pydantic.Field(False, description="dose-weight the sums per frame (Grant & Grigorieff 2015)")
    dose_per_frame: float | None = pydantic.Field(None, gt=0, description="e/A^2 per frame; default the tilt's exposure / frames")


class CtfParams(_Section):
    defocus_min_a: float = pydantic.Field(5000.0, gt=0)
    defocus_max_a: float = pydantic.Field(70000.0, gt=0)
    min_resolution_a: float = pydantic.Field(30.0, gt=0, description="low-resolution end of the fitted band (A)")
    series_window_a: float | None = pydantic.Field(
        5000.0, gt=0, description="half-width (A) of the defocus window searched for tilts without a clear peak of their own, "
        "around the series' defocus and widened to the clear tilts' spread (those search the full range); None: all full range"
    )
    handedness: bool = pydantic.Field(
        False, description="also check the sign of the tilt angles from the defocus difference across the tilt axis "
        "(right / flipped / undetermined, in the summary and ctf/handedness.json; about twice the CTF fit's time)"
    )


class AlignParams(_Section):
    refine: Literal["projection-matching", "patch-tracking", "none"] = "projection-matching"
    iterations: int = pydantic.Field(3, ge=1)
    estimate_axis: bool = True
    binning: int | None = pydantic.Field(None, ge=1)


class ReconstructParams(_Section):
    thickness_px: int | None = pydantic.Field(None, gt=0)
    binning: int = pydantic.Field(1, ge=1)
    filter: Literal["radial", "sirt", "none"] = "radial"
    sirt_iterations: int = pydantic.Field(10, ge=1)


#: the pipeline's noise2noise training: shorter than N2NConfig's default
PIPELINE_N2N_STEPS = 200


class DenoiseParams(_Section):
    """Denoising of the tomogram: `deconv`, Warp's CTF deconvolution (cryocloud.denoise.deconv), or
    `noise2noise`, a 3D U-Net trained on the even/odd half reconstructions (cryocloud.denoise.noise2noise;
    needs movies and the `denoise` extra)."""

    method: Literal["deconv", "noise2noise"] = "deconv"
    strength: float = pydantic.Field(1.0, gt=0, description="deconv: 10^(3 strength) is the low-frequency SNR")
    snr_falloff: float = pydantic.Field(1.0, ge=0, description="deconv")
    highpass_nyquist: float = pydantic.Field(0.02, gt=0, le=1, description="deconv: high-pass cut-on, fraction of Nyquist")
    defocus_a: float | None = pydantic.Field(None, gt=0, description="deconv; default: the ctf stage's mean defocus (A)")
    noise2noise: N2NConfig = pydantic.Field(default_factory=lambda: N2NConfig(steps=PIPELINE_N2N_STEPS),
                                            description="noise2noise: N2NConfig fields (network, patch, n_patches, steps, ...)")
    tile: int = pydantic.Field(128, ge=16, description="tile edge (voxels)")
    overlap: int = pydantic.Field(32, ge=0, description="tile overlap on each side (voxels)")

    @pydantic.field_validator("noise2noise", mode="before")
    @classmethod
    def _n2n_config(cls, value: Any) -> Any:
        """Fields not given keep the pipeline's defaults (a short training)."""
        return value if isinstance(value, N2NConfig) else {"steps": PIPELINE_N2N_STEPS, **(value or {})}


class MatchParams(MatchJob):
    """The match stage: a `MatchJob` (cryocloud.pick.job; the parameters and defaults of `cryocloud match`)
    and what it searches. Whitening by `noise` uses the even/odd half tomograms' noise spectrum when the
    reconstruct stage built them (movies; for deconvolved input, the null volume's), else none."""

    template: str | None = pydantic.Field(None, description="map (MRC/.em) or atomic model; default: the simulated structure")
    template_voxel_size_a: float | None = pydantic.Field(None, gt=0, description="voxel size of a map template (A)")
    pyramid_level: int = pydantic.Field(1, ge=0, description="tomogram level to search (1 = binned by 2)")
    input: Literal["tomogram", "denoised"] = pydantic.Field(
        "tomogram", description="volume to search: the reconstruction, or the denoise stage's output (then, with even/odd half "
        "tomograms, the cut-off also comes from the same search on their denoised half difference, cryocloud.pick.null, and after "
        "deconv whitening uses its spectrum)"
    )


class PeaksParams(PeaksJob):
    """The peaks stage: a `PeaksJob` (cryocloud.pick.job; the parameters and defaults of `cryocloud
    extract-peaks`); fiducials are found in the searched tomogram unless `fiducial_sigma` is None."""

    avoid_membranes: bool = pydantic.Field(
        False, description="no picks centred on a membrane of the segment stage (soluble complexes; off for membrane proteins, "
        "whose centres lie there)"
    )


class AverageParams(_Section):
    """Gold-standard subtomogram averaging of the picks (two independent halves)."""

    box: int = pydantic.Field(32, ge=8, description="box edge (voxels of the searched pyramid level)")
    iterations: int = pydantic.Field(2, ge=1)
    increment_deg: float = pydantic.Field(8.0, gt=0, description="first angular step")
    max_angle_deg: float | None = pydantic.Field(16.0, gt=0, description="local search radius; None = global")
    fine_increment_deg: float = pydantic.Field(2.0, gt=0)
    max_shift_a: float = pydantic.Field(30.0, gt=0)
    symmetry: str = "C1"
    min_particles: int = pydantic.Field(4, ge=2, description="fewer picks than this: the stage is skipped with a reason")


class BatchParams(_Section):
    """Many tilt series in one run (`inputs`, or an `input` prefix holding several OME-Zarr tilt series)."""

    max_concurrent: int = pydantic.Field(2, ge=1, description="tilt series whose graphs are on the cluster at once")


class PipelineConfig(_Section):
    """What `cryocloud run` does. Unknown keys and bad values are errors that name the key."""

    input: str | None = pydantic.Field(
        None, description="tilt series OME-Zarr URL, a .mdoc (movies beside it), or a prefix holding several tilt series; "
                          "empty = simulate one"
    )
    inputs: list[str] | None = pydantic.Field(None, description="several inputs (batch): results under output/<name>/")
    output: str = pydantic.Field("cryocloud-output", description="output URL (folder or s3:// prefix)")
    stages: list[str] | None = pydantic.Field(None, description="stages to run, in order; default all")
    simulate: SimulateParams = pydantic.Field(default_factory=SimulateParams)
    motion: MotionParams = pydantic.Field(default_factory=MotionParams)
    ctf: CtfParams = pydantic.Field(default_factory=CtfParams)
    align: AlignParams = pydantic.Field(default_factory=AlignParams)
    reconstruct: ReconstructParams = pydantic.Field(default_factory=ReconstructParams)
    denoise: DenoiseParams = pydantic.Field(default_factory=DenoiseParams)
    segment: MembraneSettings = pydantic.Field(default_factory=MembraneSettings, description="membrane segmentation (cryocloud.segment)")
    match: MatchParams = pydantic.Field(default_factory=MatchParams)
    peaks: PeaksParams = pydantic.Field(default_factory=PeaksParams)
    average: AverageParams = pydantic.Field(default_factory=AverageParams)
    batch: BatchParams = pydantic.Field(default_factory=BatchParams)
    report: bool = pydantic.Field(True, description="write report.html at the end")
    cluster: dict[str, Any] = pydantic.Field(default_factory=dict, description="cryocloud.cluster overrides")
    storage_options: dict[str, Any] | None = None

    @pydantic.field_validator("stages")
    @classmethod
    def _known_stages(cls, value: list[str] | None) -> list[str] | None:
        unknown = [s for s in value or [] if s not in STAGE_NAMES]
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}; expected some of {STAGE_NAMES}")
        return value

    @pydantic.model_validator(mode="after")
    def _one_kind_of_input(self) -> "PipelineConfig":
        if self.input and self.inputs:
            raise ValueError("give either `input` or `inputs`, not both")
        if self.inputs is not None and not self.inputs:
            raise ValueError("`inputs` is empty; list tilt series URLs or leave it out")
        return self


def load_config(path: str | Path | None) -> PipelineConfig:
    """Read and validate a YAML pipeline config (safe loader); None gives the defaults."""
    if path is None:
        return PipelineConfig()
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise CryocloudError(f"{p}: config file not found") from None
    except yaml.YAMLError as exc:
        raise CryocloudError(f"{p}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CryocloudError(f"{p}: expected a mapping of config keys at the top level, got {type(raw).__name__}")
    try:
        return PipelineConfig(**raw)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())
        raise CryocloudError(f"{p}: {problems}") from None
