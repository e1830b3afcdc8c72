"""Figures are drawn without pyplot's global (thread-unsafe) state, so batch threads can draw at once."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cryocloud.plotting import subplots


@pytest.mark.slow
def test_no_cryocloud_module_imports_pyplot():
    code = (
        "import importlib, pkgutil, sys, cryocloud\n"
        "for m in pkgutil.walk_packages(cryocloud.__path__, 'cryocloud.'):\n"
        "    if '.cli' not in m.name: importlib.import_module(m.name)\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout


def _png(seed: int) -> bytes:
    import io

    fig, axes = subplots(1, 2, figsize=(4, 2))
    axes[0].imshow(np.random.default_rng(seed).normal(size=(32, 32)))
    axes[1].plot(np.arange(10) * seed)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


@pytest.mark.slow
def test_figures_drawn_from_many_threads_are_all_valid_pngs():
    with ThreadPoolExecutor(8) as pool:
        pngs = list(pool.map(_png, range(32)))
    assert all(p.startswith(b"\x89PNG") and len(p) > 1000 for p in pngs)
    assert len(set(pngs)) == 32  # each thread drew its own figure
