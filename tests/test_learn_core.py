"""Learned picking building blocks: targets, the U-Net's receptive field, seamless tiled
prediction, connected-component picks, the model folder."""

import dask.array as da
import numpy as np
import pytest
import torch
import xarray as xr

from cryocloud.errors import ModelError, StoreError
from cryocloud.learn.model_io import Picker, PickerConfig, load_picker, save_picker
from cryocloud.learn.picks import picks_from_probability
from cryocloud.learn.predict import class_map, predict
from cryocloud.learn.targets import MEMBRANE, PARTICLE, render_targets
from cryocloud.learn.unet import UNetConfig, build_unet
from cryocloud.model import Particles, Tomogram

torch.set_num_threads(1)


def _picker(n_classes: int = 2, seed: int = 0, px: float = 10.0) -> Picker:
    torch.manual_seed(seed)
    unet = UNetConfig(n_classes=n_classes, base_channels=4, depth=2)
    model = build_unet(unet).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, as after training
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    config = PickerConfig(unet=unet, classes=["background", "particle", "membrane"][:n_classes], radius_a=50.0, pixel_size_a=px, patch=32, steps=0)
    return Picker(model, config, np.zeros(0))


def test_targets_balls_and_membranes():
    px, radius = 10.0, 40.0
    positions = np.array([[100.0, 120.0, 150.0], [300.0, 310.0, 150.0]])  # x, y, z (A)
    membranes = np.zeros((32, 40, 40), bool)
    membranes[:, :, 10] = True  # a plane through the first particle at x = 10 voxels
    labels = render_targets(np.array([0, 0, 0]), (32, 40, 40), positions, px, radius, membranes)
    ball = 4 / 3 * np.pi * (radius / px) ** 3
    counts = np.bincount(labels.ravel(), minlength=3)
    assert abs(counts[PARTICLE] - 2 * ball) < 0.15 * 2 * ball
    assert labels[15, 12, 10] == PARTICLE and labels[15, 31, 30] == PARTICLE  # centres (z, y, x): particles win
    assert labels[0, 0, 10] == MEMBRANE and labels[0, 0, 11] == 0
    shifted = render_targets(np.array([10, 8, 6]), (8, 8, 8), positions, px, radius)  # a box off the origin
    assert shifted[5, 4, 4] == PARTICLE and shifted[0, 0, 7] == 0


@pytest.mark.slow
def test_receptive_radius_bounds_the_influence_of_a_voxel():
    picker = _picker()
    r = picker.config.unet.receptive_radius
    x = torch.randn(1, 1, 96, 96, 96)
    y = x.clone()
    y[0, 0, 48, 48, 48] += 10.0
    with torch.no_grad():
        change = (picker.model(y) - picker.model(x)).abs()[0].amax(dim=0)
    changed = np.argwhere(change.numpy() > 1e-6)
    assert len(changed) > 1
    assert np.abs(changed - 48).max() <= r
    assert np.abs(changed - 48).max() > 8  # reaches through the pooled levels, beyond the full-resolution convolutions


@pytest.mark.slow
def test_tiled_prediction_has_no_seams():
    """Tiles of 32 voxels with the default overlap (28) reproduce one whole-volume tile; without overlap they do not."""
    picker = _picker()
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(40, 70, 67)).astype(np.float32)  # not multiples of the tile or of 4
    tomo = Tomogram.from_array(da.from_array(volume, chunks=20), pixel_size=10.0)
    whole = predict(tomo, picker, tile=128, device="cpu").values
    tiled = predict(tomo, picker, tile=32, device="cpu")
    assert tiled.dims == ("class", "z", "y", "x") and tiled.shape == (2,) + volume.shape
    assert tiled.data.numblocks[1:] == (1, 2, 2)
    assert np.allclose(tiled.sum("class").values, 1.0, atol=1e-5)
    assert np.max(np.abs(tiled.values - whole)) < 1e-5
    seams = predict(tomo, picker, tile=32, overlap=0, device="cpu").values
    assert np.max(np.abs(seams - whole)) > 1e-2
    assert class_map(tiled, "particle").shape == volume.shape
    with pytest.raises(ModelError, match="pixel_size"):
        predict(Tomogram.from_array(volume, pixel_size=20.0), picker)
    with pytest.raises(ModelError, match="tile"):
        predict(tomo, picker, tile=16)
    with pytest.raises(ModelError, match="class"):
        class_map(tiled, "ribosome")


