"""The robust false-alarm cut-off (cutoff method "robust-sigma", cryocloud.pick.peaks.MapNoise): the
best-score map's median and lower-half sigma, each voxel one trial. On the real 13- and
14-protofilament microtubules (tests/data/real/cylindra_mt) the search sigma's cut-off lies at the
best score (one pick or none); the robust one picks along the tube wall. On noise built with
numpy / scipy (no cryocloud.simulate) it keeps the false picks at n_false or below; on a sparse
volume of a real map pasted into noise its F1 stays that of the search sigma's cut-off."""

import json

import mrcfile
import numpy as np
import pytest
import tifffile
import xarray as xr
from scipy import ndimage

from cryocloud.errors import ModelError
from cryocloud.geometry import random_rotations
from cryocloud.model import Tomogram
from cryocloud.pick.evaluate import f_beta
from cryocloud.pick.job import MatchJob, PeaksJob, ScoreMaps
from cryocloud.pick.null import null_picks
from cryocloud.pick.peaks import map_noise
from cryocloud.pick.template import read_map
from test_pick_match import REAL
from test_pick_score import rotate_real_space

MT = REAL / "cylindra_mt"
MT_VOXEL_A = 10.52  # README: 1.052 nm voxels
TUBULIN = str(MT / "beta-tubulin.mrc")
#: a 20 deg search (1,908 orientations) of a microtubule-sized crop: ~3 min on 2 idle cores, 6-10 min when shared
CROP_SEARCH_TIMEOUT_S = 1200


def _score_map(values: np.ndarray, pixel_size: float = 1.0) -> xr.DataArray:
    coords = {d: np.arange(n, dtype=np.float64) * pixel_size for d, n in zip("zyx", values.shape)}
    return xr.DataArray(values.astype(np.float32), dims=("z", "y", "x"), coords=coords, attrs={"pixel_size": pixel_size})


def _best_of_orientations(shape, seed: int, orientations: int = 4) -> np.ndarray:
    """A noise best-score map: the maximum over a few smooth Gaussian score fields of s.d. 1."""
    rng = np.random.default_rng(seed)
    fields = [ndimage.gaussian_filter(rng.normal(size=shape), 1.0, mode="wrap") for _ in range(orientations)]
    return np.max([f / f.std() for f in fields], axis=0)


