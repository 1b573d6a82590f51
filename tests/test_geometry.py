"""Camera geometry: intrinsics, pose algebra, projection and back-projection."""

import numpy as np
import pytest

from stvla import geometry


def test_intrinsics_from_fov_centre_and_focal():
    K = geometry.intrinsics_from_fov(90.0, 100, 100)
    # tan(45 deg) = 1, so the focal length is half the image height.
    assert K[0, 0] == pytest.approx(50.0) and K[1, 1] == pytest.approx(50.0)
    assert K[0, 2] == pytest.approx(49.5) and K[1, 2] == pytest.approx(49.5)
    with pytest.raises(ValueError, match="fovy"):
        geometry.intrinsics_from_fov(0.0, 10, 10)


def test_project_known_points():
    K = geometry.intrinsics_from_fov(90.0, 100, 100)
    pose = np.eye(4)  # camera at the origin looking along +z
    uv = geometry.project_world_points(np.array([[0.0, 0.0, 2.0], [1.0, -1.0, 2.0]]), K, pose)
    np.testing.assert_allclose(uv, [[49.5, 49.5], [74.5, 24.5]])
    assert np.isnan(geometry.project_world_points(np.array([0.0, 0.0, -1.0]), K, pose)).all()


def test_pose_inverse_and_world_camera_round_trip():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    pose = geometry.pose_from_rotation_translation(q, [0.3, -1.0, 2.0])
    np.testing.assert_allclose(geometry.invert_pose(pose) @ pose, np.eye(4), atol=1e-12)
    points = rng.normal(size=(20, 3))
    np.testing.assert_allclose(geometry.camera_to_world(geometry.world_to_camera(points, pose), pose), points)


def test_backproject_then_project_round_trip():
    K = geometry.intrinsics_from_fov(45.0, 64, 80)
    depth = np.random.default_rng(1).uniform(0.5, 3.0, size=(64, 80))
    points = geometry.backproject_depth(depth, K)
    assert points.shape == (64, 80, 3)
    np.testing.assert_allclose(points[..., 2], depth)
    uv = geometry.project_camera_points(points, K)
    v, u = np.mgrid[0:64, 0:80]
    np.testing.assert_allclose(uv, np.stack([u, v], -1), atol=1e-9)


def test_scale_intrinsics_matches_direct_construction():
    K224 = geometry.intrinsics_from_fov(60.0, 224, 224)
    K128 = geometry.scale_intrinsics(K224, (224, 224), (128, 128))
    np.testing.assert_allclose(K128, geometry.intrinsics_from_fov(60.0, 128, 128))


@pytest.mark.parametrize("change, needle", [((0, 0, 0.0), "fx, fy > 0"), ((1, 0, 5.0), "[0, fy, cy]"),
                                            ((2, 2, 2.0), "[0, 0, 1]"), ((0, 2, np.nan), "non-finite")])
def test_check_intrinsics_refuses_what_is_no_pinhole_matrix(change, needle):
    """A camera matrix has zeros below the diagonal and [0, 0, 1] as its last row (K[1, 0] = 5 passed)."""
    K = np.array([[80.0, 0.0, 48.0], [0.0, 80.0, 48.0], [0.0, 0.0, 1.0]])
    geometry.check_intrinsics(K, "camera")
    row, column, value = change
    K[row, column] = value
    with pytest.raises(ValueError, match=f"camera: intrinsics .*{needle[:6].replace('[', '.')}"):
        geometry.check_intrinsics(K, "camera")
