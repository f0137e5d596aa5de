"""The one episode type: its timeouts, its replay arrays with hand-computed returns, and the recorder."""

import numpy as np
import pytest

from datasets.episode import Episode, EpisodeRecorder
from datasets.returns import RewardConfig


def _episode(rewards: list[float], terminals: list[bool]) -> Episode:
    steps = len(rewards)
    obs = {"x": np.arange(steps, dtype=np.float32)[:, None]}
    return Episode(obs, obs, np.zeros((steps, 2), np.float32), np.array(rewards, np.float32), np.array(terminals))


def test_transitions_of_a_success_and_of_a_timeout():
    reward = RewardConfig(scale=10.0, bias=-10.0, sparse=True)
    success = _episode([0, 0, 1], [False, False, True]).transitions(0.5, reward)
    # rewards -10, -10, 0; returns 0 at the terminal, -10 + 0.5 * 0, -10 + 0.5 * -10
    np.testing.assert_allclose(success["rewards"], [-10, -10, 0])
    np.testing.assert_allclose(success["mc_returns"], [-15, -10, 0])
    assert not success["timeouts"].any() and success["terminals"].tolist() == [False, False, True]
    failure = _episode([0, 0], [False, False]).transitions(0.5, reward)
    np.testing.assert_allclose(failure["mc_returns"], [-20, -20])  # failing forever: -10 / (1 - 0.5)
    assert failure["timeouts"].tolist() == [False, True]


def test_recorder_builds_the_episode_and_starts_over():
    recorder = EpisodeRecorder(keys=["x"], states=True)
    for t in range(2):
        obs, next_obs = {"x": np.full(3, t, np.float32), "y": np.zeros(1)}, {"x": np.full(3, t + 1, np.float32), "y": np.zeros(1)}
        recorder.add(obs, np.full(2, 0.5 * t), float(t), t == 1, next_obs, state=np.full(4, t))
    episode = recorder.finish({"success": True})
    assert len(episode) == 2 and len(recorder) == 0 and set(episode.obs) == {"x"}  # only the kept key
    np.testing.assert_array_equal(episode.next_obs["x"][:, 0], [1, 2])
    assert episode.actions.dtype == np.float32 and episode.terminals.tolist() == [False, True]
    assert episode.states.shape == (2, 4) and episode.attrs == {"success": True}
    episode.validate()
    with pytest.raises(ValueError, match="at least one step"):
        recorder.finish()
    with pytest.raises(ValueError, match="states has 1 steps"):
        Episode(episode.obs, episode.next_obs, episode.actions, episode.rewards, episode.terminals, episode.states[:1]).validate()
