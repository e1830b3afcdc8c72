"""Learned even/odd denoising (Noise2Noise, as in cryoCARE) with a small 3D U-Net (torch, optional).

The even-frame and odd-frame reconstructions of one tilt series show the same specimen with
independent noise. A network trained to predict the odd sub-volume from the even one (and the even
from the odd) cannot predict the noise, so it learns the expected signal: a denoiser, without any
clean data (Lehtinen et al. 2018; Buchholz et al. 2019).

Training: `n_patches` random cubic sub-volume pairs of edge `patch` are read from the two halves
(one Dask computation), normalised by the mean and standard deviation of those patches, and split
into training and validation pairs; each step draws a batch, flips each pair along random axes
(z, y, x flips keep the missing-wedge geometry) and picks the direction (even -> odd or odd -> even)
at random; the loss is the mean squared error; the optimiser Adam, its learning rate annealed
to zero along a cosine over the steps (the last weights are the settled ones).

Inference: the input is normalised by its own mean and standard deviation (lazy Dask reductions),
denoised per cubic tile with an overlap (`tiling.map_tiles`, tiles aligned to the network's pooling
grid) and scaled back. With both halves, `denoise_halves` averages the two predictions.

torch is the `denoise` extra: it is imported only when a function here needs it.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import dask.array as da
import numpy as np
import pydantic

from cryocloud.errors import CryocloudError, ModelError, OutputExistsError, StoreError
from cryocloud.model import Tomogram
from cryocloud.progress import compute
from cryocloud.denoise.tiling import map_tiles
from cryocloud.learn.unet import build_unet3d

WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "model.json"


def require_torch() -> Any:
    """The torch module, or a CryocloudError naming the extra that installs it."""
    try:
        import torch
    except ImportError:
        raise CryocloudError('learned denoising needs torch: pip install "cryocloud[denoise]"') from None
    return torch


class N2NConfig(pydantic.BaseModel):
    """Network and training settings. Edges in voxels."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    channels: int = pydantic.Field(8, ge=1, description="feature maps of the first U-Net stage")
    levels: int = pydantic.Field(2, ge=1, le=4, description="2x poolings of the U-Net")
    patch: int = pydantic.Field(32, ge=8, description="edge of the training sub-volumes (voxels)")
    n_patches: int = pydantic.Field(256, ge=2, description="sub-volume pairs sampled for training and validation")
    validation_fraction: float = pydantic.Field(0.1, ge=0, lt=1)
    batch: int = pydantic.Field(4, ge=1)
    steps: int = pydantic.Field(500, ge=1, description="optimiser steps")
    learning_rate: float = pydantic.Field(1e-3, gt=0)
    seed: int = 0
    device: str | None = pydantic.Field(None, description="torch device; None = cuda when available, else cpu")

    @pydantic.model_validator(mode="after")
    def _patch_fits_pooling(self) -> "N2NConfig":
        if self.patch % 2**self.levels:
            raise ValueError(f"patch {self.patch} must be a multiple of 2**levels = {2**self.levels}")
        return self


@dataclass
class N2NModel:
    """A trained denoiser: its config, weights (name -> float32 array), the training normalisation
    (mean, std of the sampled patches) and the loss history (step, training loss, validation loss;
    step 0 is the untrained network, without a training loss; None where there is no value)."""

    config: N2NConfig
    weights: dict[str, np.ndarray]
    mean: float
    std: float
    history: list[tuple[int, float | None, float | None]] = field(default_factory=list)

    def network(self, device: str = "cpu") -> Any:
        """The torch module with these weights, in eval mode on `device`."""
        torch = require_torch()
        net = build_network(self.config)
        net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in self.weights.items()})
        return net.to(device).eval()


def build_network(config: N2NConfig) -> Any:
    """The untrained denoising U-Net of `config`: no normalisation layers (tiles stitch exactly),
    LeakyReLU, trilinear upsampling, one output channel."""
    require_torch()
    return build_unet3d(
        out_channels=1, channels=config.channels, levels=config.levels,
        norm="none", activation="leaky_relu", upsample="trilinear",
    )


_LEGACY_PREFIXES = {"up": "merge", "out": "head"}


def current_weight_names(weights: dict[str, Any]) -> dict[str, Any]:
    """Weights with the parameter names of `build_network`. Models written before the U-Nets were
    merged (cryocloud/denoise/unet.py) named the decoder blocks `up.<i>` and the last convolution
    `out`; these are now `merge.<i>` and `head`. Current names pass unchanged."""
    if not any(k.startswith("out.") for k in weights):
        return dict(weights)
    renamed = {}
    for key, value in weights.items():
        prefix, _, rest = key.partition(".")
        renamed[f"{_LEGACY_PREFIXES.get(prefix, prefix)}.{rest}"] = value
    return renamed


