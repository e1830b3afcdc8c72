"""The ``"cryocloud"`` attribute block stored next to NGFF ``"multiscales"``.

NGFF has no field for acquisition and processing metadata; they live in one versioned block,
validated by `CryocloudAttrs`. Units: Angstrom, degrees, e/A^2, kV, mm.

Schema version 1:
- ``kind``: "tilt_series" (dims tilt, y, x) or "tomogram" (dims z, y, x);
- ``pixel_size``: level-0 pixel / voxel size (A);
- ``microscope``: voltage (kV), Cs (mm), amplitude contrast;
- ``tilt_axis_angle`` (deg, tilt series): raw-image tilt axis, counter-clockwise from image y;
- ``per_tilt`` (tilt series): every per-tilt coordinate (tilt_angle, acquisition_order, exposure,
  pre_exposure and any estimated ones), one value per tilt in storage order;
- ``tilt_angles`` (tomogram): tilt angles (deg) it was reconstructed from, when known;
- ``provenance``: stage name, its parameters, cryocloud version, creation time (UTC, ISO 8601)
  and the URLs of the stored inputs it was computed from;
- ``metadata``: free-form JSON of the caller.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Final, Literal

import pydantic

import cryocloud
from cryocloud.model import Microscope

SCHEMA_VERSION: Final = 1
ATTRS_KEY = "cryocloud"


class Provenance(pydantic.BaseModel):
    """Who made this image: stage name, its parameters, software version, time, inputs."""

    model_config = pydantic.ConfigDict(extra="forbid")

    stage: str = "store"
    parameters: dict[str, Any] = pydantic.Field(default_factory=dict)
    software_version: str = pydantic.Field(default_factory=lambda: cryocloud.__version__)
    created: str = pydantic.Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    inputs: list[str] = pydantic.Field(default_factory=list)


class CryocloudAttrs(pydantic.BaseModel):
    """Validated content of the ``"cryocloud"`` attribute block (see the module docstring)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["tilt_series", "tomogram"]
    pixel_size: float = pydantic.Field(gt=0, description="level-0 pixel size (A)")
    microscope: Microscope = pydantic.Field(default_factory=Microscope)
    tilt_axis_angle: float | None = None
    per_tilt: dict[str, list[float]] | None = None
    tilt_angles: list[float] | None = None
    provenance: Provenance = pydantic.Field(default_factory=Provenance)
    metadata: dict[str, Any] = pydantic.Field(default_factory=dict)

    @pydantic.model_validator(mode="after")
    def _kind_fields(self) -> "CryocloudAttrs":
        if self.kind == "tilt_series":
            if not self.per_tilt or "tilt_angle" not in self.per_tilt:
                raise ValueError("a tilt series needs per_tilt coordinates with 'tilt_angle'")
            lengths = {len(v) for v in self.per_tilt.values()}
            if len(lengths) != 1:
                raise ValueError(f"per_tilt coordinates differ in length: { {k: len(v) for k, v in self.per_tilt.items()} }")
        return self

    @pydantic.field_validator("per_tilt")
    @classmethod
    def _finite(cls, value: dict[str, list[float]] | None) -> dict[str, list[float]] | None:
        for name, values in (value or {}).items():
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"per_tilt '{name}' contains NaN or infinite values")
        return value


def validation_problems(exc: pydantic.ValidationError) -> str:
    """A pydantic ValidationError on one line: `field.path: message; ...`."""
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors())


def split_caller_metadata(metadata: dict | None) -> tuple[Provenance, dict]:
    """Caller's ``metadata``: the keys ``stage`` and ``parameters`` go to the provenance, the rest stays."""
    rest = dict(metadata or {})
    stage = str(rest.pop("stage", "store"))
    parameters = rest.pop("parameters", {}) or {}
    if not isinstance(parameters, dict):
        parameters = {"value": parameters}
    return Provenance(stage=stage, parameters=parameters), rest
