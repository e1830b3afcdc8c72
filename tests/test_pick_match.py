"""The match graph: accuracy on the digital twin, distributed execution, resume, tomogram masks."""

import os

import dask
import numpy as np
import pytest
from distributed import Client, LocalCluster

from cryocloud.geometry import random_rotations, rotation_angle_deg
from cryocloud.model import Tomogram
from cryocloud.pick import BlockCache, MatchSettings, TiltWeighting, extract_peaks, map_from_model, match, prepare_template, uniform_rotations
from cryocloud.pick.evaluate import f_beta, match_picks
from cryocloud.pick.template import read_map
from test_pick_score import rotate_real_space

pytestmark = pytest.mark.slow  # simulates and reconstructs the digital twin

REAL = __import__("pathlib").Path(__file__).resolve().parent / "data" / "real"


@pytest.mark.slow
def test_digital_twin_f_beta_and_orientations():
    """Ribosomes (7P6Z) simulated at 16 A voxels, 41 tilts (+-60, 3 deg, dose-symmetric, 123 e/A^2)
    with CTF, dose damage and shot noise; WBP reconstruction; 30 deg search with the real tilt angles,
    defocus and dose in the weighting."""
    from cryocloud.reconstruct import reconstruct
    from cryocloud.simulate import SimulationConfig, simulate
    from cryocloud.store import BUNDLED_STRUCTURE, read_atomic_model

    px, increment = 16.0, 30.0
    sim = simulate(SimulationConfig(shape_zyx=(48, 128, 128), pixel_size_a=px, n_particles=12, seed=1))
    ts = sim.tilt_series.with_per_tilt(defocus_u=sim.truth.defocus_u_a, defocus_v=sim.truth.defocus_v_a)
    tomo = reconstruct(ts, thickness_px=48)
    template = prepare_template(map_from_model(str(BUNDLED_STRUCTURE), px), px, px)
    rotations = uniform_rotations(increment)
    result = match(tomo, template, rotations, tilts=TiltWeighting.from_tilt_series(ts), settings=MatchSettings(subvolume=96, resolution_a=40.0))
    scores, orientation = dask.compute(result.scores, result.orientation)
    sigma, n_search = result.score_std()
    particles, threshold = extract_peaks(scores, orientation, rotations, radius_a=2 * template.particle_radius * px, n_false=1.0, score_std=sigma, n_search=n_search)

    model = read_atomic_model(str(BUNDLED_STRUCTURE))
    particle_radius = (3 * model.mass_da * 1.21 / (4 * np.pi)) ** (1 / 3)  # A, from the molecular volume
    score = f_beta(particles.positions, sim.particles.positions, particle_radius / 2)
    found, nearest = match_picks(particles.positions, sim.particles.positions, particle_radius / 2)
    assert score["f4"] >= 0.9
    errors = rotation_angle_deg(particles.rotations[nearest[found]], sim.particles.rotations[found])
    assert np.median(errors) < increment
    assert threshold > 5 * sigma


def _synthetic(n: int = 4, seed: int = 0):
    """Copies of a real ribosome template (PyTom, 21 A) pasted at known places and orientations + noise."""
    volume, _ = read_map(str(REAL / "pytom_templates" / "human_ribo_21A.em"), voxel_size=21.0)
    template = prepare_template(volume, 21.0, 21.0)
    rng = np.random.default_rng(seed)
    shape = (40, 72, 72)
    b, c = template.box, template.box // 2
    data = np.zeros(shape, np.float32)
    rotations = random_rotations(n, rng)
    positions = np.array([[20, 18, 18], [20, 18, 54], [20, 54, 18], [20, 54, 54]])[:n]
    for p, r in zip(positions, rotations):
        data[p[0] - c : p[0] - c + b, p[1] - c : p[1] - c + b, p[2] - c : p[2] - c + b] += rotate_real_space(template.data, r)
    data += rng.normal(scale=1.5 * data.std(), size=shape).astype(np.float32)
    tomo = Tomogram.from_array(dask.array.from_array(data, chunks=(20, 36, 36)), pixel_size=21.0)
    return tomo, template, positions, rotations


def test_distributed_cluster_and_resume(tmp_path):
    tomo, template, positions, truth_rotations = _synthetic()
    rotations = np.concatenate([truth_rotations, random_rotations(60, np.random.default_rng(9))])
    settings = MatchSettings(subvolume=64, batch_size=25)
    cache = BlockCache(str(tmp_path / "blocks"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, Client(cluster):
        result = match(tomo, template, rotations, settings=settings, cache=cache)
        scores, orientation = dask.compute(result.scores, result.orientation)
    files = sorted(os.listdir(tmp_path / "blocks"))
    assert len(files) == 18 and all(f.endswith(".npz") for f in files)  # cores of 64 - 2 x 17 voxels: 2 x 3 x 3
    picks, _ = extract_peaks(scores, orientation, rotations, radius_a=10 * 21.0, n_false=None, number=4)
    order = np.lexsort(picks.positions.T[::-1])
    np.testing.assert_array_equal(picks.positions[order] / 21.0, positions[:, ::-1][np.lexsort(positions[:, ::-1].T[::-1])])
    for k, p in enumerate(positions):
        assert orientation.values[tuple(p)] == k  # the pasted orientations are rotations 0..3
    # interrupt: one block lost; the rerun searches only that one and gives the same maps
    lost = tmp_path / "blocks" / files[0]
    kept = {f: os.stat(tmp_path / "blocks" / f).st_mtime_ns for f in files[1:]}
    lost.unlink()
    rerun = match(tomo, template, rotations, settings=settings, cache=cache)
    scores2, orientation2 = dask.compute(rerun.scores, rerun.orientation)
    assert lost.exists()
    assert all(os.stat(tmp_path / "blocks" / f).st_mtime_ns == t for f, t in kept.items())
    # equal up to float32 rounding (FFT code paths may depend on memory alignment); orientations
    # identical except at exact near-ties
    np.testing.assert_allclose(scores2.values, scores.values, rtol=0, atol=1e-6)
    assert (orientation2.values == orientation.values).mean() > 0.999


def test_blocks_cached_under_another_score_definition_are_not_reused(monkeypatch):
    from cryocloud.pick import score
    from cryocloud.pick.match import fingerprint

    tomo, template, _, rotations = _synthetic()
    settings = MatchSettings(subvolume=64)
    before = fingerprint(template, rotations, None, settings, tomo.shape)
    assert fingerprint(template, rotations, None, settings, tomo.shape) == before
    monkeypatch.setattr(score, "SCORE_DEFINITION", score.SCORE_DEFINITION + "+changed")
    assert fingerprint(template, rotations, None, settings, tomo.shape) != before


def test_tomogram_mask_skips_empty_subvolumes():
    tomo, template, positions, truth_rotations = _synthetic()
    mask = np.zeros(tomo.shape, bool)
    mask[:, :36, :36] = True  # only the first particle's quadrant
    result = match(tomo, template, truth_rotations, settings=MatchSettings(subvolume=64), tomogram_mask=mask)
    scores = result.scores.values
    assert np.all(scores[~mask] == 0)
    assert np.unravel_index(np.argmax(scores), scores.shape) == tuple(positions[0])
    total, total2, count = result.moments.compute()
    assert count < tomo.data.size * len(truth_rotations)  # skipped sub-volumes were not searched