def _device(config: N2NConfig) -> str:
    torch = require_torch()
    return config.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _check_halves(even: Tomogram, odd: Tomogram, patch: int) -> None:
    if even.shape != odd.shape:
        raise ModelError("odd", f"has shape {odd.shape}, expected the even half's {even.shape}")
    if min(even.shape) < patch:
        raise ModelError("patch", f"{patch} voxels exceeds the volume {even.shape}; choose a smaller patch")


def sample_pairs(even: Tomogram, odd: Tomogram, patch: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` random cubic sub-volume pairs (count, patch, patch, patch) of the two halves, float32."""
    _check_halves(even, odd, patch)
    rng = np.random.default_rng(seed)
    starts = np.stack([rng.integers(0, n - patch + 1, count) for n in even.shape], axis=1)

    def crops(volume: Tomogram) -> da.Array:
        data = da.asarray(volume.data.data)
        return da.stack([data[z : z + patch, y : y + patch, x : x + patch] for z, y, x in starts]).astype(np.float32)

    a, b = compute(crops(even), crops(odd), description=f"reading {count} training sub-volume pairs")
    return np.asarray(a), np.asarray(b)


def _flip_batch(torch: Any, x: Any, y: Any, rng: np.random.Generator) -> tuple[Any, Any]:
    """Flip each pair along random spatial axes and swap input and target at random."""
    xs, ys = [], []
    for i in range(x.shape[0]):
        axes = [d + 1 for d in range(3) if rng.random() < 0.5]
        a, b = (x[i], y[i]) if rng.random() < 0.5 else (y[i], x[i])
        xs.append(torch.flip(a, axes) if axes else a)
        ys.append(torch.flip(b, axes) if axes else b)
    return torch.stack(xs), torch.stack(ys)


def train(
    even: Tomogram,
    odd: Tomogram,
    config: N2NConfig = N2NConfig(),
    *,
    progress: Callable[[int, float], None] | None = None,
) -> N2NModel:
    """Train a Noise2Noise denoiser on the even- and odd-frame reconstructions (same shape, z, y, x).

    `progress(step, loss)` is called after every step. Deterministic for a given seed on CPU.
    """
    torch = require_torch()
    a, b = sample_pairs(even, odd, config.patch, config.n_patches, config.seed)
    mean = float(0.5 * (a.mean() + b.mean()))
    std = float(np.sqrt(0.5 * (a.var() + b.var())))
    if not np.isfinite(std) or std <= 0:
        raise ModelError("data", "the sampled sub-volumes are constant or not finite; nothing to learn")
    device = _device(config)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 1])
    x = torch.from_numpy((a - mean) / std)[:, None]
    y = torch.from_numpy((b - mean) / std)[:, None]
    n_val = int(round(config.validation_fraction * len(x)))
    n_train = len(x) - n_val
    net = build_network(config).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.steps)
    history = [(0, None, _validation_loss(torch, net, x[n_train:], y[n_train:], device))]
    for step in range(1, config.steps + 1):
        pick = rng.choice(n_train, size=min(config.batch, n_train), replace=False)
        xb, yb = _flip_batch(torch, x[pick], y[pick], rng)
        loss = torch.nn.functional.mse_loss(net(xb.to(device)), yb.to(device))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if progress is not None:
            progress(step, loss.item())
        if step == config.steps or step % max(1, config.steps // 10) == 0:
            history.append((step, loss.item(), _validation_loss(torch, net, x[n_train:], y[n_train:], device)))
    weights = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    return N2NModel(config, weights, mean, std, history)


def _validation_loss(torch: Any, net: Any, x: Any, y: Any, device: str) -> float | None:
    """Symmetric (even -> odd and odd -> even) MSE on held-out pairs; None without any."""
    if len(x) == 0:
        return None
    with torch.no_grad():
        x, y = x.to(device), y.to(device)
        return float(0.5 * (torch.nn.functional.mse_loss(net(x), y) + torch.nn.functional.mse_loss(net(y), x)))


class TileDenoiser:
    """Picklable block function for Dask: the network is built once per process on first use."""

    def __init__(self, model: N2NModel, device: str):
        self.model = model
        self.device = device
        self._net = None

    def __getstate__(self) -> dict:
        return {"model": self.model, "device": self.device, "_net": None}

    def __call__(self, block: np.ndarray) -> np.ndarray:
        torch = require_torch()
        if self._net is None:
            self._net = self.model.network(self.device)
        m = 2**self.model.config.levels
        pad = [(0, -n % m) for n in block.shape]
        padded = np.pad(np.asarray(block, dtype=np.float32), pad, mode="reflect" if min(block.shape) > 1 else "edge")
        with torch.no_grad():
            out = self._net(torch.from_numpy(padded)[None, None].to(self.device))[0, 0].cpu().numpy()
        return out[tuple(slice(0, n) for n in block.shape)].astype(np.float32)


def denoise(tomo: Tomogram, model: N2NModel, *, tile: int = 64, depth: int = 16, device: str | None = None) -> Tomogram:
    """Lazy Noise2Noise denoising of a tomogram (z, y, x) in tiles of `tile` voxels overlapping by `depth`.

    The input is normalised by its own (lazy) mean and standard deviation and the output scaled
    back to the input's units. Returns a Tomogram chunked in tiles; nothing is computed here.
    """
    data = da.asarray(tomo.data.data).astype(np.float32)
    mean, std = data.mean(), data.std()
    block_fn = TileDenoiser(model, device or _device(model.config))
    out = map_tiles((data - mean) / std, block_fn, tile=tile, depth=depth, multiple=2**model.config.levels) * std + mean
    result = tomo.with_data(out.astype(np.float32))
    result.data.attrs["denoise"] = {"method": "noise2noise", "tile": tile, "depth": depth, **model.config.model_dump()}
    return result


def denoise_halves(even: Tomogram, odd: Tomogram, model: N2NModel, *, difference: bool = False, **kwargs: Any) -> Tomogram:
    """Mean of the denoised even and odd reconstructions (the cryoCARE output), lazy. With
    `difference`, half their difference instead: the mean's residual noise without its signal, the
    null volume for template matching's empirical cut-off (`cryocloud.pick.null`)."""
    _check_halves(even, odd, 1)
    a, b = denoise(even, model, **kwargs), denoise(odd, model, **kwargs)
    sign = -1.0 if difference else 1.0
    result = a.with_data(0.5 * (a.data.data + sign * b.data.data))
    result.data.attrs["denoise"] = dict(a.data.attrs["denoise"], halves="(even-odd)/2" if difference else "even+odd")
    return result


def save_model(model: N2NModel, url: str, *, overwrite: bool = False, storage_options: dict | None = None) -> None:
    """Write `<url>/weights.pt` (torch state dict) and, last, `<url>/model.json` (config, normalisation, history)."""
    torch = require_torch()
    from cryocloud.store import open_url, resolve

    folder = resolve(url, storage_options)
    if folder.child(CONFIG_FILE).exists() and not overwrite:
        raise OutputExistsError(f"{url}: a model is already stored there; use overwrite to replace it")
    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in model.weights.items()}, buffer)
    with open_url(folder.child(WEIGHTS_FILE).url, "wb", storage_options=storage_options) as fh:
        fh.write(buffer.getvalue())
    record = {"config": model.config.model_dump(), "mean": model.mean, "std": model.std, "history": model.history}
    with open_url(folder.child(CONFIG_FILE).url, "w", storage_options=storage_options) as fh:
        json.dump(record, fh, indent=1)


def load_model(url: str, *, storage_options: dict | None = None) -> N2NModel:
    """Read a model written by `save_model` (weights loaded with torch.load(weights_only=True))."""
    torch = require_torch()
    from cryocloud.store import open_url, resolve

    folder = resolve(url, storage_options)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not folder.child(name).exists():
            raise StoreError(url, f"holds no {name}; expected a model folder written by 'cryocloud denoise train'")
    try:
        with open_url(folder.child(CONFIG_FILE).url, "r", storage_options=storage_options) as fh:
            record = json.load(fh)
        config = N2NConfig.model_validate(record["config"])
        mean, std = float(record["mean"]), float(record["std"])
        history = [tuple(h) for h in record.get("history", [])]
    except (ValueError, KeyError, TypeError, pydantic.ValidationError) as exc:
        raise StoreError(url, f"invalid {CONFIG_FILE}: {exc}", field=CONFIG_FILE) from exc
    with open_url(folder.child(WEIGHTS_FILE).url, "rb", storage_options=storage_options) as fh:
        try:
            state = torch.load(io.BytesIO(fh.read()), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a corrupt or foreign file
            raise StoreError(url, f"unreadable {WEIGHTS_FILE}: {exc}", field=WEIGHTS_FILE) from exc
    model = N2NModel(config, current_weight_names({k: v.numpy() for k, v in state.items()}), mean, std, history)
    try:
        model.network()
    except RuntimeError as exc:
        raise StoreError(url, f"{WEIGHTS_FILE} does not fit the network of {CONFIG_FILE}: {exc}", field=WEIGHTS_FILE) from exc
    return model
