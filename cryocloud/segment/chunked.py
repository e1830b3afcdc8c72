"""`segment_membranes`: a tomogram (lazy) -> membrane label image (lazy), chunked with overlap.

Graph, all arrays (z, y, x):
1. the volume, float32, in near-equal cubes of at most max(`chunk_voxels`, 2 x overlap depth);
2. the noise whitener of the missing wedge (`anisotropy`, computed on a few fixed cubes), then
   the ridge response per cube with `dask.array.map_overlap`, depth = `hessian.overlap_depth`
   (Hessian and integration supports + 1 voxel for the ridge test), so every cube's interior is
   what the whole volume would give; the volume's own faces are reflected;
3. thresholds from the response's noise statistics (`threshold`), computed on a bounded sample;
4. global hysteresis + connected components with a minimum area (`components`): two passes over
   the cubes, the component tables merged on the client; one label per connected membrane. By
   default the high threshold adapts to the candidate: `DEFAULT_HIGH` noise units for any, only
   `large_high` for one of at least `large_area_a2` (a weak, low-contrast membrane that large is
   no noise); large candidates left out all the same are logged and listed in the labels' attrs
   (`left_out`); components lying on gold fiducials' streaks dropped (`fiducials`);
5. the mid-surfaces thickened to `thickness_a` (each voxel within thickness / 2 of a surface,
   less `SURFACE_VOXEL_OFFSET`, takes that surface's label; `map_overlap` with depth
   thickness / 2 + 1);
6. only with `complete_vesicles`: membranes that fit a sphere closely and cover most of its
   measured directions get their missing-wedge caps drawn along the sphere (`complete`).

Memory per task is bounded by one cube plus its overlap (about 40 float32 values per voxel during
step 2), whatever the tomogram size. Only the whitener and steps 3 and 4 compute (small summaries); the labels
are returned lazy, for `cryocloud.store` to write.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import dask.array as da
import numpy as np
import pydantic
import xarray as xr
from scipy import ndimage

from cryocloud.errors import ModelError
from cryocloud.model import Tomogram
from cryocloud.segment.anisotropy import estimate_whitener
from cryocloud.segment.complete import SphereFit, draw_caps, fit_vesicles, gather_points
from cryocloud.segment.fiducials import drop_fiducial_streaks
from cryocloud.segment.components import Acceptance, LeftOut, hysteresis_components
from cryocloud.segment.hessian import membrane_ridge, overlap_depth
from cryocloud.segment.threshold import Thresholds, automatic_thresholds

log = logging.getLogger(__name__)

DEFAULT_SCALE_A = 10.0
DEFAULT_HIGH = 35.0  # noise units: the high threshold of a candidate smaller than large_area_a2 (kept only when min_size_a2 is lowered below it)
# mean distance (voxels) of a digital surface's voxel centres from the surface itself (uniform in
# +-1/2): thickening by thickness / 2 from the voxel centres would overshoot by this much
SURFACE_VOXEL_OFFSET = 0.25


class MembraneSettings(pydantic.BaseModel):
    """Parameters of membrane segmentation. Units: Angstrom; thresholds in noise units of the response."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    scale_a: float | None = pydantic.Field(
        None, gt=0, description="Hessian Gaussian s.d. (A); None = max(10 A, one voxel): a bilayer leaflet"
    )
    integration_a: float | None = pydantic.Field(
        None, ge=0, description="s.d. (A) of the orientation-coherent averaging of the plate tensor; None = 3 x scale"
    )
    polarity: Literal["dark", "bright", "either"] = pydantic.Field(
        "either", description="membrane contrast: dark (density, cryocloud's tomograms), bright (inverted), either"
    )
    low: float = pydantic.Field(5.0, ge=0, description="hysteresis low threshold: median + low x noise s.d. of the ridge response")
    high: float | None = pydantic.Field(
        None, ge=0, description="hysteresis high threshold (noise units) for every membrane, an explicit override; None (default): "
        f"adaptive, {DEFAULT_HIGH:g} for a candidate smaller than large_area_a2, large_high for a larger one"
    )
    large_high: float = pydantic.Field(
        15.0, ge=0, description="adaptive high threshold (noise units) of a candidate of at least large_area_a2 (when high is None)"
    )
    large_area_a2: float = pydantic.Field(
        70000.0, ge=0, description="a candidate at least this large (A^2 of mid-surface) is kept at large_high; left out, it is reported. "
        "Noise components at the low threshold stay below ~1e4 A^2 (independent phantom, tests/independent_membranes.py)"
    )
    min_size_a2: float = pydantic.Field(
        70000.0, ge=0, description="smallest membrane area kept (A^2 of mid-surface; a 150 A vesicle has ~2.8e5 A^2, ~2e5 outside the wedge)"
    )
    thickness_a: float = pydantic.Field(50.0, ge=0, description="output membrane thickness (A): a bilayer with head groups")
    wedge_normalise: bool = pydantic.Field(
        True, description="judge each plate against the noise in its own orientation (missing-wedge anisotropy; see segment.anisotropy)"
    )
    fiducial_sigma: float | None = pydantic.Field(
        20.0, gt=0, description="voxels beyond median +- this many robust s.d. of the tomogram are fiducials (gold); None: no fiducial rejection"
    )
    fiducial_margin_a: float = pydantic.Field(
        30.0, ge=0, description="a membrane with over 5% of its mid-surface within this distance (A) of a fiducial is its streak and is dropped"
    )
    complete_vesicles: bool = pydantic.Field(
        False, description="close membranes that fit a sphere across the missing wedge (model-based; see segment.complete)"
    )
    chunk_voxels: int = pydantic.Field(96, ge=8, description="edge of the processing cubes (voxels)")

    @pydantic.model_validator(mode="after")
    def _ordered(self) -> "MembraneSettings":
        high, large_high = self.high_sigmas()
        if self.low > min(high, large_high):
            raise ValueError(f"low ({self.low}) must not exceed high ({high}) nor large_high ({large_high})")
        return self

    def high_sigmas(self) -> tuple[float, float]:
        """(high, large candidates' high) in noise units: adaptive by default, `high` for both when set."""
        return (DEFAULT_HIGH, self.large_high) if self.high is None else (self.high, self.high)

    def scales_vox(self, pixel_size_a: float) -> tuple[float, float]:
        """(Hessian, integration) Gaussian s.d. in voxels of size `pixel_size_a`."""
        scale = max(DEFAULT_SCALE_A, pixel_size_a) if self.scale_a is None else self.scale_a
        if scale < 0.5 * pixel_size_a:
            raise ModelError("scale_a", f"{scale} A is below half a voxel ({pixel_size_a} A); the Hessian is undefined there")
        integration = 3 * scale if self.integration_a is None else self.integration_a
        return scale / pixel_size_a, integration / pixel_size_a


