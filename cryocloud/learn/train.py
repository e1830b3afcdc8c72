"""Training the picker: sub-volumes sampled from annotated tomograms, class-balanced loss.

Sampling: `patches_per_tomogram` boxes of `patch` voxels per tomogram, a fraction
`particle_fraction` of them centred near a pick (jittered by up to a quarter box), the rest
anywhere; they are read lazily in one compute per tomogram and standardised with the tomogram's
`intensity_stats`. Each step draws `batch_size` boxes and flips / rotates them by 90 degrees about
z at random (the missing wedge stays along z).

Loss: cross-entropy with class weights proportional to 1 / sqrt(class frequency) among the sampled
targets, plus the soft Dice loss of the non-background classes (each class counts equally,
whatever its size): a particle class of ~1 % of the voxels is not drowned by background.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

import dask
import numpy as np
import pydantic

from cryocloud.errors import ModelError
from cryocloud.learn.intensity import intensity_stats
from cryocloud.learn.model_io import Picker, PickerConfig
from cryocloud.learn.targets import render_targets
from cryocloud.learn.torch_import import device_for, import_torch
from cryocloud.learn.unet import UNetConfig, build_unet
from cryocloud.model import Particles, Tomogram


class TrainSettings(pydantic.BaseModel):
    """Training choices (voxels, steps)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    patch: int = pydantic.Field(32, ge=8, description="training box edge (voxels, a multiple of 2**depth)")
    steps: int = pydantic.Field(300, ge=1)
    batch_size: int = pydantic.Field(4, ge=1)
    learning_rate: float = pydantic.Field(2e-3, gt=0)
    patches_per_tomogram: int = pydantic.Field(64, ge=1)
    particle_fraction: float = pydantic.Field(0.6, ge=0, le=1, description="share of boxes centred near a pick")
    base_channels: int = pydantic.Field(8, ge=1)
    depth: int = pydantic.Field(2, ge=1, le=4)
    device: str = pydantic.Field("auto", description="auto (GPU when present), cpu, cuda, cuda:N")
    seed: int = 0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _corners(shape: tuple[int, ...], positions_a: np.ndarray, px: float, s: TrainSettings, rng: np.random.Generator) -> np.ndarray:
    n = s.patches_per_tomogram
    near = rng.random(n) < s.particle_fraction if len(positions_a) else np.zeros(n, bool)
    hi = np.asarray(shape) - s.patch
    corners = (rng.random((n, 3)) * (hi + 1)).astype(np.int64)
    if near.any():
        centres = positions_a[rng.integers(0, len(positions_a), near.sum())][:, ::-1] / px
        jitter = rng.integers(-(s.patch // 4), s.patch // 4 + 1, (near.sum(), 3))
        corners[near] = np.rint(centres + jitter).astype(np.int64) - s.patch // 2
    return np.clip(corners, 0, hi)


def sample_patches(
    tomograms: Sequence[Tomogram],
    picks: Sequence[Particles],
    radius_a: float,
    settings: TrainSettings,
    membranes: Sequence[Tomogram | None] | None = None,
    membrane_label: int | None = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Standardised boxes (P, b, b, b) float32 and their targets (P, b, b, b) uint8 (see module
    docstring); membranes where a label volume equals `membrane_label` (None: any non-zero label)."""
    rng = np.random.default_rng(settings.seed)
    images, labels = [], []
    for i, (tomo, particles) in enumerate(zip(tomograms, picks)):
        if any(n < settings.patch for n in tomo.shape):
            raise ModelError("patch", f"training box {settings.patch} exceeds tomogram {i}'s shape {tomo.shape} (z, y, x)")
        px = tomo.pixel_size
        corners = _corners(tomo.shape, particles.positions, px, settings, rng)
        b = settings.patch
        boxes = [tomo.data.data[z : z + b, y : y + b, x : x + b] for z, y, x in corners]
        mem = membranes[i] if membranes is not None else None
        boxes_of = [mem.data.data[z : z + b, y : y + b, x : x + b] for z, y, x in corners] if mem is not None else []
        masks = [m != 0 if membrane_label is None else m == membrane_label for m in boxes_of]
        mean, std = intensity_stats(tomo)
        boxes, masks = dask.compute(boxes, masks)
        for j, corner in enumerate(corners):
            images.append((np.asarray(boxes[j], dtype=np.float32) - mean) / std)
            labels.append(render_targets(corner, (b, b, b), particles.positions, px, radius_a, masks[j] if masks else None))
    return np.stack(images).astype(np.float32), np.stack(labels)


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Cross-entropy weights proportional to 1 / sqrt(frequency), mean 1 (absent classes get the largest)."""
    counts = np.bincount(labels.ravel(), minlength=n_classes).astype(np.float64)
    freq = np.maximum(counts, 1.0) / counts.sum()
    w = freq**-0.5
    return w / w.mean()


def _augment(torch, x, y, rng: np.random.Generator):
    for axis in (2, 3, 4):
        if rng.random() < 0.5:
            x, y = torch.flip(x, (axis,)), torch.flip(y, (axis - 1,))
    k = int(rng.integers(4))
    return torch.rot90(x, k, (3, 4)), torch.rot90(y, k, (2, 3))


def _check_inputs(tomograms: Sequence[Tomogram], picks: Sequence[Particles], membranes, settings: TrainSettings) -> float:
    if not tomograms or len(tomograms) != len(picks):
        raise ModelError("picks", f"expected one pick list per tomogram, got {len(picks)} for {len(tomograms)} tomograms")
    if membranes is not None and (len(membranes) != len(tomograms) or any(m is None for m in membranes)):
        raise ModelError("membranes", "give a membrane label volume for every training tomogram, or none")
    px = tomograms[0].pixel_size
    for i, t in enumerate(tomograms):
        if abs(t.pixel_size - px) > 0.01 * px:
            raise ModelError("pixel_size", f"tomogram {i} has {t.pixel_size} A voxels, tomogram 0 {px} A; train on one voxel size")
    if settings.patch % 2**settings.depth:
        raise ModelError("patch", f"must be a multiple of 2**depth = {2**settings.depth}, got {settings.patch}")
    if sum(len(p) for p in picks) == 0:
        raise ModelError("picks", "no picks to learn from")
    return px


def train(
    tomograms: Sequence[Tomogram],
    picks: Sequence[Particles],
    *,
    radius_a: float,
    settings: TrainSettings = TrainSettings(),
    membranes: Sequence[Tomogram | None] | None = None,
    membrane_label: int | None = 2,
    names: Sequence[str] = (),
    log: Callable[[str], None] | None = _stderr,
) -> Picker:
    """Train a picker on tomograms with their picks (positions in A) and optional label volumes
    whose value `membrane_label` marks membranes (one per tomogram; None: every non-zero label, as
    in `cryocloud.segment.segment_membranes`' labels, one per membrane)."""
    torch = import_torch()
    px = _check_inputs(tomograms, picks, membranes, settings)
    classes = ["background", "particle"] + (["membrane"] if membranes is not None else [])
    unet = UNetConfig(n_classes=len(classes), base_channels=settings.base_channels, depth=settings.depth)
    x_all, y_all = sample_patches(tomograms, picks, radius_a, settings, membranes, membrane_label)
    device = device_for(settings.device)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed + 1)
    model = build_unet(unet).to(device)
    weights = torch.as_tensor(class_weights(y_all, len(classes)), dtype=torch.float32, device=device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    x_all_t, y_all_t = torch.from_numpy(x_all)[:, None], torch.from_numpy(y_all.astype(np.int64))
    losses = np.zeros(settings.steps)
    model.train()
    for step in range(settings.steps):
        pick = torch.from_numpy(rng.integers(0, len(x_all), settings.batch_size))
        x, y = _augment(torch, x_all_t[pick], y_all_t[pick], rng)
        x, y = x.contiguous().to(device), y.contiguous().to(device)
        logits = model(x)
        prob = torch.softmax(logits, dim=1)
        onehot = torch.nn.functional.one_hot(y, len(classes)).permute(0, 4, 1, 2, 3).float()
        dims = (0, 2, 3, 4)
        dice = (2 * (prob * onehot).sum(dims) + 1) / (prob.sum(dims) + onehot.sum(dims) + 1)
        loss = torch.nn.functional.cross_entropy(logits, y, weight=weights) + (1 - dice[1:]).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses[step] = float(loss.detach())
        if log and (step + 1) % max(1, settings.steps // 10) == 0:
            log(f"training step {step + 1}/{settings.steps}: loss {losses[max(0, step - 9) : step + 1].mean():.4f}")
    model.eval()
    config = PickerConfig(
        unet=unet, classes=classes, radius_a=radius_a, pixel_size_a=px, patch=settings.patch, steps=settings.steps, trained_on=list(names)
    )
    return Picker(model.cpu(), config, losses)
