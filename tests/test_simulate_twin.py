"""The simulated specimen and the lazy pipeline: placement, labels, determinism, chunking, outputs, CLI."""

import json

import dask
import numpy as np
import pytest

from cryocloud.cli import main
from cryocloud.errors import ModelError, OutputExistsError
from cryocloud.simulate import FiducialConfig, MembraneConfig, SimulationConfig, simulate, write_simulation
from cryocloud.simulate.phantom import LABEL_FIDUCIAL, LABEL_MEMBRANE, LABEL_PARTICLE, _model, build_specimen
from cryocloud.store import read_tilt_series, read_tomogram
from cryocloud.store.particles_csv import read_particles_csv

pytestmark = pytest.mark.slow  # simulates and reconstructs the digital twin

SMALL = dict(shape_zyx=(48, 96, 96), pixel_size_a=10.0, n_particles=4, tilt_step=15.0)


def test_particles_do_not_overlap_and_sit_in_the_ice():
    cfg = SimulationConfig(shape_zyx=(40, 160, 160), pixel_size_a=10.0, n_particles=9, ice_thickness_a=350.0, seed=3,
                           membranes=MembraneConfig(vesicles=1, vesicle_radius_a=(200, 250)), fiducials=FiducialConfig(count=3))
    spec = build_specimen(cfg)
    r = _model(None).radius_a
    pos = spec.particles.positions
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(len(pos)) * 1e9
    assert d.min() >= 2 * r
    lo, hi = spec.slab_a
    assert hi - lo == pytest.approx(350.0)
    assert np.all(pos[:, 2] >= lo + r - 1e-6) or hi - lo < 2 * r
    gold = spec.fiducial_centres
    assert np.allclose(np.minimum(np.abs(gold[:, 2] - lo), np.abs(gold[:, 2] - hi)), 50.0)  # on the surfaces
    for c, rv in zip(spec.vesicle_centres, spec.vesicle_radii):  # no particle crosses the membrane
        assert np.all(np.abs(np.linalg.norm(pos - c, axis=1) - rv) >= r + 25.0)
    assert np.linalg.det(spec.particles.rotations) == pytest.approx(np.ones(len(pos)))


def test_labels_mark_objects_and_volume_holds_ice():
    cfg = SimulationConfig(**{**SMALL, "n_particles": 2}, ice_thickness_a=300.0,
                           membranes=MembraneConfig(planar=1), fiducials=FiducialConfig(count=2))
    res = simulate(cfg)
    labels = res.truth.labels.data.values
    vol = res.volume.data.values
    spec = res.truth.specimen
    for c in spec.fiducial_centres:
        i = np.round(c[::-1] / cfg.pixel_size_a).astype(int)
        assert labels[tuple(i)] == LABEL_FIDUCIAL and vol[tuple(i)] > 20.0
    assert (labels == LABEL_MEMBRANE).sum() > 0 and (labels == LABEL_PARTICLE).sum() > 0
    z = np.arange(cfg.shape_zyx[0]) * cfg.pixel_size_a
    outside = (z < spec.slab_a[0] - 10) | (z > spec.slab_a[1] + 10)
    assert np.all(vol[outside] == 0) and np.all(labels[outside] == 0)  # vacuum above and below the ice
    inside = (z > spec.slab_a[0] + 10) & (z < spec.slab_a[1] - 10)
    ice_only = (labels == 0)[inside]
    assert np.median(vol[inside][ice_only]) == pytest.approx(4.47, abs=0.05)


def test_same_seed_same_data_whatever_the_chunking():
    cfg = SimulationConfig(**SMALL, seed=7, frames_per_tilt=2)
    a = simulate(cfg)
    b = simulate(cfg.model_copy(update={"chunk_rows": 17}))
    c = simulate(cfg.model_copy(update={"seed": 8}))
    ta, tb, tc = dask.compute(a.tilt_series.data.data, b.tilt_series.data.data, c.tilt_series.data.data)
    assert np.array_equal(ta, tb)
    assert not np.array_equal(ta, tc)
    assert np.array_equal(a.frames.data.values, b.frames.data.values)
    assert np.array_equal(a.particles.positions, b.particles.positions)


