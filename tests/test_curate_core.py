"""Curation: minislabs (geometry), ranking by agreement with a first average (digital twin),
decisions read back, pick-list reading, particle stack + STAR export."""

import json

import mrcfile
import numpy as np
import pytest
import starfile
from curate_twin import twin_with_decoys

from cryocloud.curate.auto import acceptance_threshold, split_threshold
from cryocloud.curate.decisions import apply_decisions, decisions_csv, parse_decisions
from cryocloud.curate.export import export_stack
from cryocloud.curate.gallery import write_gallery
from cryocloud.curate.minislab import minislabs, to_particle_frame
from cryocloud.pick.formats import read_picks
from cryocloud.curate.rank import agreement_with_average, rank_by_agreement, rank_by_score
from cryocloud.errors import ModelError, StoreError
from cryocloud.geometry import random_rotations, relion_euler_to_matrix
from cryocloud.model import Particles, Tomogram
from cryocloud.pick.formats import FORMATS, write_picks


def _blob(shape, centre_zyx, sigma=1.0):
    z, y, x = np.indices(shape)
    return np.exp(-((z - centre_zyx[0]) ** 2 + (y - centre_zyx[1]) ** 2 + (x - centre_zyx[2]) ** 2) / (2 * sigma**2))


def test_particle_frame_convention():
    """Index q (x, y, z) of the resampled box holds the value at centre + R q (R: reference -> particle)."""
    rotation = relion_euler_to_matrix(30.0, 50.0, -70.0)
    c = 12
    p = rotation @ np.array([5.0, 0.0, 0.0])  # x, y, z
    volume = _blob((25, 25, 25), c + p[::-1]).astype(np.float32)
    framed = to_particle_frame(volume, rotation)
    assert np.unravel_index(np.argmax(framed), framed.shape) == (c, c, c + 5)


