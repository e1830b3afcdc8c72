"""Angular search sets: counts, uniform coverage of SO(3), symmetry reduction, local and custom lists."""

import numpy as np
import pytest

from cryocloud.errors import ModelError
from cryocloud.geometry import matrix_to_relion_euler, random_rotations, rotation_angle_deg
from cryocloud.pick.angles import (
    crowther_increment,
    local_rotations,
    nearest_rotation,
    parse_angle_list,
    rotations_from_list,
    symmetry_operators,
    uniform_rotations,
)


def test_counts_match_the_issue_numbers():
    # the issue: 7 deg gives about 50,000 rotations (PyTom's list: 45,123), 15 deg about 4,600
    n7, n15 = len(uniform_rotations(7.0)), len(uniform_rotations(15.0))
    assert 42_000 <= n7 <= 52_000
    assert 4_200 <= n15 <= 5_000


@pytest.mark.parametrize("increment", [7.0, 15.0, 30.0])
def test_every_orientation_has_a_rotation_within_the_increment(increment):
    rotations = uniform_rotations(increment)
    assert np.allclose(np.einsum("nij,nkj->nik", rotations, rotations), np.eye(3), atol=1e-9)
    _, angle = nearest_rotation(rotations, random_rotations(2000, np.random.default_rng(0)))
    assert angle.max() < increment  # covering radius
    assert np.median(angle) < 0.6 * increment


@pytest.mark.parametrize("symmetry,order", [("C1", 1), ("C4", 4), ("D3", 6), ("T", 12), ("O", 24)])
def test_symmetry_groups_are_closed_groups(symmetry, order):
    ops = symmetry_operators(symmetry)
    assert len(ops) == order
    products = np.einsum("aij,bjk->abik", ops, ops).reshape(-1, 3, 3)
    for p in products:  # closure
        assert np.min(rotation_angle_deg(ops, p[None])) < 1e-6


@pytest.mark.parametrize("symmetry,order", [("C2", 2), ("C6", 6), ("D2", 4), ("T", 12), ("O", 24)])
def test_symmetry_reduces_the_set_and_still_covers(symmetry, order):
    full = len(uniform_rotations(15.0))
    reduced = uniform_rotations(15.0, symmetry)
    assert full / order <= len(reduced) <= 1.45 * full / order
    _, angle = nearest_rotation(reduced, random_rotations(2000, np.random.default_rng(1)), symmetry)
    assert angle.max() < 15.0


def test_crowther_default_increment():
    # 40 A resolution on a 250 A particle: 0.16 rad
    assert crowther_increment(40.0, 250.0) == pytest.approx(9.167, abs=1e-3)
    with pytest.raises(ModelError, match="angular_increment"):
        crowther_increment(0.0, 250.0)


def test_local_search_stays_near_its_centres():
    centres = random_rotations(2, np.random.default_rng(2))
    local = local_rotations(centres, 10.0, 3.0)
    per_centre = len(local) // 2
    assert per_centre == 171  # integer points (i, j, k) with i^2 + j^2 + k^2 <= (10/3)^2
    assert np.max(rotation_angle_deg(local[:per_centre], centres[0][None])) <= 10.0 + 1e-9
    assert np.max(rotation_angle_deg(local[per_centre:], centres[1][None])) <= 10.0 + 1e-9
    # any orientation within 8 deg of a centre has a local rotation within the increment
    probes = np.einsum("nij,jk->nik", local_rotations(np.eye(3)[None], 8.0, 2.6), centres[0])
    _, angle = nearest_rotation(local, probes)
    assert angle.max() < 3.0


def test_custom_lists_from_euler_angles_and_matrices():
    rng = np.random.default_rng(3)
    mats = random_rotations(5, rng)
    eulers = matrix_to_relion_euler(mats)
    text = "# rot tilt psi\n" + "\n".join(" ".join(f"{v:.10f}" for v in row) for row in eulers)
    assert np.allclose(parse_angle_list(text), mats, atol=1e-8)
    assert np.allclose(rotations_from_list(mats.reshape(5, 9)), mats)
    with pytest.raises(ModelError, match="angles"):
        rotations_from_list(np.ones((3, 9)))
    with pytest.raises(ModelError, match="line 2"):
        parse_angle_list("1 2 3\n1 b 3", source="list.txt")
