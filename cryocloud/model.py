"""Data model: Microscope, TiltSeries, Tomogram, Particles.

A TiltSeries or Tomogram wraps one `xarray.DataArray` (usually Dask-backed float32):
- tilt series dims ("tilt", "y", "x"), movie frames ("tilt", "frame", "y", "x"), volumes
  ("z", "y", "x");
- spatial coordinates x, y, z in Angstrom with voxel (0, 0, 0) at physical (0, 0, 0);
- per-tilt coordinates on "tilt": `tilt_angle` (deg), `acquisition_order` (0 = first exposed),
  `exposure` and `pre_exposure` (e/A^2) and, once estimated, `defocus_u`, `defocus_v` (A,
  underfocus positive), `astigmatism_angle` (deg), `shift_x`, `shift_y` (A, see geometry.py).

Constructors validate their input and raise `ModelError` naming the field at fault.

Pixel size belongs to the data (the coordinate spacing), not to the Microscope: a binned tomogram
and its tilt series share the optics but not the voxel size.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import pydantic
import xarray as xr

from cryocloud.errors import ModelError

TILT_DIMS = ("tilt", "y", "x")
FRAME_DIMS = ("tilt", "frame", "y", "x")
VOLUME_DIMS = ("z", "y", "x")
REQUIRED_TILT_COORDS = ("tilt_angle", "acquisition_order", "exposure", "pre_exposure")
OPTIONAL_TILT_COORDS = ("defocus_u", "defocus_v", "astigmatism_angle", "shift_x", "shift_y")


class Microscope(pydantic.BaseModel):
    """Acquisition optics. Units: kV, mm, fraction."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    voltage_kv: float = pydantic.Field(300.0, gt=0, description="acceleration voltage (kV)")
    cs_mm: float = pydantic.Field(2.7, ge=0, description="spherical aberration (mm)")
    amplitude_contrast: float = pydantic.Field(0.07, ge=0, lt=1, description="amplitude contrast fraction")


def _spatial_coords(shape: tuple[int, ...], dims: tuple[str, ...], pixel_size_a: float) -> dict:
    return {d: np.arange(n, dtype=np.float64) * pixel_size_a for d, n in zip(dims, shape) if d in "xyz"}


