"""SimulationConfig: every choice of a simulated specimen and acquisition, validated.

Units: Angstrom, degrees, e/A^2, kV, mm. Shapes are (z, y, x) voxels; the simulated detector
has the volume's (y, x) size and pixel size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pydantic

from cryocloud.errors import ModelError
from cryocloud.simulate.schemes import SchemeName


class MembraneConfig(pydantic.BaseModel):
    """Lipid bilayers: spherical vesicles and planar sheets (both cut by the ice surfaces)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    vesicles: int = pydantic.Field(0, ge=0, description="number of spherical vesicles")
    vesicle_radius_a: tuple[float, float] = pydantic.Field((150.0, 400.0), description="min, max radius (A) of the bilayer mid-surface")
    planar: int = pydantic.Field(0, ge=0, description="number of planar sheets at random orientations")

    @pydantic.model_validator(mode="after")
    def _radius_range(self) -> "MembraneConfig":
        lo, hi = self.vesicle_radius_a
        if not 0 < lo <= hi:
            raise ValueError(f"vesicle_radius_a must be (min, max) with 0 < min <= max, got {self.vesicle_radius_a}")
        return self


class FiducialConfig(pydantic.BaseModel):
    """Gold beads sitting on the two ice surfaces."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    count: int = pydantic.Field(0, ge=0, description="number of gold beads")
    diameter_a: float = pydantic.Field(100.0, gt=0, description="bead diameter (A)")


class SimulationConfig(pydantic.BaseModel):
    """A simulated specimen and its acquisition (see `cryocloud.simulate` for the model)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    # specimen
    shape_zyx: tuple[int, int, int] = (64, 128, 128)
    pixel_size_a: float = pydantic.Field(10.0, gt=0, description="voxel and detector pixel size (A)")
    n_particles: int = pydantic.Field(10, ge=0)
    structures: list[str | None] | None = pydantic.Field(
        None, description="mmCIF / PDB paths, one class each; None (or a None entry) = the bundled ribosome 7P6Z"
    )
    b_factor_a2: float = pydantic.Field(0.0, ge=0, description="B-factor applied to every atom (A^2)")
    ice_thickness_a: float | None = pydantic.Field(None, gt=0, description="ice slab thickness (A); None = the volume's z extent")
    ice_structure_factor: float = pydantic.Field(
        0.064, ge=0, description="S(q->0) of vitreous water: scales the white density fluctuations of the ice (0 = flat ice)"
    )
    membranes: MembraneConfig = pydantic.Field(default_factory=MembraneConfig)
    fiducials: FiducialConfig = pydantic.Field(default_factory=FiducialConfig)
    seed: int = 0

    # tilt scheme and dose
    tilt_min: float = -60.0
    tilt_max: float = 60.0
    tilt_step: float = pydantic.Field(3.0, gt=0)
    scheme: SchemeName = "dose-symmetric"
    start_angle: float = 0.0
    group_size: int = pydantic.Field(2, ge=1)
    dose_per_tilt: float = pydantic.Field(3.0, ge=0, description="e/A^2 per tilt")

    # optics
    voltage_kv: float = pydantic.Field(300.0, gt=0)
    cs_mm: float = pydantic.Field(2.7, ge=0)
    amplitude_contrast: float = pydantic.Field(0.07, ge=0, lt=1)
    defocus_a: float = pydantic.Field(30000.0, description="defocus at the tilt axis on the specimen mid-plane (A, underfocus > 0)")
    defocus_spread_a: float = pydantic.Field(0.0, ge=0, description="s.d. of random per-tilt defocus changes (A)")
    astigmatism_a: float = pydantic.Field(0.0, ge=0, description="defocus_u - defocus_v (A)")
    astigmatism_angle_deg: float = 0.0
    defocus_step_a: float = pydantic.Field(
        300.0, gt=0, description="largest defocus change between neighbouring CTF strips across the tilt axis (A)"
    )
    inelastic_mfp_a: float | None = pydantic.Field(
        3500.0, gt=0, description="inelastic mean free path (A): counts fall as exp(-t / (mfp cos tilt)); None = no loss"
    )

    # detector geometry and movies
    tilt_axis_angle_deg: float = pydantic.Field(0.0, description="raw-image tilt axis, counter-clockwise from image y (deg)")
    shift_sigma_a: float = pydantic.Field(0.0, ge=0, description="s.d. of per-tilt image shifts (misalignment, A)")
    frames_per_tilt: int = pydantic.Field(0, ge=0, description="movie frames per tilt (0 = no movies)")
    drift_a: float = pydantic.Field(10.0, ge=0, description="typical beam-induced drift over one tilt's exposure (A)")

    # switches
    noise: bool = True
    ctf: bool = True
    dose_filter: bool = True
    chunk_rows: int | None = pydantic.Field(None, ge=1, description="Y rows per volume chunk (None = ~32 MB chunks)")

    @pydantic.field_validator("shape_zyx")
    @classmethod
    def _shape(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(n < 8 for n in value):
            raise ValueError(f"every dimension of shape_zyx must be >= 8 voxels, got {value}")
        return value

    @pydantic.field_validator("structures")
    @classmethod
    def _structures(cls, value: list[str | None] | None) -> list[str | None] | None:
        for path in value or []:
            if path is not None and not Path(path).is_file():
                raise ValueError(f"structure file {path!r} does not exist")
        return value

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> "SimulationConfig":
        if self.ice_thickness_a is not None and self.ice_thickness_a > self.shape_zyx[0] * self.pixel_size_a + 1e-6:
            raise ValueError(
                f"ice_thickness_a {self.ice_thickness_a} A exceeds the volume's z extent "
                f"{self.shape_zyx[0] * self.pixel_size_a} A (shape_zyx[0] x pixel_size_a)"
            )
        return self

    @property
    def thickness_a(self) -> float:
        """Ice slab thickness (A)."""
        return self.ice_thickness_a if self.ice_thickness_a is not None else self.shape_zyx[0] * self.pixel_size_a

    @property
    def structure_paths(self) -> list[str | None]:
        return list(self.structures) if self.structures else [None]


PresetName = Literal["toy", "small", "realistic"]

PRESETS: dict[str, dict] = {
    "toy": dict(shape_zyx=(64, 64, 64), pixel_size_a=10.0, n_particles=4, tilt_step=6.0),
    "small": dict(
        shape_zyx=(64, 256, 256), pixel_size_a=8.0, n_particles=30, tilt_step=3.0,
        membranes=MembraneConfig(vesicles=1, vesicle_radius_a=(150.0, 220.0)), fiducials=FiducialConfig(count=4),
    ),
    "realistic": dict(
        shape_zyx=(300, 1024, 1024), pixel_size_a=10.0, n_particles=400, tilt_step=2.0,
        membranes=MembraneConfig(vesicles=4, planar=1), fiducials=FiducialConfig(count=12), frames_per_tilt=8,
    ),
}


def preset(name: PresetName, **overrides) -> SimulationConfig:
    """A named configuration ("toy" 64^3, "small", "realistic" 1k x 1k x 300 with 61 tilts) with overrides."""
    if name not in PRESETS:
        raise ModelError("preset", f"expected one of {sorted(PRESETS)}, got {name!r}")
    return SimulationConfig(**{**PRESETS[name], **overrides})
