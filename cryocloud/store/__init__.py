"""The I/O edge of cryocloud: OME-Zarr images, MRC, SerialEM mdoc, IMOD tilt files, particle tables.

Every path is a URL (local path, ``file://``, ``s3://``); ``storage_options`` pass through to
fsspec/s3fs (see `cryocloud.store.location`). Reads are lazy (Dask); writes put data first and
metadata last, and resume after an interruption.
"""

from cryocloud.store.images import image_info, read_tilt_series, read_tomogram, write_tilt_series, write_tomogram
from cryocloud.store.location import Location, open_url, resolve

__all__ = [
    "Location",
    "image_info",
    "open_url",
    "read_tilt_series",
    "read_tomogram",
    "resolve",
    "write_tilt_series",
    "write_tomogram",
]
