"""Gold fiducials and picking: beads are found in the tomogram, and a bead's high score neither
becomes a pick nor suppresses a particle next to it."""

import dask.array as da
import numpy as np
import xarray as xr

from cryocloud.pick.peaks import extract_peaks
from cryocloud.segment.fiducials import fiducial_voxels
import pytest

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end

BEADS = np.array([[12, 20, 20], [30, 50, 44]])  # (z, y, x) voxels
BEAD_RADIUS = 3.0


def _tomogram_with_beads(seed: int = 0) -> np.ndarray:
    """Noise of s.d. 1 with protein-like blobs of +4 and two gold beads of -60 (radius 3 voxels)."""
    rng = np.random.default_rng(seed)
    volume = rng.normal(size=(40, 64, 64)).astype(np.float32)
    z, y, x = np.indices(volume.shape)
    for centre, value, radius in ((BEADS[0], -60.0, BEAD_RADIUS), (BEADS[1], -60.0, BEAD_RADIUS), ((20, 40, 12), 4.0, 5.0)):
        volume[(z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2] += value
    return volume


def test_fiducial_voxels_are_the_beads_and_nothing_else():
    volume = da.from_array(_tomogram_with_beads(), chunks=(20, 32, 32))  # beads across block borders too
    found = fiducial_voxels(volume, sigma=20.0)
    distances = np.linalg.norm(found[:, None, :] - BEADS[None], axis=-1)
    assert len(found) > 2 * 100  # most of both beads' ~120 voxels
    assert distances.min(axis=1).max() <= BEAD_RADIUS
    assert set(distances.argmin(axis=1).tolist()) == {0, 1}


def test_a_bead_neither_becomes_a_pick_nor_suppresses_the_particle_next_to_it():
    shape = (40, 64, 64)
    scores = np.zeros(shape, np.float32)
    particle = (12, 20, 29)  # 9 voxels from the first bead: within the 12-voxel minimum distance
    scores[tuple(BEADS[0])] = 1.0
    scores[particle] = 0.6
    coords = {d: np.arange(n, dtype=np.float64) for d, n in zip("zyx", shape)}
    maps = [xr.DataArray(a, dims=("z", "y", "x"), coords=coords, attrs={"pixel_size": 10.0}) for a in (scores, np.zeros(shape, np.int32))]
    rotations = np.eye(3)[None]
    plain, _ = extract_peaks(*maps, rotations, radius_a=120.0, n_false=None, number=5)
    assert np.array_equal(plain.positions, [BEADS[0][::-1] * 10.0])  # the bead's pick hides the particle
    gold = fiducial_voxels(da.from_array(_tomogram_with_beads()), sigma=20.0)
    avoided, _ = extract_peaks(*maps, rotations, radius_a=120.0, n_false=None, number=5, avoid=[(gold, 40.0)])
    assert np.array_equal(avoided.positions, [np.array(particle[::-1]) * 10.0])
    # each avoided set keeps its own radius: a membrane voxel (half a voxel) under the particle drops
    # only that pick, one voxel beside it none
    for membrane, expected in (([particle], []), ([(12, 20, 30)], [np.array(particle[::-1]) * 10.0])):
        both, _ = extract_peaks(*maps, rotations, radius_a=120.0, n_false=None, number=5, avoid=[(gold, 40.0), (np.array(membrane), 5.0)])
        assert np.array_equal(both.positions.reshape(-1, 3), np.reshape(expected, (-1, 3)))


def test_extract_peaks_cli_avoids_the_fiducials_of_the_searched_tomogram(tmp_path, capsys):
    import pandas as pd

    from cryocloud.cli import main
    from cryocloud.model import Tomogram
    from cryocloud.store import write_labels, write_tomogram
    from test_pick_match import REAL, _synthetic

    tomo, _, positions, _ = _synthetic()
    data = np.asarray(tomo.data.values).copy()
    bead = np.array([20, 36, 36])  # (z, y, x) between the four particles
    z, y, x = np.indices(data.shape)
    data[(z - bead[0]) ** 2 + (y - bead[1]) ** 2 + (x - bead[2]) ** 2 <= 4] -= 60 * data.std()
    write_tomogram(Tomogram.from_array(data, pixel_size=21.0), str(tmp_path / "tomo.zarr"))
    assert main(["match", str(tmp_path / "tomo.zarr"), str(REAL / "pytom_templates" / "human_ribo_21A.em"), str(tmp_path / "tm"),
                 "--template-voxel-size", "21", "--angular-increment", "30", "--subvolume", "64", "--ctf", "none"]) == 0
    hidden = positions[0]  # a mask (as a membrane segmentation) over one particle's centre
    mask = np.zeros(data.shape, np.uint8)
    mask[hidden[0] - 1 : hidden[0] + 2, hidden[1] - 1 : hidden[1] + 2, hidden[2] - 1 : hidden[2] + 2] = 1
    write_labels(mask, str(tmp_path / "mask.zarr"), pixel_size=21.0)
    picked = {}
    for name, extra in (("plain", []), ("avoided", ["--avoid-fiducials", str(tmp_path / "tomo.zarr")]),
                        ("masked", ["--avoid-fiducials", str(tmp_path / "tomo.zarr"), "--avoid-mask", str(tmp_path / "mask.zarr")])):
        assert main(["extract-peaks", str(tmp_path / "tm"), str(tmp_path / f"{name}.csv"), "--no-figures", *extra]) == 0
        picked[name] = pd.read_csv(tmp_path / f"{name}.csv")[["z", "y", "x"]].to_numpy() / 21.0
    near_bead = {k: int(np.sum(np.linalg.norm(v - bead, axis=1) < 7)) for k, v in picked.items()}  # within a particle radius
    assert near_bead["plain"] >= 1 and near_bead["avoided"] == 0  # the bead scores above the cut-off
    for p in positions:
        assert np.min(np.linalg.norm(picked["avoided"] - p, axis=1)) <= 1.0
    assert np.min(np.linalg.norm(picked["masked"] - hidden, axis=1)) > 1.5  # gone; the other three kept
    assert all(np.min(np.linalg.norm(picked["masked"] - p, axis=1)) <= 1.0 for p in positions[1:])
    small = Tomogram.from_array(data[:, :32], pixel_size=21.0)
    write_tomogram(small, str(tmp_path / "small.zarr"))
    assert main(["extract-peaks", str(tmp_path / "tm"), str(tmp_path / "bad.csv"), "--avoid-fiducials", str(tmp_path / "small.zarr")]) == 2
    assert "small.zarr" in capsys.readouterr().err and not (tmp_path / "bad.csv").exists()
    assert main(["extract-peaks", str(tmp_path / "tm"), str(tmp_path / "bad.csv"), "--avoid-mask", str(tmp_path / "small.zarr")]) == 2
    err = capsys.readouterr().err
    assert "avoid_mask" in err and "small.zarr" in err and not (tmp_path / "bad.csv").exists()
