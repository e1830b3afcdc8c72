"""Atomic model -> potential map: units (V A^3 per atom), centring, envelope volume, real structure."""

import gemmi
import numpy as np
import pytest

from cryocloud.errors import StoreError
from cryocloud.atomic import POTENTIAL_PREFACTOR_V_A2, AtomicModel, envelope_mask, mean_potential_v, potential_map
from cryocloud.store import read_atomic_model
from cryocloud.simulate.phantom import GOLD_POTENTIAL_V, ICE_POTENTIAL_V


@pytest.mark.parametrize("pixel", [1.0, 3.0])
def test_atom_pair_integral_and_position(pixel):
    half = np.array([2.3, -1.1, 3.7])
    model = AtomicModel("pair", np.array([half, -half]), np.array(["C", "C"]), 24.0)
    v = potential_map(model, pixel, implicit_hydrogens=False)
    assert v.sum() * pixel**3 == pytest.approx(2 * POTENTIAL_PREFACTOR_V_A2 * sum(gemmi.Element("C").c4322.a), rel=1e-4)
    # the pair is symmetric about its centroid, which sits at index n // 2: v(c + d) == v(c - d)
    inverted = np.roll(v[::-1, ::-1, ::-1], 1, axis=(0, 1, 2))
    assert np.allclose(inverted, v, atol=1e-4 * v.max())
    if pixel == 1.0:  # resolved atoms: the maximum lies within a voxel of one of the two atoms
        n = v.shape[0]
        peak_xyz = np.array(np.unravel_index(v.argmax(), v.shape))[::-1] - n // 2
        assert min(np.abs(peak_xyz - half).max(), np.abs(peak_xyz + half).max()) <= 0.6


@pytest.mark.slow
def test_bundled_ribosome_map_and_envelope():
    model = read_atomic_model()
    assert model.name == "7p6z" and len(model.xyz) == 142534
    assert 2.0e6 < model.mass_da < 2.1e6
    v = potential_map(model, 10.0)
    mask = envelope_mask(v, 10.0, model.mass_da)
    assert mask.sum() * 1000 == pytest.approx(model.mass_da * 1.21, rel=0.01)
    # a ribosome (protein + RNA, with implicit hydrogens) is denser than ice, ~6-8 V at 10 A sampling
    assert ICE_POTENTIAL_V < v[mask].mean() < 8.0
    assert v[~mask].mean() < 0.5


def test_material_potentials_match_literature():
    assert ICE_POTENTIAL_V == pytest.approx(4.5, abs=0.3)  # vitreous ice, ~4.5 V
    assert GOLD_POTENTIAL_V == pytest.approx(30.0, abs=3.0)  # gold, ~30 V
    assert mean_potential_v({"O": 1, "H": 2}, 0.0) == 0.0


def test_unreadable_model_names_the_file(tmp_path):
    bad = tmp_path / "broken.cif"
    bad.write_text("this is not a structure\n")
    with pytest.raises(StoreError, match="broken.cif"):
        read_atomic_model(bad)
