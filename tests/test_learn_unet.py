"""The shared 3D U-Net (cryocloud.learn.unet): both styles build from one module, and model folders
written before the picker's and Noise2Noise's U-Nets were merged still load and predict the same.

tests/data/legacy_models holds folders written by commit 8624fbb (the last with two U-Net modules):
`n2n/` by `noise2noise.save_model` (channels 2, levels 2; old parameter names `up.<i>`, `out`),
`picker/` by `model_io.save_picker` (3 classes, base_channels 2, depth 2, non-trivial batch-norm
statistics), with `input.npy` (1, 1, 16, 16, 16) and each network's eval-mode output on it then.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from cryocloud.denoise.noise2noise import N2NConfig, build_network, current_weight_names, load_model, save_model
from cryocloud.learn.model_io import load_picker
from cryocloud.learn.unet import UNetConfig, build_unet, build_unet3d

torch.set_num_threads(1)
LEGACY = Path(__file__).resolve().parent / "data" / "legacy_models"


def _run(net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def test_legacy_noise2noise_folder_loads_and_predicts_as_before(tmp_path):
    x = np.load(LEGACY / "input.npy")
    model = load_model(str(LEGACY / "n2n"))
    assert "head.weight" in model.weights and "merge.0.0.weight" in model.weights and "out.weight" not in model.weights
    expected = np.load(LEGACY / "n2n_output.npy")
    np.testing.assert_allclose(_run(model.network(), x), expected, rtol=1e-5, atol=1e-6)
    save_model(model, str(tmp_path / "again"))  # re-saved with current names, loads unchanged
    np.testing.assert_array_equal(_run(load_model(str(tmp_path / "again")).network(), x), _run(model.network(), x))


def test_legacy_picker_folder_loads_and_predicts_as_before():
    x = np.load(LEGACY / "input.npy")
    picker = load_picker(str(LEGACY / "picker"))
    assert picker.config.unet == UNetConfig(n_classes=3, base_channels=2, depth=2)
    np.testing.assert_allclose(_run(picker.model, x), np.load(LEGACY / "picker_output.npy"), rtol=1e-5, atol=1e-6)


def test_current_weight_names_renames_only_legacy_layouts():
    legacy = {"down.0.0.weight": 1, "bottom.2.bias": 2, "up.1.0.weight": 3, "out.bias": 4}
    assert current_weight_names(legacy) == {"down.0.0.weight": 1, "bottom.2.bias": 2, "merge.1.0.weight": 3, "head.bias": 4}
    current = build_network(N2NConfig(channels=2, levels=1, patch=8)).state_dict()
    assert current_weight_names(current).keys() == current.keys()


def test_the_two_styles():
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8, 8)).astype(np.float32)
    picker = build_unet(UNetConfig(n_classes=4, base_channels=2, depth=2)).eval()
    denoiser = build_network(N2NConfig(channels=3, levels=2, patch=8)).eval()
    assert _run(picker, x).shape == (2, 4, 8, 8, 8) and _run(denoiser, x).shape == (2, 1, 8, 8, 8)
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in picker.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in denoiser.modules())
    assert denoiser.down[0][0].bias is not None and picker.down[0][0].bias is None
    picker.train(), denoiser.train()  # batch statistics: only the normalised network mixes the batch
    np.testing.assert_allclose(_run(denoiser, x[:1]), _run(denoiser, x)[:1], rtol=1e-5, atol=1e-6)
    assert np.abs(_run(picker, x[:1]) - _run(picker, x)[:1]).max() > 1e-3
    with pytest.raises(ValueError, match="levels"):
        build_unet3d(out_channels=1, channels=2, levels=0, norm="none", activation="relu", upsample="trilinear")