def _prob_map(centres_zyx, shape, radius, chunks):
    z, y, x = np.indices(shape)
    prob = np.zeros(shape, np.float32)
    for c in centres_zyx:
        d2 = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2
        prob = np.maximum(prob, np.clip(1.0 - d2 / (radius**2 * 1.5), 0, 1))
    coords = {d: np.arange(n) * 10.0 for d, n in zip("zyx", shape)}
    return xr.DataArray(da.from_array(prob, chunks=chunks), dims=("z", "y", "x"), coords=coords, attrs={"pixel_size": 10.0})


@pytest.mark.slow
def test_connected_components_across_chunks():
    """Blobs straddling chunk borders are found once, at their centres, with mean probability scores;
    blobs far smaller than a particle are dropped."""
    centres = np.array([[16.0, 16.0, 16.0], [10.0, 30.0, 40.0], [24.5, 47.0, 15.0]])  # z, y, x voxels
    prob = _prob_map(centres, (40, 64, 56), radius=5.0, chunks=16)
    picks = picks_from_probability(prob, radius_a=50.0, threshold=0.3, tomogram="t1")
    assert len(picks) == 3
    found = picks.positions[:, ::-1] / 10.0
    for c in centres:
        assert np.min(np.linalg.norm(found - c, axis=1)) < 0.3
    assert np.all((picks.scores > 0.3) & (picks.scores < 1.0)) and np.all(np.diff(picks.scores) <= 0)
    assert set(picks.tomogram) == {"t1"}
    tiny = _prob_map(centres[:1], (40, 64, 56), radius=1.5, chunks=16)
    assert len(picks_from_probability(tiny, radius_a=50.0, threshold=0.3)) == 0
    with pytest.raises(ModelError, match="threshold"):
        picks_from_probability(prob, radius_a=50.0, threshold=1.5)


def test_model_folder_round_trip(tmp_path):
    picker = _picker(n_classes=3)
    picker.losses = np.array([1.0, 0.5, 0.25])
    save_picker(picker, str(tmp_path / "m"))
    loaded = load_picker(str(tmp_path / "m"))
    assert loaded.config == picker.config and np.allclose(loaded.losses, picker.losses)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), picker.model(x))
    with pytest.raises(Exception, match="exists"):
        save_picker(picker, str(tmp_path / "m"))
    with pytest.raises(StoreError, match="not a trained picker"):
        load_picker(str(tmp_path / "nothing"))


def test_missing_torch_names_the_extra(monkeypatch):
    import sys

    from cryocloud.learn.torch_import import LearnExtraMissing, import_torch

    monkeypatch.setitem(sys.modules, "torch", None)  # what an environment without torch sees
    with pytest.raises(LearnExtraMissing, match=r'pip install "cryocloud\[learn\]"'):
        import_torch()


def test_sample_patches_membranes_from_segmentation_labels():
    """A segmentation's labels (one per membrane, here 1 and 3): membrane_label=None takes every
    non-zero label as membrane; membrane_label=3 only that membrane."""
    from cryocloud.learn.train import TrainSettings, sample_patches

    px = 10.0
    rng = np.random.default_rng(0)
    tomo = Tomogram.from_array(rng.normal(size=(16, 16, 16)).astype(np.float32), pixel_size=px)
    labels = np.zeros((16, 16, 16), np.uint32)
    labels[:, :, 2], labels[:, :, 12] = 1, 3
    segmentation = Tomogram.from_array(labels, pixel_size=px)
    settings = TrainSettings(patch=16, patches_per_tomogram=1, particle_fraction=0.0)
    picks = Particles.create(np.zeros((0, 3)))
    _, every = sample_patches([tomo], [picks], 20.0, settings, [segmentation], membrane_label=None)
    _, only_3 = sample_patches([tomo], [picks], 20.0, settings, [segmentation], membrane_label=3)
    assert np.array_equal(every[0] == MEMBRANE, labels > 0)
    assert np.array_equal(only_3[0] == MEMBRANE, labels == 3)
