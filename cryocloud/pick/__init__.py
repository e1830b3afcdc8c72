"""Template matching: angular search sets, template preparation and weighting, the FLCC kernel,
the Dask search graph, peak extraction and particle-list output.

Typical use::

    from cryocloud.pick import MatchJob, PeaksJob, ScoreMaps

    job = MatchJob(angular_increment_deg=30.0)
    template = job.prepare(volume, template_voxel_size, tomogram.pixel_size)
    particles, threshold = PeaksJob().run(ScoreMaps.of(job.run(tomogram, template, tilts), template))

or the parts: `match`, `MatchSettings`, `prepare_template`, `uniform_rotations`, `extract_peaks`.
"""

from cryocloud.pick.angles import crowther_increment, local_rotations, parse_angle_list, symmetry_operators, uniform_rotations
from cryocloud.pick.job import MatchJob, PeaksJob, ScoreMaps
from cryocloud.pick.match import BlockCache, MatchResult, MatchSettings, match
from cryocloud.pick.peaks import BlockMoments, extract_peaks, false_alarm_threshold
from cryocloud.pick.template import Template, map_from_model, prepare_template, read_map
from cryocloud.pick.weighting import TiltWeighting

__all__ = [
    "BlockCache",
    "BlockMoments",
    "MatchJob",
    "MatchResult",
    "MatchSettings",
    "PeaksJob",
    "ScoreMaps",
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
