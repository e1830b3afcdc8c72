"""False-alarm cut-off from each block's (z slab's) own score sigma: a constructed two-region score
map, the per-block moments of a search, match.json and `extract-peaks --local-sigma`."""

import json

import numpy as np
import pytest
import xarray as xr

from cryocloud.cli import main
from cryocloud.errors import ModelError
from cryocloud.geometry import random_rotations
from cryocloud.pick.job import MatchJob
from cryocloud.pick.peaks import BlockMoments, extract_peaks
from cryocloud.pick.results import block_moments_of, read_match, run_match
from test_pick_match import _synthetic

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end

PLANTED = np.array([[8, 8, 8], [8, 24, 24], [24, 8, 24]])  # (z, y, x) in the quiet half


def _two_region_search(seed: int = 0, orientations: int = 20):
    """Scores of a search over `orientations` rotations that are pure Gaussian noise of sigma 1 in
    z < 32 and sigma 2 in z >= 32 (a 64 x 32 x 32 volume; blocks of 16^3), plus three planted peaks
    of 6.5 in the quiet half: the best-score map, its moments per block and the block edges."""
    rng = np.random.default_rng(seed)
    shape = (64, 32, 32)
    spread = np.where(np.arange(shape[0]) < 32, 1.0, 2.0)[:, None, None, None]
    evaluated = rng.normal(size=(*shape, orientations)) * spread
    edges = tuple(np.arange(0, n + 1, 16) for n in shape)
    grid = tuple(len(e) - 1 for e in edges)
    blocks = evaluated.reshape(grid[0], 16, grid[1], 16, grid[2], 16, orientations)
    moments = np.stack([blocks.sum(axis=(1, 3, 5, 6)), (blocks**2).sum(axis=(1, 3, 5, 6)), np.full(grid, 16**3 * orientations)], axis=-1)
    best = evaluated.max(axis=-1).astype(np.float32)
    best[tuple(PLANTED.T)] = 6.5
    coords = {d: np.arange(n, dtype=np.float64) for d, n in zip("zyx", shape)}
    scores = xr.DataArray(best, dims=("z", "y", "x"), coords=coords, attrs={"pixel_size": 1.0})
    orientation = xr.DataArray(np.zeros(shape, np.int32), dims=("z", "y", "x"), coords=coords, attrs={"pixel_size": 1.0})
    return scores, orientation, BlockMoments(moments, edges)


@pytest.mark.parametrize("mode", ["block", "slab"])
def test_local_sigma_keeps_false_alarms_near_n_false_where_global_sigma_does_not(mode):
    scores, orientation, blocks = _two_region_search()
    sigma, n_search = blocks.total()
    assert sigma == pytest.approx(np.sqrt(2.5), rel=0.01)
    kwargs = dict(radius_a=1.0, n_false=1.0, score_std=sigma, n_search=n_search, block_moments=blocks)
    plain, cut = extract_peaks(scores, orientation, np.eye(3)[None], local_sigma="global", **kwargs)
    local, lowest = extract_peaks(scores, orientation, np.eye(3)[None], local_sigma=mode, sigma_floor=False, **kwargs)
    floored, floor_cut = extract_peaks(scores, orientation, np.eye(3)[None], local_sigma=mode, **kwargs)
    default, _ = extract_peaks(scores, orientation, np.eye(3)[None], **kwargs)  # slab, floored
    np.testing.assert_array_equal(default.positions, floored.positions)
    planted = {tuple(p) for p in PLANTED[:, ::-1].astype(float)}  # (x, y, z) A at 1 A voxels
    # global sigma 1.58: ~23 expected false alarms from the sigma-2 half (cut-off at 4.0 of its
    # sigma), and the planted peaks of the quiet half (6.5 sigma there) fall under its cut-off
    plain_false = [p for p in map(tuple, plain.positions) if p not in planted]
    assert len(plain_false) >= 10 and all(p[2] >= 32 for p in plain_false)
    assert not planted & set(map(tuple, plain.positions))
    # each block's own sigma: ~1 false alarm in all (n_false), the planted peaks found
    local_false = [p for p in map(tuple, local.positions) if p not in planted]
    assert len(local_false) <= 4
    assert planted <= set(map(tuple, local.positions))
    assert lowest < cut
    # with the floor (default) the noisy half keeps its own cut-off, the quiet half the global one
    assert len([p for p in map(tuple, floored.positions) if p not in planted]) <= 4
    assert not planted & set(map(tuple, floored.positions))
    assert floor_cut == cut


