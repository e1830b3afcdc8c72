"""Membrane segmentation: plate-enhancing Hessian filter, hysteresis, connected components, chunked.

    from cryocloud.segment import MembraneSettings, segment_membranes
    result = segment_membranes(tomogram)              # lazy labels (z, y, x) uint32
    cryocloud.store.write_labels(result.labels, "tomo.zarr/labels/membranes")

Modules: `hessian` (the filter on one block), `anisotropy` (the missing wedge's noise
anisotropy, normalised out of the plate measure), `threshold` (automatic thresholds), `components`
(hysteresis + connected components across chunks), `chunked` (the Dask driver), `complete`
(opt-in closing of vesicles across the missing wedge), `evaluate` (Dice against ground truth,
missing-wedge aware, recall per normal angle), `figures` (overlays).
"""

from cryocloud.segment.chunked import MembraneSegmentation, MembraneSettings, segment_membranes
from cryocloud.segment.evaluate import dice, evaluate_membranes, recall_by_normal_angle, resolvable_region

__all__ = ["MembraneSegmentation", "MembraneSettings", "dice", "evaluate_membranes", "recall_by_normal_angle", "resolvable_region", "segment_membranes"]
