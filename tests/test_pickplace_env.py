import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import gymnasium as gym
import sim
from sim.pickplace import CUBE_HALF_SIZE, TABLE_TOP_Z, PickPlaceEnv


def test_check_env_passes(pickplace_env):
    check_env(pickplace_env, skip_render_check=True)


def test_observation_keys_dtypes_and_spaces(pickplace_env):
    obs, info = pickplace_env.reset(seed=0)
    assert set(obs) == {"agentview_image", "robot0_eef_pos", "robot0_gripper_qpos", "object"}
    assert obs["agentview_image"].shape == (48, 48, 3) and obs["agentview_image"].dtype == np.uint8
    assert pickplace_env.observation_space.contains(obs)
    assert info == {"is_success": False}
    assert pickplace_env.action_space.shape == (4,)
    assert pickplace_env.render().shape == (256, 256, 3)


def test_image_size_is_configurable():
    env = sim.make_env("pickplace", image_size=84)
    try:
        obs, _ = env.reset(seed=0)
        assert obs["agentview_image"].shape == (84, 84, 3)
    finally:
        env.close()
    with pytest.raises(ValueError, match="image_size"):
        sim.make_env("pickplace", image_size=256)


def test_seeded_resets_and_rollouts_are_reproducible():
    envs = [sim.make_env("pickplace"), sim.make_env("pickplace")]
    try:
        actions = np.random.default_rng(0).uniform(-1, 1, size=(15, 4))
        trajectories = []
        for env in envs:
            obs, _ = env.reset(seed=123)
            frames = [obs["agentview_image"]]
            for action in actions:
                obs, *_ = env.step(action)
                frames.append(obs["agentview_image"])
            trajectories.append((np.stack(frames), env.unwrapped.get_state()))
        np.testing.assert_array_equal(trajectories[0][0], trajectories[1][0])
        np.testing.assert_array_equal(trajectories[0][1], trajectories[1][1])
        other, _ = envs[0].reset(seed=124)
        first, _ = envs[1].reset(seed=123)
        assert not np.allclose(other["object"][:3], first["object"][:3])
    finally:
        for env in envs:
            env.close()


def _red_centroid(image: np.ndarray) -> np.ndarray:
    mask = (image[..., 0] > 120) & (image[..., 1] < 60) & (image[..., 2] < 60)
    assert mask.sum() > 3, "cube not visible"
    rows, cols = np.nonzero(mask)
    return np.array([cols.mean(), rows.mean()])


def _project(env: PickPlaceEnv, point: np.ndarray, size: int) -> np.ndarray:
    """Pixel (column, row from the top) of a world point in the observation camera."""
    d, cam = env.data, env._camera
    rot = d.cam_xmat[cam].reshape(3, 3)  # columns: camera right, up, backwards
    local = rot.T @ (point - d.cam_xpos[cam])
    focal = 0.5 * size / np.tan(np.deg2rad(env.model.cam_fovy[cam]) / 2)
    return np.array([size / 2 + focal * local[0] / -local[2], size / 2 - focal * local[1] / -local[2]])


def test_image_is_upright_and_not_mirrored():
    size = 96
    env = sim.make_env("pickplace", image_size=size)
    try:
        centroids = []
        for cube_xy in ([-0.05, -0.22], [-0.05, -0.02], [0.06, -0.12]):
            obs, _ = env.reset(seed=0, options={"cube_xy": cube_xy})
            centroid = _red_centroid(obs["agentview_image"])
            cube_centre = np.array([*cube_xy, TABLE_TOP_Z + CUBE_HALF_SIZE])
            np.testing.assert_allclose(centroid, _project(env, cube_centre, size), atol=3.0)
            centroids.append(centroid)
        # Seen from the front: the cube on the camera's left (-y) is on the image's left, and
        # the cube nearer the camera (+x) is lower in the image.
        assert centroids[0][0] < size / 2 < centroids[1][0] + 10 and centroids[0][0] < centroids[1][0] - 10
        assert centroids[2][1] > centroids[1][1]
    finally:
        env.close()


@pytest.mark.parametrize("action", [np.zeros(3), np.zeros((1, 4)), np.zeros(7)])
def test_wrong_action_shape_raises(pickplace_env, action):
    pickplace_env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        pickplace_env.step(action)


def test_non_finite_action_raises(pickplace_env):
    pickplace_env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        pickplace_env.step(np.array([0.0, np.nan, 0.0, 0.0]))


def test_unknown_task_lists_available_tasks():
    with pytest.raises(ValueError, match="available tasks: can, lift, pickplace"):
        sim.make_env("stack")


def test_truncates_at_horizon_and_moves_the_gripper():
    env = sim.make_env("pickplace", horizon=5)
    try:
        obs, _ = env.reset(seed=0)
        start = obs["robot0_eef_pos"].copy()
        for step in range(5):
            obs, reward, terminated, truncated, info = env.step(np.array([0.0, 0.0, -1.0, -1.0]))
            assert reward == 0.0 and not terminated and truncated == (step == 4)
        # 5 steps of 4 cm downwards, less the servo lag of the last step
        assert 0.12 < start[2] - obs["robot0_eef_pos"][2] <= 0.2 + 1e-3
    finally:
        env.close()


def test_registered_with_gymnasium():
    env = gym.make("sim/pickplace-v0", image_size=32)
    try:
        obs, _ = env.reset(seed=0)
        assert obs["agentview_image"].shape == (32, 32, 3)
    finally:
        env.close()


def test_vector_env_runs_workers():
    envs = sim.make_vector_env("pickplace", 2, horizon=10)
    try:
        obs, _ = envs.reset(seed=[0, 1])
        assert obs["agentview_image"].shape == (2, 48, 48, 3)
        assert not np.array_equal(obs["object"][0], obs["object"][1])
        for _ in range(3):
            obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
        assert reward.shape == (2,) and obs["robot0_eef_pos"].shape == (2, 3)
    finally:
        envs.close()
