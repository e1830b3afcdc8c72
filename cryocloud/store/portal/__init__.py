"""CryoET Data Portal data read in place from its public bucket (anonymous, read-only), and results
written next to it in a copick overlay.

- `cryocloud.store.portal.bucket`: addresses (portal://, s3 keys, client objects), listing runs,
  reading tomograms, tilt series and point annotations;
- `cryocloud.store.portal.alignments`: Alignments/ (alignment_metadata.json, .xf/.tlt/.xtilt) and
  Frames/ (mdoc);
- `cryocloud.store.portal.https`: the HTTPS mirror for files that need no listing;
- `cryocloud.store.portal.copick`: the copick overlay layout and config for results.
"""

from cryocloud.store.portal.bucket import (
    PORTAL_BUCKET, PORTAL_HTTPS, SCHEME, PortalAnnotation, PortalImage, PortalRef, PortalRun, is_portal_url, list_runs,
    names_tomogram, parse_portal_url, portal_address, portal_options, portal_run, read_annotation_mask, read_annotation_points, read_json, read_portal_tilt_series,
    read_portal_tomogram, resolve_portal, tilt_coordinates,
)

__all__ = [
    "PORTAL_BUCKET", "PORTAL_HTTPS", "SCHEME", "PortalAnnotation", "PortalImage", "PortalRef", "PortalRun", "is_portal_url",
    "list_runs", "names_tomogram", "parse_portal_url", "portal_address", "portal_options", "portal_run", "read_annotation_mask", "read_annotation_points", "read_json",
    "read_portal_tilt_series", "read_portal_tomogram", "resolve_portal", "tilt_coordinates",
]