def _check_pixel_size(pixel_size_a: Any) -> float:
    if pixel_size_a is None:
        raise ModelError("pixel_size", "is missing; give the pixel size in Angstrom")
    try:
        value = float(pixel_size_a)
    except (TypeError, ValueError):
        raise ModelError("pixel_size", f"expected a number of Angstrom, got {pixel_size_a!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ModelError("pixel_size", f"expected a positive number of Angstrom, got {pixel_size_a!r}")
    return value


def _as_array(data: Any) -> Any:
    return data if isinstance(data, (np.ndarray, da.Array)) else np.asarray(data)


def pixel_size_of(array: xr.DataArray) -> float:
    """Pixel size (A) read from the spacing of the x coordinate, or the `pixel_size` attribute."""
    if "pixel_size" in array.attrs:
        return float(array.attrs["pixel_size"])
    x = array.coords.get("x")
    if x is None or x.size < 2:
        raise ModelError("pixel_size", "is missing: no 'pixel_size' attribute and no x coordinate to derive it")
    return float(x.values[1] - x.values[0])


def _per_tilt(name: str, values: Any, n_tilts: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size != n_tilts:
        raise ModelError(name, f"has {arr.size} values for {n_tilts} images; expected one per tilt")
    if not np.all(np.isfinite(arr)):
        raise ModelError(name, "contains NaN or infinite values")
    return arr


def _validate_acquisition_order(order: np.ndarray) -> np.ndarray:
    as_int = order.astype(np.int64)
    if not np.array_equal(as_int, order) or not np.array_equal(np.sort(as_int), np.arange(order.size)):
        raise ModelError(
            "acquisition_order",
            f"must be a permutation of 0..{order.size - 1} (0 = first exposed), got {as_int.tolist()}",
        )
    return as_int


def _validate_pre_exposure(order: np.ndarray, exposure: np.ndarray, pre: np.ndarray) -> None:
    if np.any(exposure < 0):
        raise ModelError("exposure", "must be >= 0 e/A^2 for every tilt")
    if np.any(pre < 0):
        raise ModelError("pre_exposure", "must be >= 0 e/A^2 for every tilt")
    by_order = np.argsort(order)
    if np.any(np.diff(pre[by_order]) < -1e-6):
        raise ModelError(
            "pre_exposure",
            "must not decrease along the acquisition order (each tilt accumulates the dose of those before it)",
        )


def accumulated_pre_exposure(acquisition_order: np.ndarray, exposure: np.ndarray) -> np.ndarray:
    """Pre-exposure (e/A^2) of each tilt: the sum of exposures of the tilts acquired before it."""
    order = np.asarray(acquisition_order, dtype=np.int64)
    exposure = np.asarray(exposure, dtype=np.float64)
    by_order = np.argsort(order)
    cumulative = np.concatenate([[0.0], np.cumsum(exposure[by_order])[:-1]])
    pre = np.empty_like(exposure)
    pre[by_order] = cumulative
    return pre


@dataclass(frozen=True)
class TiltSeries:
    """A tilt series: images (tilt, y, x) or movie frames (tilt, frame, y, x) with per-tilt metadata.

    `tilt_axis_angle` (deg) is the tilt axis in the raw images, counter-clockwise from image y;
    it is 0 once images are aligned (see geometry.py).
    """

    data: xr.DataArray
    microscope: Microscope = field(default_factory=Microscope)
    tilt_axis_angle: float = 0.0

    def __post_init__(self) -> None:
        a = self.data
        if not isinstance(a, xr.DataArray):
            raise ModelError("data", f"expected an xarray.DataArray, got {type(a).__name__}")
        if a.dims not in (TILT_DIMS, FRAME_DIMS):
            raise ModelError("dims", f"expected {TILT_DIMS} or {FRAME_DIMS}, got {a.dims}")
        if a.size == 0:
            raise ModelError("data", f"is empty (shape {a.shape})")
        _check_pixel_size(pixel_size_of(a))
        missing = [c for c in REQUIRED_TILT_COORDS if c not in a.coords]
        if missing:
            raise ModelError(missing[0], "per-tilt coordinate is missing")
        n = a.sizes["tilt"]
        for name in REQUIRED_TILT_COORDS + OPTIONAL_TILT_COORDS:
            if name in a.coords:
                if a.coords[name].dims != ("tilt",):
                    raise ModelError(name, f"must lie on the 'tilt' dimension, got dims {a.coords[name].dims}")
                _per_tilt(name, a.coords[name].values, n)
        order = _validate_acquisition_order(np.asarray(a.coords["acquisition_order"].values, dtype=np.float64))
        _validate_pre_exposure(order, a.coords["exposure"].values, a.coords["pre_exposure"].values)
        angles = a.coords["tilt_angle"].values
        if np.any(np.abs(angles) > 90):
            raise ModelError("tilt_angle", f"values must lie within [-90, 90] degrees, got {angles.min()}..{angles.max()}")

    @classmethod
    def from_array(
        cls,
        array: Any,
        *,
        tilt_angles: Any,
        pixel_size: float | None,
        acquisition_order: Any = None,
        exposure: Any = 0.0,
        pre_exposure: Any = None,
        microscope: Microscope | None = None,
        tilt_axis_angle: float = 0.0,
        name: str = "tilt_series",
        **per_tilt: Any,
    ) -> "TiltSeries":
        """Build a tilt series from a numpy/Dask array (tilt, y, x) or (tilt, frame, y, x).

        `acquisition_order` defaults to the order of the images; `exposure` (e/A^2 per tilt) may
        be a scalar; `pre_exposure` defaults to the exposure accumulated along the acquisition
        order. Extra keyword arguments are optional per-tilt coordinates (defocus_u, ...).
        """
        data = _as_array(array)
        if data.ndim not in (3, 4):
            raise ModelError("data", f"expected 3 dims (tilt, y, x) or 4 (tilt, frame, y, x), got shape {data.shape}")
        dims = TILT_DIMS if data.ndim == 3 else FRAME_DIMS
        px = _check_pixel_size(pixel_size)
        n = data.shape[0]
        angles = _per_tilt("tilt_angle", tilt_angles, n)
        order = (
            np.arange(n)
            if acquisition_order is None
            else _validate_acquisition_order(_per_tilt("acquisition_order", acquisition_order, n))
        )
        exp = np.broadcast_to(np.asarray(exposure, dtype=np.float64), (n,)) if np.ndim(exposure) == 0 else exposure
        exp = _per_tilt("exposure", exp, n)
        pre = accumulated_pre_exposure(order, exp) if pre_exposure is None else _per_tilt("pre_exposure", pre_exposure, n)
        unknown = set(per_tilt) - set(OPTIONAL_TILT_COORDS)
        if unknown:
            raise ModelError(sorted(unknown)[0], f"is not a per-tilt coordinate; expected one of {OPTIONAL_TILT_COORDS}")
        coords: dict[str, Any] = _spatial_coords(data.shape, dims, px)
        coords.update(
            tilt_angle=("tilt", angles),
            acquisition_order=("tilt", order),
            exposure=("tilt", exp),
            pre_exposure=("tilt", pre),
        )
        for key, values in per_tilt.items():
            coords[key] = ("tilt", _per_tilt(key, values, n))
        arr = xr.DataArray(data, dims=dims, coords=coords, name=name, attrs={"pixel_size": px})
        return cls(arr, microscope or Microscope(), float(tilt_axis_angle))

    @property
    def pixel_size(self) -> float:
        return pixel_size_of(self.data)

    @property
    def tilt_angles(self) -> np.ndarray:
        return np.asarray(self.data.coords["tilt_angle"].values, dtype=np.float64)

    @property
    def n_tilts(self) -> int:
        return self.data.sizes["tilt"]

    @property
    def has_frames(self) -> bool:
        return "frame" in self.data.dims

    def per_tilt(self, name: str) -> np.ndarray | None:
        """Values of a per-tilt coordinate, or None when it is not set."""
        c = self.data.coords.get(name)
        return None if c is None else np.asarray(c.values)

    def with_data(self, data: Any, **attrs: Any) -> "TiltSeries":
        """Same metadata, new pixel data of the same (tilt, ...) layout; keeps all coordinates."""
        new = self.data.copy(data=data)
        new.attrs.update(attrs)
        return replace(self, data=new)

    def with_per_tilt(self, **values: Any) -> "TiltSeries":
        """Copy with per-tilt coordinates set (e.g. defocus_u=..., shift_x=...)."""
        n = self.n_tilts
        coords = {k: ("tilt", _per_tilt(k, v, n)) for k, v in values.items()}
        return replace(self, data=self.data.assign_coords(coords))

    def sorted_by_angle(self) -> "TiltSeries":
        order = np.argsort(self.tilt_angles, kind="stable")
        return replace(self, data=self.data.isel(tilt=order))

    def select_tilts(self, index: Any) -> "TiltSeries":
        """Subset of tilts by position; acquisition order is renumbered, pre-exposure kept."""
        sub = self.data.isel(tilt=index)
        order = np.argsort(np.argsort(sub.coords["acquisition_order"].values))
        return replace(self, data=sub.assign_coords(acquisition_order=("tilt", order)))


@dataclass(frozen=True)
class Tomogram:
    """A volume (z, y, x) with its voxel size and, when known, the tilt angles it was made from."""

    data: xr.DataArray
    microscope: Microscope = field(default_factory=Microscope)
    tilt_angles: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        a = self.data
        if not isinstance(a, xr.DataArray):
            raise ModelError("data", f"expected an xarray.DataArray, got {type(a).__name__}")
        if a.dims != VOLUME_DIMS:
            raise ModelError("dims", f"expected {VOLUME_DIMS}, got {a.dims}")
        if a.size == 0:
            raise ModelError("data", f"is empty (shape {a.shape})")
        _check_pixel_size(pixel_size_of(a))
        if self.tilt_angles is not None and any(abs(t) > 90 for t in self.tilt_angles):
            raise ModelError("tilt_angles", "values must lie within [-90, 90] degrees")

    @classmethod
    def from_array(
        cls,
        array: Any,
        *,
        pixel_size: float | None,
        microscope: Microscope | None = None,
        tilt_angles: Any = None,
        name: str = "tomogram",
    ) -> "Tomogram":
        data = _as_array(array)
        if data.ndim != 3:
            raise ModelError("data", f"expected 3 dims (z, y, x), got shape {data.shape}")
        px = _check_pixel_size(pixel_size)
        arr = xr.DataArray(
            data,
            dims=VOLUME_DIMS,
            coords=_spatial_coords(data.shape, VOLUME_DIMS, px),
            name=name,
            attrs={"pixel_size": px},
        )
        angles = None if tilt_angles is None else tuple(float(t) for t in np.asarray(tilt_angles).reshape(-1))
        return cls(arr, microscope or Microscope(), angles)

    @property
    def pixel_size(self) -> float:
        return pixel_size_of(self.data)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    def with_data(self, data: Any) -> "Tomogram":
        return replace(self, data=self.data.copy(data=data))


PARTICLE_COLUMNS = ("x", "y", "z", "score", "tomogram", "class_name")


@dataclass(frozen=True)
class Particles:
    """Particle picks or ground truth.

    positions: (N, 3) x, y, z in Angstrom in the tomogram frame (voxel (0,0,0) at 0 A);
    rotations: (N, 3, 3) matrices rotating the reference into each particle's orientation;
    scores: (N,) float; tomogram: (N,) str, the tomogram each particle belongs to;
    class_name: (N,) str.
    """

    positions: np.ndarray
    rotations: np.ndarray
    scores: np.ndarray
    tomogram: np.ndarray
    class_name: np.ndarray

    def __post_init__(self) -> None:
        n = self.positions.shape[0] if self.positions.ndim == 2 else -1
        if self.positions.ndim != 2 or self.positions.shape[1] != 3:
            raise ModelError("positions", f"expected shape (N, 3) x, y, z in Angstrom, got {self.positions.shape}")
        if self.rotations.shape != (n, 3, 3):
            raise ModelError("rotations", f"expected shape ({n}, 3, 3), got {self.rotations.shape}")
        for name in ("scores", "tomogram", "class_name"):
            if getattr(self, name).shape != (n,):
                raise ModelError(name, f"expected {n} values, got shape {getattr(self, name).shape}")
        if not np.all(np.isfinite(self.positions)):
            raise ModelError("positions", "contains NaN or infinite values")
        if n and not np.allclose(np.einsum("nij,nkj->nik", self.rotations, self.rotations), np.eye(3), atol=1e-4):
            raise ModelError("rotations", "are not orthonormal rotation matrices")

    @classmethod
    def create(
        cls,
        positions: Any,
        rotations: Any = None,
        scores: Any = None,
        tomogram: Any = "",
        class_name: Any = "",
    ) -> "Particles":
        pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3) if np.size(positions) else np.zeros((0, 3))
        n = pos.shape[0]
        rot = np.broadcast_to(np.eye(3), (n, 3, 3)).copy() if rotations is None else np.asarray(rotations, dtype=np.float64)
        sc = np.full(n, np.nan) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)

        def labels(v: Any) -> np.ndarray:
            return np.full(n, v, dtype=object) if isinstance(v, str) else np.asarray(v, dtype=object).reshape(-1)

        return cls(pos, rot, sc, labels(tomogram), labels(class_name))

    def __len__(self) -> int:
        return self.positions.shape[0]

    def require_inside(self, shape_zyx: tuple[int, ...], pixel_size: float, *, source: str | None = None) -> None:
        """ModelError naming `source` when no particle lies in a volume of `shape_zyx` voxels of
        `pixel_size` A (its nearest voxel outside; voxel (0, 0, 0) at 0 A): positions in other units
        or of another tomogram."""
        voxel = np.rint(self.positions[:, ::-1] / pixel_size)
        if not np.all((voxel >= 0) & (voxel < np.asarray(shape_zyx)), axis=1).any():
            extent = ", ".join(f"{a} 0..{(n - 1) * pixel_size:g}" for a, n in zip("xyz", shape_zyx[::-1]))
            span = ", ".join(f"{a} {lo:g}..{hi:g}" for a, lo, hi in zip("xyz", self.positions.min(axis=0), self.positions.max(axis=0)))
            raise ModelError("positions", f"all {len(self)} particles lie outside the tomogram ({extent} A): they span {span}; "
                             "expected positions in Angstrom inside it", source=source)

    def subset(self, index: Any) -> "Particles":
        return Particles(
            self.positions[index], self.rotations[index], self.scores[index], self.tomogram[index], self.class_name[index]
        )

    def to_dataframe(self) -> pd.DataFrame:
        """One row per particle: x, y, z (A), score, tomogram, class_name, r00..r22."""
        df = pd.DataFrame(
            {
                "x": self.positions[:, 0],
                "y": self.positions[:, 1],
                "z": self.positions[:, 2],
                "score": self.scores,
                "tomogram": self.tomogram.astype(str),
                "class_name": self.class_name.astype(str),
            }
        )
        for i in range(3):
            for j in range(3):
                df[f"r{i}{j}"] = self.rotations[:, i, j]
        return df

    @classmethod
    def from_dataframe(cls, df: pd.DataFrame, *, source: str = "table") -> "Particles":
        missing = [c for c in ("x", "y", "z") if c not in df.columns]
        if missing:
            raise ModelError(missing[0], "column is missing (positions x, y, z in Angstrom)", source=source)
        rot_cols = [f"r{i}{j}" for i in range(3) for j in range(3)]
        rotations = df[rot_cols].to_numpy(dtype=np.float64).reshape(-1, 3, 3) if set(rot_cols) <= set(df.columns) else None
        return cls.create(
            df[["x", "y", "z"]].to_numpy(dtype=np.float64),
            rotations,
            df["score"].to_numpy() if "score" in df else None,
            df["tomogram"].to_numpy(dtype=object) if "tomogram" in df else "",
            df["class_name"].to_numpy(dtype=object) if "class_name" in df else "",
        )
