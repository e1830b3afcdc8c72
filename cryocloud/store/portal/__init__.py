"""CryoET Data Portal data read in place from its public bucket (anonymous, read-only), and results
written next to it in a copick overlay.

- `cryocloud.store.portal.address`: addresses (portal://, s3 keys, client objects) and bucket options;
- `cryocloud.store.portal.layout`: what a run holds (metadata JSONs), an address resolved to one image;
- `cryocloud.store.portal.read`: reading tomograms, tilt series, annotation masks and points;
- `cryocloud.store.portal.alignments`: Alignments/ (alignment_metadata.json, .xf/.tlt/.xtilt) and
  Frames/ (mdoc);
- `cryocloud.store.portal.https`: the HTTPS mirror for files that need no listing;
- `cryocloud.store.portal.copick`: the copick overlay layout and config for results.

Addresses (all resolve to an OME-Zarr image in the bucket):

- ``portal://DATASET/RUN`` (the run's default tomogram, or its tilt series for
  `read_portal_tilt_series`), ``portal://DATASET/RUN/vs/10.012`` (a voxel spacing),
  ``portal://DATASET/RUN/tomogram/ID``, ``portal://DATASET/RUN/vs/10.012/tomogram/ID``,
  ``portal://DATASET/RUN/tiltseries[/ID]``;
- plain keys ``s3://cryoet-data-portal-public/DATASET/RUN[/...]``: a ``.zarr`` key is read as is,
  a key inside a run is narrowed by the layout folders it names;
- objects of the official ``cryoet_data_portal`` client (duck-typed: ``s3_omezarr_dir``).

Layouts (paths are taken from the metadata JSONs, ``omezarr_dir``, never composed blindly):

- current (since Oct 2024): ``RUN/TiltSeries/ID/tiltseries_metadata.json`` (+ ``RUN.rawtlt``),
  ``RUN/Reconstructions/VoxelSpacing{vs:.3f}/Tomograms/ID/tomogram_metadata.json``,
  ``RUN/Reconstructions/VoxelSpacing{vs:.3f}/Annotations/ID/{object}-{version}.json``;
- older: ``RUN/TiltSeries/tiltseries_metadata.json``,
  ``RUN/Tomograms/VoxelSpacing{vs}/CanonicalTomogram/tomogram_metadata.json``,
  ``RUN/Tomograms/VoxelSpacing{vs}/Annotations/*.json``.

Metadata fields used (as in chanzuckerberg/cryoet-data-portal-backend,
test_infra/test_files/30001/RUN1/...: tomogram_metadata.json, tiltseries_metadata.json,
Annotations/100/foo-1.0.json): tomograms ``omezarr_dir``, ``voxel_spacing`` (A), ``size``
{z, y, x}, ``reconstruction_method``, ``is_visualization_default``; tilt series ``omezarr_dir``,
``pixel_spacing`` (A), ``acceleration_voltage`` (V), ``spherical_aberration_constant`` (mm),
``tilt_axis`` (deg), ``is_aligned``, ``total_flux`` (e/A^2), ``per_section_parameter``
[{``z_index``, ``raw_angle`` (deg), ``frame_acquisition_order``, ``major_defocus`` /
``minor_defocus`` (A), ``astigmatic_angle`` (deg)}]; annotations ``annotation_object.name``,
``version``, ``files`` [{``format``, ``shape``, ``path``}].

Portal pyramids are mean-pooled with scale transforms only: level n is read with its voxel centres
shifted by (2**n - 1) / 2 level-0 voxels (`cryocloud.store.arrays.spatial_array`). The bucket is
read anonymously unless the storage options say otherwise; the endpoint comes from the storage
options or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (a local S3 server holding a copy).
"""

from cryocloud.store.location import PORTAL_BUCKET
from cryocloud.store.portal.address import PORTAL_HTTPS, SCHEME, PortalRef, is_portal_url, names_tomogram, parse_portal_url, portal_address, portal_options
from cryocloud.store.portal.layout import PortalAnnotation, PortalImage, PortalRun, list_runs, portal_run, read_json, resolve_portal
from cryocloud.store.portal.read import (
    read_annotation_mask, read_annotation_points, read_portal_tilt_series, read_portal_tomogram, tilt_coordinates,
)

__all__ = [
    "PORTAL_BUCKET", "PORTAL_HTTPS", "SCHEME", "PortalAnnotation", "PortalImage", "PortalRef", "PortalRun", "is_portal_url",
    "list_runs", "names_tomogram", "parse_portal_url", "portal_address", "portal_options", "portal_run", "read_annotation_mask", "read_annotation_points", "read_json",
    "read_portal_tilt_series", "read_portal_tomogram", "resolve_portal", "tilt_coordinates",
]