@dataclass(frozen=True)
class MembraneSegmentation:
    """Result of `segment_membranes`: lazy labels (z, y, x) uint32, 0 = no membrane, 1..count one per
    connected membrane; the ridge response (float32, lazy); the thresholds used; the large candidates
    left out (`left_out`: dicts of area_a2, centre_xyz_a, peak and needed, in noise units)."""

    labels: xr.DataArray
    ridge: xr.DataArray
    thresholds: Thresholds
    count: int
    settings: MembraneSettings
    vesicles: tuple[SphereFit, ...] = ()
    left_out: tuple[dict, ...] = ()

    @property
    def mask(self) -> xr.DataArray:
        """Lazy boolean membrane mask (z, y, x)."""
        return self.labels > 0


def _thicken(block: np.ndarray, half_vox: float) -> np.ndarray:
    """Every voxel within `half_vox` of a labelled voxel takes the nearest one's label."""
    if not block.any():
        return block
    distance, nearest = ndimage.distance_transform_edt(block == 0, return_indices=True)
    out = block[tuple(nearest)]
    out[distance > half_vox] = 0
    return out


def balanced_chunks(shape: tuple[int, ...], edge: int) -> tuple[tuple[int, ...], ...]:
    """Chunks of at most `edge` voxels, as equal as possible: none smaller than edge / 2 unless the axis is."""
    out = []
    for n in shape:
        count = max(1, math.ceil(n / edge))
        size = math.ceil(n / count)
        out.append(tuple(min(size, n - i * size) for i in range(count) if n - i * size > 0))
    return tuple(out)


def axis_depths(chunks: tuple[tuple[int, ...], ...], depth: int) -> dict[int, int]:
    """Overlap per axis: `depth`, limited by the axis length where the axis is one chunk (then the
    overlap only pads the volume's faces and the filters' own reflection does the rest)."""
    return {a: min(depth, min(c)) for a, c in enumerate(chunks)}


def ridge_response(volume: da.Array, pixel_size_a: float, settings: MembraneSettings, *, quiet: bool = True) -> da.Array:
    """Lazy ridge response (float32, z, y, x) of a volume, chunked with overlap (graph steps 1-2); the
    noise whitener (`anisotropy`) is computed here when `settings.wedge_normalise`."""
    scale, integration = settings.scales_vox(pixel_size_a)
    depth = overlap_depth(scale, integration)
    if min(volume.shape) < 2:
        raise ModelError("data", f"a volume of shape {volume.shape} is too thin for a 3D membrane filter")
    whitener = estimate_whitener(volume, scale, settings.polarity, quiet=quiet) if settings.wedge_normalise else None
    cubes = volume.astype(np.float32).rechunk(balanced_chunks(volume.shape, max(settings.chunk_voxels, 2 * depth)))
    return cubes.map_overlap(
        membrane_ridge, depth=axis_depths(cubes.chunks, depth), boundary="reflect", dtype=np.float32,
        scale_vox=scale, integration_vox=integration, polarity=settings.polarity, whitener=whitener,
    )


