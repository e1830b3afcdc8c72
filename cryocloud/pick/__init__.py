"""Template matching: angular search sets, template preparation and weighting, the FLCC kernel,
the Dask search graph, peak extraction and particle-list output.

Typical use::

    from cryocloud.pick import match, MatchSettings, prepare_template, uniform_rotations, extract_peaks
"""

from cryocloud.pick.angles import crowther_increment, local_rotations, parse_angle_list, symmetry_operators, uniform_rotations
from cryocloud.pick.match import BlockCache, MatchResult, MatchSettings, match
from cryocloud.pick.peaks import BlockMoments, extract_peaks, false_alarm_threshold
from cryocloud.pick.template import Template, map_from_model, prepare_template, read_map
from cryocloud.pick.weighting import TiltWeighting

__all__ = [
    "BlockCache",
    "BlockMoments",
    "MatchResult",
    "MatchSettings",
    "Template",
    "TiltWeighting",
    "crowther_increment",
    "extract_peaks",
    "false_alarm_threshold",
    "local_rotations",
    "map_from_model",
    "match",
    "parse_angle_list",
    "prepare_template",
    "read_map",
    "symmetry_operators",
    "uniform_rotations",
]
