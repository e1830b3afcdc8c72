"""Subtomogram averaging: extraction, missing-wedge-constrained alignment, wedge-weighted and
sub-tilt (CTF-corrected) averages, gold-standard FSC, RELION-5 particle sets.

Modules: `extract` (lazy subvolumes at particle positions), `wedge` (missing-wedge weights from the
real tilt angles), `align` (poses and averages), `refine` (two independent halves), `fsc`,
`subtilt` (particles reconstructed from their tilt images), `relion_particles` (STAR I/O).
"""

from cryocloud.average.align import Poses, SearchSettings, Wedges, align, average, average_spectra, map_from_spectra
from cryocloud.average.extract import Subvolumes, extract
from cryocloud.average.fsc import FscCurve, corrected_masked_fsc, fsc, resolution_at
from cryocloud.average.refine import RefineResult, refine, split_halves

__all__ = [
    "FscCurve",
    "Poses",
    "RefineResult",
    "SearchSettings",
    "Subvolumes",
    "Wedges",
    "align",
    "average",
    "average_spectra",
    "corrected_masked_fsc",
    "extract",
    "fsc",
    "map_from_spectra",
    "refine",
    "resolution_at",
    "split_halves",
]
