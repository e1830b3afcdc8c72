"""A digital twin with decoy picks for curation tests: true ribosomes and positions in empty ice."""

import numpy as np

PX = 16.0


def twin_with_decoys(n_particles: int, n_decoys: int, rng: np.random.Generator):
    """(WBP tomogram (48, 128, 128) at 16 A, its true Particles, decoy positions (n_decoys, 3) in A:
    inside the ice slab, > 250 A from every particle and > 150 A from each other)."""
    from cryocloud.reconstruct import reconstruct
    from cryocloud.simulate import SimulationConfig, simulate

    sim = simulate(SimulationConfig(shape_zyx=(48, 128, 128), pixel_size_a=PX, n_particles=n_particles, seed=4))
    tomo = reconstruct(sim.tilt_series, thickness_px=48)
    truth = sim.particles
    decoys: list[np.ndarray] = []
    while len(decoys) < n_decoys:
        candidate = rng.uniform([20, 20, 14], [108, 108, 34]) * PX
        if np.min(np.linalg.norm(truth.positions - candidate, axis=1)) > 250 and all(np.linalg.norm(candidate - d) > 150 for d in decoys):
            decoys.append(candidate)
    return tomo, truth, np.asarray(decoys)