def describe_left_out(candidate: LeftOut, thresholds: Thresholds, coords: dict[str, np.ndarray], pixel_size_a: float) -> dict:
    """A large candidate left out, for logs and summaries: its mid-surface area (A^2), centre (x, y, z)
    in the tomogram's coordinates (A), peak and the threshold it missed (noise units)."""
    centre = [float(np.interp(c, np.arange(coords[d].size), coords[d])) for c, d in zip(candidate.centre, "zyx")]
    return {
        "area_a2": round(candidate.voxels * pixel_size_a**2, -2),
        "centre_xyz_a": [round(c, 1) for c in centre[::-1]],
        "peak": round(thresholds.noise_units(candidate.peak), 1),
        "needed": round(thresholds.noise_units(thresholds.large_high), 1),
    }


def segment_membranes(
    tomogram: Tomogram | xr.DataArray, settings: MembraneSettings | None = None, *, quiet: bool = False
) -> MembraneSegmentation:
    """Segment membranes of a (lazy) tomogram, or a DataArray (z, y, x) with coordinates in A; see the
    module docstring for the graph.

    Computes only the threshold statistics and the component tables (progress shown unless
    `quiet`); the returned labels are lazy, on the tomogram's coordinates.
    """
    if isinstance(tomogram, xr.DataArray):
        tomogram = Tomogram(tomogram)
    if not isinstance(tomogram, Tomogram):
        raise ModelError("tomogram", f"expected a cryocloud Tomogram or an xarray.DataArray (z, y, x), got {type(tomogram).__name__}")
    settings = settings or MembraneSettings()
    if settings.complete_vesicles and not tomogram.tilt_angles:
        raise ModelError("tilt_angles", "complete_vesicles needs the tilt range of the tomogram (its tilt_angles are unknown)")
    tilt_range = (min(tomogram.tilt_angles), max(tomogram.tilt_angles)) if tomogram.tilt_angles else None
    px = tomogram.pixel_size
    data = tomogram.data.data
    volume = data if isinstance(data, da.Array) else da.from_array(np.asarray(data), chunks=settings.chunk_voxels)
    ridge = ridge_response(volume, px, settings, quiet=quiet)
    thresholds = automatic_thresholds(ridge, settings.low, *settings.high_sigmas(), quiet=quiet)
    acceptance = Acceptance(thresholds.high, int(math.ceil(settings.min_size_a2 / px**2)),
                            int(math.ceil(settings.large_area_a2 / px**2)), thresholds.large_high)
    surfaces, count, left = hysteresis_components(ridge, thresholds.low, acceptance, quiet=quiet, description="membrane components")
    axes_a = {d: np.asarray(tomogram.data.coords[d].values, dtype=float) for d in ("z", "y", "x")}
    left_out = [describe_left_out(c, thresholds, axes_a, px) for c in left]
    for c in left_out:
        log.warning("segment membranes: a large candidate left out: %.3g A^2 at (x, y, z) %s A, peak %.1f noise s.d., "
                    "%.1f needed (a lower --high keeps it)", c["area_a2"], tuple(c["centre_xyz_a"]), c["peak"], c["needed"])
    streaks = 0
    if settings.fiducial_sigma is not None:
        surfaces, count, streaks = drop_fiducial_streaks(surfaces, count, volume, px, sigma=settings.fiducial_sigma,
                                                         margin_a=settings.fiducial_margin_a, quiet=quiet)
    half = max(settings.thickness_a / 2 / px - SURFACE_VOXEL_OFFSET, 0.0)
    labels = surfaces
    if half > 0:
        depth = axis_depths(surfaces.chunks, int(math.ceil(half)) + 1)
        labels = surfaces.map_overlap(_thicken, depth=depth, boundary="none", dtype=np.uint32, half_vox=half)
    fits: list[SphereFit] = []
    if settings.complete_vesicles:
        fits = fit_vesicles(gather_points(surfaces, quiet=quiet), volume.shape, tilt_range)
        labels = draw_caps(labels, fits, max(half, 0.5), tilt_range)
    attrs = {
        "pixel_size": px,
        "segmentation": {
            **settings.model_dump(mode="json"),
            "threshold_low": thresholds.low,
            "threshold_high": thresholds.high,
            "threshold_large_high": thresholds.large_high,
            "noise_median": thresholds.median,
            "noise_spread": thresholds.spread,
            "membranes": count,
            "fiducial_streaks_dropped": streaks,
            "left_out": left_out,
            **({"vesicles": [f.as_dict(px) for f in fits]} if settings.complete_vesicles else {}),
        },
    }
    coords = {d: tomogram.data.coords[d] for d in ("z", "y", "x")}
    name = f"{tomogram.data.name or 'tomogram'}_membranes"
    return MembraneSegmentation(
        labels=xr.DataArray(labels, dims=("z", "y", "x"), coords=coords, attrs=attrs, name=name),
        ridge=xr.DataArray(ridge, dims=("z", "y", "x"), coords=coords, attrs={"pixel_size": px}, name=f"{name}_ridge"),
        thresholds=thresholds,
        count=count,
        settings=settings,
        vesicles=tuple(fits),
        left_out=tuple(left_out),
    )
