"""`cryocloud curate gallery | apply | export` end to end on a digital-twin tomogram."""

import mrcfile
import numpy as np
import pandas as pd
import starfile
import pytest

from cryocloud.cli import main
from cryocloud.pick.formats import read_picks
from cryocloud.store import write_particles_csv, write_tomogram

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end


def test_gallery_apply_export(tmp_path):
    from cryocloud.reconstruct import reconstruct
    from cryocloud.simulate import SimulationConfig, simulate

    sim = simulate(SimulationConfig(shape_zyx=(32, 96, 96), pixel_size_a=16.0, n_particles=6, seed=5))
    tomo = reconstruct(sim.tilt_series, thickness_px=32)
    write_tomogram(tomo, str(tmp_path / "tomo.zarr"), levels=1)
    truth = sim.particles
    particles = type(truth).create(truth.positions, truth.rotations, np.arange(len(truth), 0, -1) / 10.0, "tomo")
    write_particles_csv(particles, str(tmp_path / "picks.csv"))
    n = len(particles)

    out = tmp_path / "gallery"
    args = ["curate", "gallery", str(tmp_path / "picks.csv"), str(tmp_path / "tomo.zarr"), str(out), "--box", "24", "--columns", "3", "--rows", "1"]
    assert main(args + ["--sort", "agreement", "--top-n", "3"]) == 0
    assert len(list(out.glob("gallery_*.png"))) == -(-n // 3)
    assert (out / "average_slices.png").stat().st_size > 1000
    ranking = pd.read_csv(out / "ranking.csv")
    assert sorted(ranking["index"]) == list(range(n)) and np.all(np.diff(ranking["agreement"]) <= 0)
    decisions = pd.read_csv(out / "decisions.csv")
    assert list(decisions["index"]) == list(ranking["index"]) and set(decisions["accept"]) == {1}
    assert main(args) == 2  # decisions.csv exists: not overwritten

    decisions.loc[decisions["index"].isin([0, 2]), "accept"] = 0
    decisions.to_csv(out / "decisions.csv", index=False)
    assert main(["curate", "apply", str(tmp_path / "picks.csv"), str(out / "decisions.csv"), str(tmp_path / "kept.star"), "--tomogram", str(tmp_path / "tomo.zarr")]) == 0
    kept = read_picks(str(tmp_path / "kept.star"), pixel_size=16.0, shape_zyx=(32, 96, 96))
    assert np.allclose(kept.positions, np.delete(particles.positions, [0, 2], axis=0), atol=1e-4)
    assert main(["curate", "apply", str(tmp_path / "picks.csv"), str(out / "decisions.csv"), str(tmp_path / "kept.ndjson")]) == 2  # no voxel size

    export = tmp_path / "stack"
    assert main(["curate", "export", str(tmp_path / "picks.csv"), str(tmp_path / "tomo.zarr"), str(export), "--decisions", str(out / "decisions.csv"), "--box", "24", "--axis", "particle"]) == 0
    with mrcfile.open(export / "particles.mrcs") as mrc:
        assert mrc.data.shape == (n - 2, 24, 24) and np.isclose(mrc.voxel_size.x, 16.0)
    table = starfile.read(export / "particles.star", always_dict=True)["particles"]
    assert len(table) == n - 2 and set(table["rlnMicrographName"]) == {"tomo"}


def test_auto_curation_accepts_particles_and_rejects_decoys(tmp_path, capsys):
    """`curate auto` on a twin's 10 true particles (true orientations) and 6 decoys in empty ice
    (random orientations, scores among the true ones'): the two-class split of the agreement with
    the average of the 4 best-scoring picks accepts every particle and rejects every decoy;
    `curate apply` reads the decisions back."""
    from curate_twin import twin_with_decoys

    from cryocloud.geometry import random_rotations
    from cryocloud.model import Particles

    rng = np.random.default_rng(1)
    tomo, truth, decoys = twin_with_decoys(10, 6, rng)
    write_tomogram(tomo, str(tmp_path / "tomo.zarr"), levels=1)
    scores = np.concatenate([np.linspace(1.0, 0.3, 10), rng.uniform(0.3, 0.8, 6)])
    picks = Particles.create(np.vstack([truth.positions, decoys]), np.concatenate([truth.rotations, random_rotations(6, rng)]), scores, "tomo")
    write_particles_csv(picks, str(tmp_path / "picks.csv"))

    out = tmp_path / "auto"
    args = ["curate", "auto", str(tmp_path / "picks.csv"), str(tmp_path / "tomo.zarr"), str(out), "--box", "24", "--top-n", "4", "--mask-radius", "100"]
    assert main(args) == 0
    decisions = pd.read_csv(out / "decisions.csv")
    assert list(decisions.columns) == ["index", "score", "agreement", "accept"]
    assert np.all(np.diff(decisions["agreement"]) <= 0)
    accepted = set(decisions.loc[decisions["accept"] == 1, "index"])
    assert accepted == set(range(10))
    assert (out / "average_slices.png").stat().st_size > 1000
    assert main(args) == 2  # decisions.csv exists
    assert main(args[:4] + [str(tmp_path / "other"), "--keep", "top:2"]) == 2  # a bad rule is refused
    assert "'keep'" in capsys.readouterr().err and not (tmp_path / "other").exists()

    assert main(["curate", "auto", *args[2:5], "--box", "24", "--top-n", "4", "--keep", "top:0.25", "--overwrite"]) == 0
    assert (pd.read_csv(out / "decisions.csv")["accept"] == 1).sum() == 4
    assert main(["curate", "apply", str(tmp_path / "picks.csv"), str(out / "decisions.csv"), str(tmp_path / "kept.csv")]) == 0
    kept = read_picks(str(tmp_path / "kept.csv"))
    assert len(kept) == 4 and np.all(np.min(np.linalg.norm(kept.positions[:, None] - truth.positions[None], axis=2), axis=1) < 1e-3)