def test_minislabs_along_z_and_along_the_particle_axis():
    """A rod along the particle's own z axis: seen along that axis it is a round dot at the centre;
    seen along the tomogram's z it is a streak. The z slab is the mean over its thickness."""
    px, box = 10.0, 24
    rotation = relion_euler_to_matrix(0.0, 70.0, 40.0)
    axis = rotation @ np.array([0.0, 0.0, 1.0])
    centre = np.array([31.0, 29.0, 30.0])  # voxel x, y, z
    shape = (60, 60, 60)
    z, y, x = np.indices(shape)
    d = np.stack([x - centre[0], y - centre[1], z - centre[2]], axis=-1)
    along = d @ axis
    across2 = (d * d).sum(-1) - along**2
    volume = (np.exp(-across2 / 2.0) * (np.abs(along) < 8)).astype(np.float32)
    tomo = Tomogram.from_array(volume, pixel_size=px)
    particles = Particles.create([centre * px], rotation[None], [1.0])

    def spread(image):
        w = np.clip(image, 0, None)
        yy, xx = np.indices(image.shape)
        m = w.sum()
        cy, cx = (w * yy).sum() / m, (w * xx).sum() / m
        cov = np.cov(np.stack([yy.ravel() - cy, xx.ravel() - cx]), aweights=w.ravel())
        ev = np.linalg.eigvalsh(cov)
        return ev[1] / ev[0], (cy, cx)

    own = np.asarray(minislabs(tomo, particles, box=box, thickness_a=200.0, axis="particle"))[0]
    ratio_own, centre_own = spread(own)
    assert ratio_own < 1.3 and np.allclose(centre_own, box // 2, atol=0.5)
    along_z = np.asarray(minislabs(tomo, particles, box=box, thickness_a=200.0, axis="z"))[0]
    assert spread(along_z)[0] > 4
    thin = np.asarray(minislabs(tomo, particles, box=box, thickness_a=20.0))[0]  # 3 voxels
    c = np.rint(centre).astype(int)
    expected = volume[c[2] - 1 : c[2] + 2, c[1] - box // 2 : c[1] + box // 2, c[0] - box // 2 : c[0] + box // 2].mean(axis=0)
    assert np.allclose(thin, expected, atol=1e-6)
    with pytest.raises(ModelError, match="axis"):
        minislabs(tomo, particles, box=box, thickness_a=30.0, axis="y")


@pytest.mark.slow
def test_agreement_ranks_true_particles_above_decoys():
    """Digital twin (16 A, WBP): 16 ribosomes with their true orientations, 10 decoys in empty ice
    with random orientations. The average of the 5 best-scored true particles correlates better with
    every other true particle than with any decoy, although decoys' scores lie among the true ones."""
    rng = np.random.default_rng(1)
    tomo, truth, decoys = twin_with_decoys(16, 10, rng)
    n = len(truth)
    scores = np.concatenate([np.linspace(1.0, 0.1, n), rng.uniform(0.1, 0.8, 10)])
    scores[:5] += 1.0  # the first five true particles lead the score ranking
    particles = Particles.create(np.vstack([truth.positions, decoys]), np.concatenate([truth.rotations, random_rotations(10, rng)]), scores)
    correlation, average = agreement_with_average(tomo, particles, box=24, top_n=5, mask_radius_a=150.0)
    assert average.shape == (24, 24, 24)
    order = rank_by_agreement(correlation)
    is_true = np.arange(len(particles)) < n
    assert np.all(is_true[order[: n - 5]] | (order[: n - 5] < 5))  # top ranks: true particles
    assert correlation[5:n].min() > correlation[n:].max()
    assert list(rank_by_score(particles)[:5]) == [0, 1, 2, 3, 4]


def test_decisions_read_back(tmp_path):
    particles = Particles.create(np.arange(18.0).reshape(6, 3), scores=[0.5, 0.9, np.nan, 0.1, 0.7, 0.3])
    template = decisions_csv(particles, rank_by_score(particles))
    assert template.splitlines()[1].startswith("1,0.9,1")
    edited = template.replace("\n4,0.7,1", "\n4,0.7,0").replace("\n3,0.1,1", "\n3,0.1,reject")
    path = tmp_path / "decisions.csv"
    path.write_text(edited)
    kept = apply_decisions(particles, str(path))
    assert np.array_equal(kept.positions[:, 0], [0.0, 3.0, 6.0, 15.0])
    assert np.array_equal(parse_decisions(json.dumps({"reject": [0, 5]}), 6), [False, True, True, True, True, False])
    assert np.array_equal(parse_decisions(json.dumps({"accept": [2]}), 6), [False, False, True, False, False, False])
    assert np.array_equal(parse_decisions("index\n1\n3\n", 6), [False, True, False, True, False, False])
    with pytest.raises(ModelError, match=r"decisions.csv.*'index'.*0\.\.5"):
        parse_decisions("index,accept\n9,1\n", 6, source="decisions.csv")
    with pytest.raises(ModelError, match="'accept'.*row 2"):
        parse_decisions("index,accept\n1,maybe\n", 6)
    with pytest.raises(ModelError, match="exactly one"):
        parse_decisions('{"keep": [1]}', 6)


def test_acceptance_rules():
    """split: the cut between two populations (here 0.10..0.19 and 0.40..0.58, unequal sizes);
    top:F the best fraction; min:C a fixed correlation; anything else is refused."""
    rng = np.random.default_rng(3)
    low, high = rng.uniform(0.10, 0.19, 14), rng.uniform(0.40, 0.58, 6)
    values = rng.permutation(np.concatenate([low, high]))
    threshold = split_threshold(values)
    assert low.max() < threshold < high.min()
    assert acceptance_threshold(values, "split") == threshold
    assert np.sum(values >= acceptance_threshold(values, "top:0.25")) == 5
    assert np.sum(values >= acceptance_threshold(values, "top:1")) == 20
    assert acceptance_threshold(values, "min:0.3") == 0.3
    for bad in ("top:0", "top:1.5", "min:2", "split:3", "best", "top:x"):
        with pytest.raises(ModelError, match="'keep'"):
            acceptance_threshold(values, bad)
    with pytest.raises(ModelError, match="at least 2"):
        split_threshold([0.3])


def test_automatic_decisions_read_back():
    """decisions.csv from automatic curation: rows by agreement, accept as decided, read back."""
    particles = Particles.create(np.arange(12.0).reshape(4, 3), scores=[0.5, 0.9, 0.2, 0.7])
    agreement = np.array([0.4, 0.1, 0.5, 0.05])
    text = decisions_csv(particles, rank_by_agreement(agreement), accepted=agreement >= 0.3, agreement=agreement)
    assert text.splitlines()[0] == "index,score,agreement,accept"
    assert text.splitlines()[1] == "2,0.2,0.5,1"
    assert np.array_equal(parse_decisions(text, 4), [True, False, True, False])


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_picks_inverts_every_output_format(tmp_path, fmt):
    rng = np.random.default_rng(2)
    particles = Particles.create(rng.uniform(0, 500, (5, 3)), random_rotations(5, rng), rng.uniform(0, 1, 5), "tomo1")
    url = str(tmp_path / f"picks.{ {'copick': 'json'}.get(fmt, fmt)}")
    write_picks(particles, url, fmt, pixel_size=10.0, shape_zyx=(60, 64, 64))
    back = read_picks(url, pixel_size=10.0, shape_zyx=(60, 64, 64))
    assert np.allclose(back.positions, particles.positions, atol=1e-6)
    assert np.allclose(back.rotations, particles.rotations, atol=1e-6)
    assert np.allclose(back.scores, particles.scores)
    if fmt in ("ndjson", "star"):
        with pytest.raises(ModelError, match="voxel size"):
            read_picks(url)


@pytest.mark.slow
def test_gallery_pages_and_stack_export(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.normal(size=(23, 16, 16)).astype(np.float32)
    particles = Particles.create(rng.uniform(0, 500, (23, 3)), scores=rng.uniform(0, 1, 23), tomogram="TS_01")
    pages = write_gallery(images, np.arange(23), particles.scores, str(tmp_path / "g"), columns=5, rows=2)
    assert len(pages) == 3 and all((tmp_path / "g" / f"gallery_00{k}.png").read_bytes()[:4] == b"\x89PNG" for k in (1, 2, 3))
    stack_url, star_url = export_stack(images, particles, str(tmp_path / "x"), pixel_size_a=10.0)
    with mrcfile.open(stack_url) as mrc:
        assert mrc.data.shape == (23, 16, 16) and np.allclose(mrc.data, images) and np.isclose(mrc.voxel_size.x, 10.0)
    star = starfile.read(star_url, always_dict=True)
    table = star["particles"]
    assert list(table["rlnImageName"][:2]) == ["000001@particles.mrcs", "000002@particles.mrcs"]
    assert np.allclose(table["rlnCoordinateX"], particles.positions[:, 0] / 10.0)
    assert int(star["optics"]["rlnImageDimensionality"][0]) == 2 and int(star["optics"]["rlnImageSize"][0]) == 16
    with pytest.raises(Exception, match="exists"):
        export_stack(images, particles, str(tmp_path / "x"), pixel_size_a=10.0)
    with pytest.raises(StoreError):
        read_picks(str(tmp_path / "missing.csv"))
