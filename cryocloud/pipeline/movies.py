"""Movies -> motion-corrected tilt images, one movie at a time (used by the motion stage and `watch`).

A movie (MRC or TIFF frames at a URL) is corrected by one task: read, align the frames
(`cryocloud.preprocess.motion.correct_tilt`), sum. The sums of a complete tilt series, in mdoc
section order, become a TiltSeries with the mdoc's metadata, sorted by angle with dark or empty
tilts dropped (`cryocloud.preprocess.assemble`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from cryocloud.model import TiltSeries
from cryocloud.pipeline.config import MotionParams
from cryocloud.store.mdoc import Mdoc


def correct_movie(url: str, pixel_size_a: float, params: MotionParams, storage_options: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Motion-correct one movie: (aligned sum (y, x) float32, frame shifts (frame, 2) as x, y in A).

    Runs inside one task: the movie is read in full (a few frames of one tilt)."""
    from cryocloud.preprocess.motion import correct_tilt
    from cryocloud.preprocess.movies import read_movie

    frames = np.asarray(read_movie(url, pixel_size=pixel_size_a, storage_options=storage_options).compute(scheduler="sync"))
    total, _, _, shifts_px = correct_tilt(frames, pixel_size_a, bfactor_a2=params.bfactor_a2, iterations=params.iterations,
                                          max_shift_a=params.max_shift_a)
    return total, shifts_px * pixel_size_a


def mdoc_pixel_size(mdoc: Mdoc, params: MotionParams) -> float:
    """The pixel size (A): the config's, else the mdoc's PixelSpacing."""
    from cryocloud.errors import StoreError

    px = params.pixel_size_a or mdoc.pixel_size
    if px is None:
        raise StoreError(mdoc.source, "has no PixelSpacing; set motion.pixel_size_a (A) in the config", field="PixelSpacing")
    return float(px)


def series_from_sums(mdoc: Mdoc, sums: list[np.ndarray], params: MotionParams) -> TiltSeries:
    """The tilt series of the motion-corrected sums (mdoc section order in), sorted by angle,
    dark or empty tilts dropped with a logged reason."""
    from cryocloud.preprocess.assemble import assemble

    ts = mdoc.to_tilt_series(np.stack(sums).astype(np.float32), pixel_size=mdoc_pixel_size(mdoc, params), exposure=params.exposure)
    return assemble(ts).tilt_series


def shifts_array(shifts_a: list[np.ndarray], tilt_angles: np.ndarray) -> xr.DataArray:
    """Per-frame shifts (tilt, frame, axis=(x, y)) in A with the tilt angles, as the drift figure takes them."""
    return xr.DataArray(np.stack(shifts_a), dims=("tilt", "frame", "axis"),
                        coords={"axis": ["x", "y"], "tilt_angle": ("tilt", np.asarray(tilt_angles, dtype=float))},
                        name="shift", attrs={"units": "angstrom"})


def shifts_table(shifts: xr.DataArray) -> str:
    """CSV text of the shifts: tilt, tilt_angle, frame, shift_x_a, shift_y_a."""
    values = np.asarray(shifts.values)
    angles = shifts.coords["tilt_angle"].values
    rows = [(t, float(angles[t]), f, *values[t, f]) for t in range(values.shape[0]) for f in range(values.shape[1])]
    return pd.DataFrame(rows, columns=["tilt", "tilt_angle", "frame", "shift_x_a", "shift_y_a"]).to_csv(index=False)


def write_motion(root, mdoc: Mdoc, corrected: list[tuple[np.ndarray, np.ndarray]], params: MotionParams) -> TiltSeries:
    """Persist motion-corrected movies (mdoc section order) under `root` (a Location): `motion/shifts.csv`,
    `motion/drift.png`, then `motion/tilt_series.zarr` last (the stage is complete when it reads back)."""
    from cryocloud.preprocess.figures import drift_figure, save_png
    from cryocloud.store import open_url, read_tilt_series, write_tilt_series
    from cryocloud.store.textfiles import write_text

    so = root.storage_options
    shifts = shifts_array([s for _, s in corrected], mdoc.tilt_angle)
    write_text(root.child("motion", "shifts.csv").url, shifts_table(shifts), overwrite=True, storage_options=so)
    with open_url(root.child("motion", "drift.png").url, "wb", storage_options=so) as fh:
        save_png(drift_figure(shifts), fh)
    ts = series_from_sums(mdoc, [total for total, _ in corrected], params)
    url = root.child("motion", "tilt_series.zarr").url
    write_tilt_series(ts, url, overwrite=True, storage_options=so, metadata={"stage": "motion", "parameters": params.model_dump()})
    return read_tilt_series(url, storage_options=so)
