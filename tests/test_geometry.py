import numpy as np
from scipy.spatial.transform import Rotation

from cryocloud import geometry as g


def test_projection_convention_x_cos_plus_z_sin():
    p = np.array([[10.0, 5.0, 20.0]])
    t = 30.0
    xy = g.project_points(p, t)
    assert np.isclose(xy[0, 0], 10 * np.cos(np.deg2rad(t)) + 20 * np.sin(np.deg2rad(t)))
    assert xy[0, 1] == 5.0


def test_right_side_more_underfocused_at_positive_tilt():
    # points on the specimen mid-plane: right side of the image (x' > 0) at +tilt is deeper
    pts = np.array([[-100.0, 0, 0], [100.0, 0, 0]])
    df = g.point_defocus(pts, 30.0, 20000.0)
    assert df[1] > 20000 > df[0]
    xprime = g.project_points(pts, 30.0)[:, 0]
    np.testing.assert_allclose(g.image_defocus_gradient(xprime, 30.0, 20000.0), df)
    # and the opposite at negative tilt
    assert np.diff(g.point_defocus(pts, -30.0, 20000.0))[0] < 0


def test_xf_roundtrip_and_raw_mapping():
    shift = np.array([3.5, -2.0])
    row = g.xf_from_alignment(85.3, shift)
    angle, s = g.alignment_from_xf(row)
    assert np.isclose(angle, 85.3) and np.allclose(s, shift)
    pts = np.array([[1.0, 2.0], [-4.0, 7.0]])
    raw = g.aligned_to_raw(pts, 85.3, shift)
    a = row[:4].reshape(2, 2)
    np.testing.assert_allclose(raw @ a.T + row[4:], pts, atol=1e-9)
    np.testing.assert_allclose(g.raw_to_aligned(raw, 85.3, shift), pts, atol=1e-9)


def test_relion_euler_is_relions_matrix_a():
    rng = np.random.default_rng(1)
    ang = rng.uniform(-180, 180, (20, 3))
    ang[:, 1] = np.abs(ang[:, 1])
    m = g.relion_euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2])
    ref = Rotation.from_euler("ZYZ", ang, degrees=True).inv().as_matrix()
    np.testing.assert_allclose(m, ref, atol=1e-12)
    # RELION's Euler_angles2matrix for rot = 90 deg alone: rows (cos, sin, 0), (-sin, cos, 0), (0, 0, 1)
    np.testing.assert_allclose(g.relion_euler_to_matrix(90.0, 0.0, 0.0), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], atol=1e-12)
    back = g.matrix_to_relion_euler(m)
    np.testing.assert_allclose(g.relion_euler_to_matrix(*back.T), m, atol=1e-9)


def test_random_rotations_are_uniform_rotations():
    r = g.random_rotations(4000, np.random.default_rng(2))
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", r, r), np.broadcast_to(np.eye(3), r.shape), atol=1e-10)
    assert np.allclose(np.linalg.det(r), 1)
    # uniform on SO(3): the rotated z axis is uniform on the sphere, so mean of its z is ~0, var 1/3
    z = r[:, 2, 2]
    assert abs(z.mean()) < 0.03 and abs(z.var() - 1 / 3) < 0.02
    assert np.allclose(g.rotation_angle_deg(r, r), 0, atol=1e-5)
