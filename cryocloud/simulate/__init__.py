"""Digital twin: simulated cryo-ET specimens and acquisitions with full ground truth.

- `schemes`: tilt schemes (unidirectional, bidirectional, dose-symmetric) -> angles, acquisition
  order, exposure and pre-exposure;
- `atomic`: atomic model -> Coulomb potential map (electron scattering factors, band-limited);
- `phantom`: ice slab, non-overlapping particles, membranes, gold beads, labels; rendered per Y slab;
- `acquisition`: per-tilt image formation (phase, raw-frame geometry, CTF with defocus gradient
  and astigmatism, dose filter, counts with inelastic loss, Poisson noise, movie frames with drift);
- `twin.simulate`: the lazy (Dask) pipeline; `output.write_simulation`: OME-Zarr + truth tables.

    from cryocloud.simulate import SimulationConfig, simulate, write_simulation
    result = simulate(SimulationConfig(shape_zyx=(64, 128, 128), n_particles=8, seed=0))
    write_simulation(result, "s3://bucket/sim01")

Same config and seed -> identical output, whatever the Dask chunking or scheduler.
"""

from cryocloud.simulate.config import FiducialConfig, MembraneConfig, SimulationConfig, preset
from cryocloud.simulate.output import write_simulation
from cryocloud.simulate.schemes import TiltScheme, tilt_scheme
from cryocloud.simulate.twin import GroundTruth, SimulationResult, simulate

__all__ = [
    "FiducialConfig",
    "GroundTruth",
    "MembraneConfig",
    "SimulationConfig",
    "SimulationResult",
    "TiltScheme",
    "preset",
    "simulate",
    "tilt_scheme",
    "write_simulation",
]
