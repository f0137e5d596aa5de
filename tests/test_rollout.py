"""Envs driven by a policy and recorded as episodes: one env (play_episode) and many (EpisodeCollector)."""

import numpy as np

import sim
from sim.rollout import EpisodeCollector, play_episode


def _still(obs: dict[str, np.ndarray]) -> np.ndarray:
    return np.zeros((len(obs["robot0_eef_pos"]), 4), np.float32)  # hold the arm: no success in a few steps


def test_one_episode_records_states_and_frames():
    env = sim.make_env("pickplace", horizon=4, image_size=16)
    try:
        episode, frames = play_episode(env, lambda obs: np.zeros(4, np.float32), seed=3, states=True, frames=True)
    finally:
        env.close()
    assert len(episode) == 4 and len(frames) == 5 and episode.states.shape[0] == 4
    assert episode.attrs == {"success": False} and episode.timeouts.tolist() == [False, False, False, True]
    np.testing.assert_array_equal(episode.next_obs["robot0_eef_pos"][:-1], episode.obs["robot0_eef_pos"][1:])


def test_a_pause_lets_every_env_finish_its_episode_then_idle():
    envs = sim.make_vector_env("pickplace", 2, autoreset_mode="SameStep", horizon=3, image_size=16)
    collector = EpisodeCollector(envs, ["robot0_eef_pos", "agentview_image"])
    try:
        collector.start([1, 2])
        kept, finished = collector.step(_still)
        assert (kept, finished) == (2, []) and not collector.idle
        kept, finished = collector.step(_still, pause=True)
        assert (kept, finished) == (2, [])
        kept, finished = collector.step(_still, pause=True)  # both episodes end at their time limit
        assert kept == 2 and [len(e) for e in finished] == [3, 3] and collector.idle
        assert [e.attrs for e in finished] == [{"success": False, "sim_fault": False, "env": i} for i in (0, 1)]
        assert set(finished[0].obs) == {"robot0_eef_pos", "agentview_image"}
        kept, finished = collector.step(_still, pause=True)
        assert (kept, finished) == (0, [])  # idle envs' steps are not kept
        collector.start([3, 4])
        assert not collector.idle and collector.step(_still)[0] == 2
    finally:
        envs.close()
