"""Persisting an alignment: the tilt series with the alignment in its metadata, IMOD .xf/.tlt, AreTomo .aln and a PNG.

Used by `cryocloud align` and the pipeline's align stage (the I/O edge, not a stage).
"""

from __future__ import annotations

import numpy as np

from cryocloud.alignment.figures import save_residuals_png
from cryocloud.alignment.result import AlignmentResult
from cryocloud.errors import OutputExistsError
from cryocloud.model import TiltSeries
from cryocloud.store import open_url, resolve, write_tilt_series
from cryocloud.store.aretomo import write_aln
from cryocloud.store.tiltfiles import write_tlt, write_xf


def sibling_url(out_url: str, suffix: str) -> str:
    """`<out without .zarr><suffix>`: where the .xf, .tlt, .aln and PNG of an output go by default."""
    base = out_url.rstrip("/")
    return (base[: -len(".zarr")] if base.endswith(".zarr") else base) + suffix


def write_alignment(
    ts: TiltSeries,
    result: AlignmentResult,
    out_url: str,
    *,
    parameters: dict,
    xf_url: str | None = None,
    tlt_url: str | None = None,
    aln_url: str | None = None,
    ngff_version: str = "0.4",
    overwrite: bool = False,
    storage_options: dict | None = None,
    title: str = "",
) -> dict[str, str]:
    """Write `ts` with `result` applied (OME-Zarr), the .xf/.tlt, the same alignment as an AreTomo .aln and the
    residuals PNG; returns their URLs.

    The PNG is refused when it exists and `overwrite` is False, like the other outputs.
    """
    urls = {
        "tilt_series": out_url,
        "xf": xf_url or sibling_url(out_url, ".xf"),
        "tlt": tlt_url or sibling_url(out_url, ".tlt"),
        "aln": aln_url or sibling_url(out_url, ".aln"),
        "residuals_png": sibling_url(out_url, "_residuals.png"),
    }
    if not overwrite and resolve(urls["residuals_png"], storage_options).exists():
        raise OutputExistsError(f"{urls['residuals_png']} exists; use --overwrite to replace it")
    write_tilt_series(
        result.apply_to(ts), out_url, ngff_version=ngff_version, overwrite=overwrite, storage_options=storage_options,
        metadata={"stage": "align", "parameters": parameters, "alignment": result.summary()},
    )
    write_xf(urls["xf"], result.xf_rows(), overwrite=overwrite, storage_options=storage_options)
    write_tlt(urls["tlt"], result.corrected_tilt_angles_deg, overwrite=overwrite, storage_options=storage_options)
    write_aln(urls["aln"], tilt_angles=result.corrected_tilt_angles_deg, tilt_axis_angle=result.tilt_axis_angle_deg,
              shifts_px=np.asarray(result.shifts_a) / result.pixel_size_a, image_size_xy=(ts.data.shape[-1], ts.data.shape[-2]),
              overwrite=overwrite, storage_options=storage_options)
    with open_url(urls["residuals_png"], "wb", storage_options=storage_options) as f:
        save_residuals_png(result, f, title=title)
    return urls