def test_graph_is_chunked_without_whole_volume_arrays():
    cfg = SimulationConfig(shape_zyx=(32, 256, 96), pixel_size_a=10.0, n_particles=2, tilt_step=20, chunk_rows=32)
    res = simulate(cfg)
    assert res.volume.data.data.numblocks == (1, 8, 1)
    assert res.tilt_series.data.data.numblocks == (res.tilt_series.n_tilts, 1, 1)
    volume_size = 32 * 256 * 96
    for collection in (res.volume.data.data, res.tilt_series.data.data):
        for value in dict(collection.__dask_graph__()).values():
            assert not (isinstance(value, np.ndarray) and value.size >= volume_size // 4)


def test_too_many_particles_is_a_clear_error():
    with pytest.raises(ModelError, match="n_particles"):
        build_specimen(SimulationConfig(shape_zyx=(32, 32, 32), pixel_size_a=10.0, n_particles=5))


def test_write_simulation_round_trip(tmp_path):
    cfg = SimulationConfig(**SMALL, frames_per_tilt=2, seed=1)
    res = simulate(cfg)
    out = tmp_path / "sim"
    write_simulation(res, str(out))
    ts = read_tilt_series(str(out / "tilt_series.zarr"))
    assert np.array_equal(ts.data.values, res.tilt_series.data.values)
    assert np.allclose(ts.per_tilt("pre_exposure"), res.scheme.pre_exposure)
    assert np.array_equal(ts.per_tilt("acquisition_order"), res.scheme.acquisition_order)
    vol = read_tomogram(str(out / "ground_truth" / "volume.zarr"))
    assert np.allclose(vol.data.values, res.volume.data.values)
    parts = read_particles_csv(str(out / "ground_truth" / "particles.csv"))
    assert np.allclose(parts.positions, res.particles.positions) and np.allclose(parts.rotations, res.particles.rotations)
    truth = json.loads((out / "ground_truth" / "truth.json").read_text())
    assert np.allclose(truth["defocus_u_a"], res.truth.defocus_u_a)
    assert np.array(truth["drift_xy_a"]).shape == (ts.n_tilts, 2, 2)
    assert truth["config"]["seed"] == 1
    import zarr

    frames = zarr.open_group(str(out / "frames.zarr"), mode="r")
    assert frames["0"].shape == (ts.n_tilts, 2, 96, 96)
    assert np.array_equal(frames["0"][:], res.frames.data.values)
    with pytest.raises(OutputExistsError):
        write_simulation(res, str(out))


def test_write_simulation_to_s3(s3_bucket):
    res = simulate(SimulationConfig(**{**SMALL, "n_particles": 1, "tilt_step": 30.0}, tilt_min=-30, tilt_max=30))
    write_simulation(res, f"{s3_bucket.url}/sim", storage_options=s3_bucket.storage_options)
    ts = read_tilt_series(f"{s3_bucket.url}/sim/tilt_series.zarr", storage_options=s3_bucket.storage_options)
    assert np.array_equal(ts.data.values, res.tilt_series.data.values)
    assert s3_bucket.fs().exists(f"{s3_bucket.url}/sim/ground_truth/truth.json")


def test_cli_simulate_toy(tmp_path):
    out = tmp_path / "toy"
    assert main(["simulate", str(out), "--preset", "toy", "--seed", "2", "--scheme", "bidirectional", "--frames", "2"]) == 0
    ts = read_tilt_series(str(out / "tilt_series.zarr"))
    assert ts.n_tilts == 21 and ts.data.shape[1:] == (64, 64)
    assert ts.tilt_angles[np.argmin(ts.per_tilt("acquisition_order"))] == 0.0
    assert (out / "frames.zarr").exists() and (out / "ground_truth" / "truth.json").exists()
    assert main(["simulate", str(out), "--preset", "toy"]) == 2  # exists: refuses without --overwrite
    assert main(["simulate", str(tmp_path / "x"), "--preset", "huge"]) == 2
