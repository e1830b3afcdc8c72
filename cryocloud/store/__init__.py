"""The I/O edge of cryocloud: OME-Zarr images, MRC, SerialEM mdoc, IMOD tilt files, particle tables.

Every path is a URL (local path, ``file://``, ``s3://``); ``storage_options`` pass through to
fsspec/s3fs (see `cryocloud.store.location`). Reads are lazy (Dask); writes put data first and
metadata last, and resume after an interruption.
"""

from cryocloud.store.atomic_model import BUNDLED_STRUCTURE, read_atomic_model
from cryocloud.store.em import em_info, read_em
from cryocloud.store.images import image_info, read_tilt_series, read_tomogram, write_tilt_series, write_tomogram
from cryocloud.store.labels import read_labels, write_labels
from cryocloud.store.location import Location, open_url, resolve
from cryocloud.store.mdoc import Mdoc, parse_mdoc, read_mdoc
from cryocloud.store.mrc import mrc_info, read_mrc, read_tilt_series_mrc, write_mrc
from cryocloud.store.particles_csv import read_particles_csv, write_particles_csv
from cryocloud.store.tiltfiles import alignments_from_xf, read_tlt, read_xf, write_tlt, write_xf, xf_from_alignments
from cryocloud.store.volume import ATOMIC_MODEL_SUFFIXES, MRC_SUFFIXES, is_atomic_model, is_em, is_mrc, read_volume, require_contrast, require_volume

__all__ = [
    "ATOMIC_MODEL_SUFFIXES",
    "BUNDLED_STRUCTURE",
    "MRC_SUFFIXES",
    "Location",
    "Mdoc",
    "alignments_from_xf",
    "em_info",
    "image_info",
    "is_atomic_model",
    "is_em",
    "is_mrc",
    "mrc_info",
    "open_url",
    "read_atomic_model",
    "read_em",
    "parse_mdoc",
    "read_labels",
    "read_mdoc",
    "read_mrc",
    "read_particles_csv",
    "read_tilt_series",
    "read_tilt_series_mrc",
    "read_tlt",
    "read_tomogram",
    "read_volume",
    "read_xf",
    "require_contrast",
    "require_volume",
    "resolve",
    "write_labels",
    "write_mrc",
    "write_particles_csv",
    "write_tilt_series",
    "write_tlt",
    "write_tomogram",
    "write_xf",
    "xf_from_alignments",
]
