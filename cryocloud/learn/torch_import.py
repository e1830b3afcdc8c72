"""torch, imported on demand: the `learn` extra is optional."""

from __future__ import annotations

from types import ModuleType

from cryocloud.errors import CryocloudError


class LearnExtraMissing(CryocloudError, ImportError):
    """torch is not installed."""


def import_torch() -> ModuleType:
    """The torch module, or LearnExtraMissing telling how to install it."""
    try:
        import torch
    except ImportError as exc:
        raise LearnExtraMissing(f'learned picking needs torch, which is not installed: pip install "cryocloud[learn]" ({exc})') from exc
    return torch


def device_for(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is present, else 'cpu'; other names are passed through."""
    torch = import_torch()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CryocloudError(f"device {name!r} requested but torch sees no CUDA GPU; use --device cpu or auto")
    return name