def test_block_moments_fall_back_and_check_their_shape():
    scores, orientation, blocks = _two_region_search(orientations=4)
    sigma, n_search = blocks.total()
    plain, cut = extract_peaks(scores, orientation, np.eye(3)[None], radius_a=1.0, score_std=sigma, n_search=n_search)
    without, cut2 = extract_peaks(scores, orientation, np.eye(3)[None], radius_a=1.0, score_std=sigma, n_search=n_search, local_sigma="block")
    np.testing.assert_array_equal(without.positions, plain.positions)  # no block moments (older results): global sigma
    assert cut2 == cut
    with pytest.raises(ModelError, match="local_sigma"):
        extract_peaks(scores, orientation, np.eye(3)[None], radius_a=1.0, score_std=sigma, n_search=n_search, local_sigma="voxel")
    with pytest.raises(ModelError, match="block_moments"):
        BlockMoments(blocks.moments[:, :1], blocks.edges)
    slab = blocks.sigma_blocks("slab")
    assert np.allclose(slab[:2], 1.0, rtol=0.02) and np.allclose(slab[2:], 2.0, rtol=0.02)
    assert np.allclose(blocks.sigma_blocks("slab", floor=True)[:2], sigma) and np.allclose(blocks.sigma_blocks("global"), sigma)


def test_search_keeps_moments_per_block_in_match_json(tmp_path, capsys):
    tomo, template, positions, truth_rotations = _synthetic()
    rotations = np.concatenate([truth_rotations, random_rotations(20, np.random.default_rng(9))])
    summary = run_match(tomo, template, rotations, str(tmp_path / "tm"), job=MatchJob(subvolume=64, ctf="none", resolution_a=3 * 21.0))
    blocks = block_moments_of(summary)
    assert [len(e) - 1 for e in blocks.edges] == [2, 3, 3] and blocks.edges[0][-1] == 40 and blocks.edges[2][-1] == 72
    assert blocks.total() == pytest.approx((summary["score_std"], summary["n_search"]), rel=1e-9)
    assert summary["n_search"] == 40 * 72 * 72 * len(rotations)
    scores, orientation, rots, stored = read_match(str(tmp_path / "tm"))
    picks, _ = extract_peaks(scores, orientation, rots, radius_a=10 * 21.0, n_false=1.0, score_std=stored["score_std"], n_search=stored["n_search"],
                             block_moments=block_moments_of(stored), local_sigma="block")
    found = picks.positions[:, ::-1] / 21.0
    assert all(np.min(np.linalg.norm(found - p, axis=1)) <= 1.0 for p in positions) and len(picks) <= len(positions) + 1
    # an older match.json (no block moments) still extracts, with the global sigma
    old = {k: v for k, v in stored.items() if k not in ("block_moments", "block_edges_zyx")}
    assert block_moments_of(old) is None
    (tmp_path / "tm" / "match.json").write_text(json.dumps(old))
    assert main(["extract-peaks", str(tmp_path / "tm"), str(tmp_path / "old.csv"), "--local-sigma", "block", "--no-figures"]) == 0
    assert main(["extract-peaks", str(tmp_path / "tm"), str(tmp_path / "bad.csv"), "--local-sigma", "voxel", "--no-figures"]) == 2
    assert "local_sigma" in capsys.readouterr().err and not (tmp_path / "bad.csv").exists()