def test_map_noise_is_the_backgrounds_despite_a_dense_tenth():
    """A tenth of the map scores high (a dense specimen: +2.5 and twice the spread). Its voxels lie in
    the upper half, so the median moves only to the background's 0.5 / 0.9 quantile (+0.14 sigma)
    and the lower-half sigma by < 10 %, where the map's s.d. grows by > 25 %."""
    background = _best_of_orientations((48, 64, 64), seed=1)
    values = background.copy()
    dense = np.s_[:, :, : 64 // 10]
    values[dense] = 2.5 + 2.0 * values[dense]
    plain = map_noise(_score_map(background))
    noise = map_noise(_score_map(values))
    assert plain.median == pytest.approx(np.median(background), abs=0.01)
    assert plain.sigma == pytest.approx(np.median(background) - np.quantile(background, 0.1587), abs=0.01)
    assert 0 < noise.median - plain.median < 0.2 * plain.sigma
    assert noise.sigma == pytest.approx(plain.sigma, rel=0.1)
    assert values.std() > 1.25 * background.std()
    assert noise.n_voxels == values.size
    assert noise.threshold(1.0) < noise.threshold(0.1)


def test_map_noise_leaves_out_voxels_a_mask_did_not_search():
    values = _best_of_orientations((32, 32, 32), seed=2)
    masked = values.copy()
    masked[:, :, :12] = 0.0  # not searched: the map holds 0 there
    searched = float(np.count_nonzero(masked))
    noise = map_noise(_score_map(masked), searched)
    inside = values[:, :, 12:]
    assert noise.n_voxels == searched
    assert noise.median == pytest.approx(np.median(inside), abs=0.01)
    assert map_noise(_score_map(masked)).median < noise.median - 0.1  # counted as searched, the zeros pull it down


def _maps(values: np.ndarray, rotations: int = 10, score_std: float = 0.5) -> ScoreMaps:
    scores = _score_map(values)
    orientation = scores.copy(data=np.zeros(values.shape, np.int32))
    return ScoreMaps(scores, orientation, np.repeat(np.eye(3)[None], rotations, axis=0), score_std, float(values.size * rotations), 2.0)


def test_peaks_job_says_which_estimate_set_the_cut_off():
    maps = _maps(_best_of_orientations((32, 32, 32), seed=3))
    robust = PeaksJob(fiducial_sigma=None).cutoff(maps)
    assert robust.method == "robust-sigma" and robust.value == robust.figures["robust_sigma"]["threshold"]
    assert robust.figures["robust_sigma"]["n_voxels"] == 32**3
    search = PeaksJob(cutoff_method="search-sigma", local_sigma="global").cutoff(maps)
    assert search.method == "search-sigma" and search.value == search.figures["search_sigma"]["threshold"] != robust.value
    json.dumps(search.as_dict())  # what extract-peaks and the pipeline write
    _, threshold = PeaksJob(fiducial_sigma=None).run(maps, cutoff=robust)
    assert threshold == robust.value
    above = PeaksJob().cutoff(maps, null_threshold=robust.value + 1.0)
    assert above.method == "null-search" and above.value == robust.value + 1.0
    below = PeaksJob().cutoff(maps, null_threshold=robust.value - 1.0)
    assert below.method == "robust-sigma" and below.value == robust.value
    assert PeaksJob(n_false=None, number=3).cutoff(maps).method == "none"
    with pytest.raises(ModelError, match="null_threshold"):
        PeaksJob().run(maps, cutoff=robust, null_threshold=1.0)


def _read_microtubule(name: str) -> np.ndarray:
    return tifffile.imread(MT / f"{name}.tif").astype(np.float32)


def _tube(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """The tube measured from its density: axis (a point and a unit direction, z, y, x voxels) of the
    largest bright component (top decile after smoothing), and the wall's radius band: the radii
    where the radial mean density is above half its height over the background."""
    smooth = ndimage.gaussian_filter(volume.astype(np.float64), 2.0)
    labels, n = ndimage.label(smooth > np.percentile(smooth, 90))
    largest = 1 + np.argmax(ndimage.sum(np.ones_like(smooth), labels, range(1, n + 1)))
    zyx = np.argwhere(labels == largest).astype(np.float64)
    centre = zyx.mean(axis=0)
    direction = np.linalg.svd(zyx - centre, full_matrices=False)[2][0]
    radius = _radius(np.argwhere(np.ones(volume.shape, bool)).astype(np.float64), centre, direction)
    profile = ndimage.mean(volume.ravel(), np.round(radius).astype(int), np.arange(40))
    level = np.median(profile[20:])  # outside the tube
    wall = np.flatnonzero(profile - level > 0.5 * (profile.max() - level))
    return centre, direction, (float(wall.min()), float(wall.max()))


def _radius(zyx: np.ndarray, centre: np.ndarray, direction: np.ndarray) -> np.ndarray:
    d = zyx - centre
    return np.linalg.norm(d - np.outer(d @ direction, direction), axis=1)


def _on_wall(picks, tube) -> np.ndarray:
    centre, direction, (inner, outer) = tube
    radius = _radius(picks.positions[:, ::-1] / MT_VOXEL_A, centre, direction)
    return (radius >= inner - 1.0) & (radius <= outer + 1.0)  # a voxel of slack either side


@pytest.mark.slow
@pytest.mark.timeout(CROP_SEARCH_TIMEOUT_S)
def test_real_13pf_microtubule_is_picked_on_its_wall_by_match_and_extract_peaks(tmp_path, capsys):
    """`cryocloud match` at 20 deg then `cryocloud extract-peaks` at the defaults. The wall (radii 9-13
    voxels, ~11 nm: a 13-protofilament tube) holds ~14,000 voxels^2 of surface over the crop's 216
    voxels of tube, room for ~600 picks 5 voxels apart (the particle diameter): the search sigma's
    cut-off leaves one at most, the robust one more than 20, at least 3/4 of them on the wall."""
    from cryocloud.cli import main

    volume = _read_microtubule("13pf_MT")
    with mrcfile.new(tmp_path / "mt.mrc") as f:
        f.set_data(volume)
        f.voxel_size = MT_VOXEL_A
    assert main(["match", str(tmp_path / "mt.mrc"), TUBULIN, str(tmp_path / "match"), "--angular-increment", "20"]) == 0
    assert main(["extract-peaks", str(tmp_path / "match"), str(tmp_path / "picks.csv")]) == 0
    assert "(robust-sigma)" in capsys.readouterr().err.replace("\n", "")  # the console wraps long lines
    record = json.loads((tmp_path / "picks_cutoff.json").read_text())
    from cryocloud.store import read_particles_csv

    picks = read_particles_csv(str(tmp_path / "picks.csv"))
    tube = _tube(volume)
    assert 8 <= tube[2][0] and tube[2][1] <= 14  # the wall's radius band, measured
    on_wall = _on_wall(picks, tube)
    assert record["cutoff_method"] == "robust-sigma" and record["n_particles"] == len(picks) > 20
    assert on_wall.mean() >= 0.75
    assert np.all(picks.scores >= record["cutoff"])
    assert np.sum(picks.scores > record["search_sigma"]["threshold"]) <= 1  # the search sigma's cut-off: one pick at most


@pytest.mark.slow
@pytest.mark.timeout(CROP_SEARCH_TIMEOUT_S)
def test_real_14pf_microtubule_is_picked_on_its_wall():
    volume = _read_microtubule("14pf_MT")
    job = MatchJob(angular_increment_deg=20.0)
    map_volume, px = read_map(TUBULIN)
    template = job.prepare(map_volume, px, MT_VOXEL_A)
    tomogram = Tomogram.from_array(volume, pixel_size=MT_VOXEL_A)
    maps = ScoreMaps.of(job.run(tomogram, template), template)
    robust, search = PeaksJob(fiducial_sigma=None), PeaksJob(fiducial_sigma=None, cutoff_method="search-sigma")
    picks, _ = robust.run(maps)
    before, _ = search.run(maps)
    on_wall = _on_wall(picks, _tube(volume))
    assert len(picks) > 10 * max(len(before), 1) and on_wall.mean() >= 0.75


def _phase_randomised(volume: np.ndarray, seed: int) -> np.ndarray:
    """Noise with the volume's power spectrum: its Fourier amplitudes with the phases of white noise."""
    rng = np.random.default_rng(seed)
    amplitude = np.abs(np.fft.rfftn(volume - volume.mean()))
    phases = np.exp(1j * np.angle(np.fft.rfftn(rng.normal(size=volume.shape))))
    return (np.fft.irfftn(amplitude * phases, s=volume.shape, axes=(0, 1, 2)) + volume.mean()).astype(np.float32)


@pytest.mark.slow
@pytest.mark.timeout(CROP_SEARCH_TIMEOUT_S)
def test_noise_searched_as_the_microtubule_gives_at_most_n_false_false_picks():
    """Noise with the 13pf crop's power spectrum (phase-randomised, numpy), searched as the crop: every
    pick is false. The robust cut-off keeps their count at or below n_false (it counts each voxel as
    a trial; neighbours correlate, so fewer independent ones)."""
    volume = _phase_randomised(_read_microtubule("13pf_MT"), seed=0)
    job = MatchJob(angular_increment_deg=20.0)
    map_volume, px = read_map(TUBULIN)
    template = job.prepare(map_volume, px, MT_VOXEL_A)
    maps = ScoreMaps.of(job.run(Tomogram.from_array(volume, pixel_size=MT_VOXEL_A), template), template)
    found = {n_false: len(PeaksJob(n_false=n_false, fiducial_sigma=None).run(maps)[0]) for n_false in (1.0, 3.0, 10.0)}
    assert found[1.0] <= 1 and found[3.0] <= 3 and found[10.0] <= 10
    picks = null_picks(maps.scores, PeaksJob().min_distance(maps) / MT_VOXEL_A)
    assert len(picks) > 500  # ~one local maximum per particle volume: the cut-off sits in a populated tail


@pytest.mark.slow
def test_sparse_real_map_in_noise_keeps_its_f1():
    """Nine copies of a real ribosome map (PyTom, 21 A) at random orientations on a jittered grid in
    smooth Gaussian noise (scipy):
    the robust cut-off's F1 is that of the search sigma's within 0.1, and at least 0.8."""
    volume, _ = read_map(str(REAL / "pytom_templates" / "human_ribo_21A.em"), voxel_size=21.0)
    job = MatchJob(angular_increment_deg=30.0)
    template = job.prepare(volume, 21.0, 21.0)
    rng = np.random.default_rng(0)
    shape, b, c = (40, 96, 96), template.box, template.box // 2
    data = np.zeros(shape, np.float32)
    grid = np.array([[z, y, x] for z in (shape[0] // 2,) for y in (18, 48, 78) for x in (18, 48, 78)])  # 30 voxels apart: > 4 particle radii
    positions = grid + rng.integers(-2, 3, size=grid.shape)
    for p, r in zip(positions, random_rotations(len(positions), rng)):
        data[p[0] - c : p[0] - c + b, p[1] - c : p[1] - c + b, p[2] - c : p[2] - c + b] += rotate_real_space(template.data, r)
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 1.0)
    tomogram = Tomogram.from_array((data + noise * 4.0 * data.std() / noise.std()).astype(np.float32), pixel_size=21.0)
    maps = ScoreMaps.of(job.run(tomogram, template), template)
    truth = positions[:, ::-1] * 21.0
    f1 = {}
    for method in ("search-sigma", "robust-sigma"):
        picks, _ = PeaksJob(cutoff_method=method, fiducial_sigma=None).run(maps)
        f1[method] = f_beta(picks.positions, truth, template.particle_radius * 21.0, beta=1.0)["f1"]
    assert f1["robust-sigma"] >= max(0.8, f1["search-sigma"] - 0.1)
