import numpy as np
import pytest

from datasets.replay import ReplayBuffer

SPEC = {"agentview_image": {"shape": [2, 2, 3], "dtype": "uint8"}, "robot0_eef_pos": {"shape": [1], "dtype": "float32"}}


def _episode(first: int, rewards: list[float], terminals: list[float], timeout: bool) -> dict:
    """Observation t of this episode is the number first + t, in the frame and the low-dim key."""
    steps = len(rewards)
    values = first + np.arange(steps + 1)
    frames = np.broadcast_to(values[:, None, None, None], (steps + 1, 2, 2, 3)).astype(np.uint8)
    lowdim = values[:, None].astype(np.float32)
    obs = {"agentview_image": frames[:-1], "robot0_eef_pos": lowdim[:-1]}
    next_obs = {"agentview_image": frames[1:], "robot0_eef_pos": lowdim[1:]}
    timeouts = np.zeros(steps, np.float32)
    timeouts[-1] = float(timeout)
    return dict(obs=obs, next_obs=next_obs, actions=np.zeros((steps, 1), np.float32),
                rewards=np.asarray(rewards, np.float32), terminals=np.asarray(terminals, np.float32),
                timeouts=timeouts, mc_returns=np.zeros(steps, np.float32))


@pytest.fixture
def replay() -> ReplayBuffer:
    buffer = ReplayBuffer(SPEC, 1, 20, 30)
    buffer.add_episode(**_episode(0, [1, 2, 3, 4], [0, 0, 0, 1], timeout=False))  # rows 0-3, success at the end
    buffer.add_episode(**_episode(10, [5, 6, 7], [0, 1, 0], timeout=True))  # rows 4-6, a terminal in the middle
    return buffer


def test_one_step_batches_are_the_stored_transitions(replay):
    batch = replay.gather(np.arange(7))
    np.testing.assert_array_equal(batch["rewards"], [1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(batch["next_obs"]["robot0_eef_pos"][:, 0], [1, 2, 3, 4, 11, 12, 13])
    np.testing.assert_array_equal(batch["next_obs"]["agentview_image"][:, 0, 0, 0], [1, 2, 3, 4, 11, 12, 13])
    assert "discounts" not in batch


def test_n_step_batches_stop_at_terminals_and_episode_ends(replay):
    batch = replay.gather(np.array([0, 2, 3, 4, 5, 6]), n_step=3, gamma=0.5)
    np.testing.assert_allclose(batch["rewards"], [1 + 0.5 * 2 + 0.25 * 3, 3 + 0.5 * 4, 4, 5 + 0.5 * 6, 6, 7])
    np.testing.assert_allclose(batch["discounts"], [0.125, 0.25, 0.5, 0.25, 0.5, 0.5])
    np.testing.assert_array_equal(batch["terminals"], [0, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(batch["timeouts"], [0, 0, 0, 0, 0, 1])
    # the bootstrap state is the one after the last step taken, never across an episode boundary
    np.testing.assert_array_equal(batch["next_obs"]["robot0_eef_pos"][:, 0], [3, 4, 4, 12, 12, 13])
    np.testing.assert_array_equal(batch["next_obs"]["agentview_image"][:, 0, 0, 0], [3, 4, 4, 12, 12, 13])
    np.testing.assert_array_equal(batch["obs"]["robot0_eef_pos"][:, 0], [0, 2, 3, 10, 11, 12])
    with pytest.raises(ValueError, match="gamma"):
        replay.gather(np.array([0]), n_step=3)
