"""A trained picker and its folder: `model.pt` (torch state dict, read with weights_only=True),
`losses.csv` (loss per training step) and `picker.json` (PickerConfig, written last: the folder
is complete)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydantic

from cryocloud.errors import OutputExistsError, StoreError
from cryocloud.learn.torch_import import import_torch
from cryocloud.learn.unet import UNetConfig, build_unet
from cryocloud.store import open_url, resolve

CONFIG_NAME, WEIGHTS_NAME, LOSSES_NAME = "picker.json", "model.pt", "losses.csv"


class PickerConfig(pydantic.BaseModel):
    """What a trained picker needs to predict: architecture, classes, particle radius and voxel size."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    schema_version: int = 1
    unet: UNetConfig
    classes: list[str] = pydantic.Field(description="class names, index = network output channel")
    radius_a: float = pydantic.Field(gt=0, description="particle radius (A) the targets were rendered with")
    pixel_size_a: float = pydantic.Field(gt=0, description="voxel size (A) of the training tomograms")
    patch: int = pydantic.Field(gt=0, description="training patch edge (voxels)")
    steps: int = pydantic.Field(ge=0, description="training steps done")
    trained_on: list[str] = pydantic.Field(default_factory=list, description="training tomograms")


@dataclass
class Picker:
    """A network (torch.nn.Module) with its configuration and training losses (one per step)."""

    model: Any
    config: PickerConfig
    losses: np.ndarray


def state_bytes(model: Any) -> bytes:
    """The model's state dict serialised by torch.save (CPU tensors)."""
    torch = import_torch()
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    return buffer.getvalue()


def model_from_bytes(config: PickerConfig, data: bytes, device: str = "cpu") -> Any:
    """The network of `config` with the weights in `data`, in eval mode on `device`."""
    torch = import_torch()
    model = build_unet(config.unet)
    model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    return model.to(device).eval()


def save_picker(picker: Picker, url: str, *, overwrite: bool = False, storage_options: dict | None = None) -> None:
    """Write the picker folder (weights and losses first, picker.json last)."""
    out = resolve(url, storage_options)
    if out.child(CONFIG_NAME).exists() and not overwrite:
        raise OutputExistsError(f"{out.url}: a trained picker exists; use overwrite=True (--overwrite)")
    with open_url(out.child(WEIGHTS_NAME).url, "wb", storage_options=storage_options) as f:
        f.write(state_bytes(picker.model))
    with open_url(out.child(LOSSES_NAME).url, "w", storage_options=storage_options) as f:
        f.write("step,loss\n" + "".join(f"{i},{v:.6g}\n" for i, v in enumerate(picker.losses)))
    with open_url(out.child(CONFIG_NAME).url, "w", storage_options=storage_options) as f:
        f.write(picker.config.model_dump_json(indent=1))


def load_picker(url: str, *, device: str = "cpu", storage_options: dict | None = None) -> Picker:
    """Read a picker folder written by `save_picker`."""
    out = resolve(url, storage_options)
    try:
        with open_url(out.child(CONFIG_NAME).url, "r", storage_options=storage_options) as f:
            config = PickerConfig.model_validate_json(f.read())
    except StoreError as exc:
        raise StoreError(out.url, f"is not a trained picker folder (no {CONFIG_NAME}); train one with `cryocloud train-picker`") from exc
    except pydantic.ValidationError as exc:
        raise StoreError(out.child(CONFIG_NAME).url, f"is not a valid picker configuration: {exc}") from exc
    with open_url(out.child(WEIGHTS_NAME).url, "rb", storage_options=storage_options) as f:
        data = f.read()
    try:
        model = model_from_bytes(config, data, device)
    except (RuntimeError, ValueError) as exc:
        raise StoreError(out.child(WEIGHTS_NAME).url, f"weights do not fit the network in {CONFIG_NAME}: {exc}") from exc
    with open_url(out.child(LOSSES_NAME).url, "r", storage_options=storage_options) as f:
        rows = f.read().splitlines()[1:]
    losses = np.array([float(r.split(",")[1]) for r in rows if r], dtype=np.float64)
    return Picker(model, config, losses)
