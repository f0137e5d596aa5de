import h5py
import numpy as np
import pytest

from datasets.offline import LoaderStats, iter_episodes, load_replay
from datasets.returns import RewardConfig

KEYS = ["agentview_image", "robot0_eef_pos", "robot0_gripper_qpos"]


def test_collector_file_loads_with_frames_stored_once(small_dataset):
    replay, stats = load_replay(small_dataset, KEYS, 0.99, RewardConfig(), filter_key=None)
    with h5py.File(small_dataset) as f:
        total = int(f["data"].attrs["total"])
        successes = sum(bool(f[f"data/demo_{i}"].attrs["success"]) for i in range(6))
    assert len(replay) == stats.transitions == total and stats.episodes == 6
    assert replay.num_frames == total + 6 and replay.frames["agentview_image"].shape[0] == total + 6
    assert stats.terminals == successes
    assert replay.data["terminals"].sum() + replay.data["timeouts"].sum() == 6
    batch = replay.gather(np.arange(len(replay)), 0.99)
    with h5py.File(small_dataset) as f:
        demo = f["data/demo_0"]
        steps = demo.attrs["num_samples"]
        np.testing.assert_array_equal(batch.obs["agentview_image"][:steps], demo["obs/agentview_image"][()])
        np.testing.assert_array_equal(batch.next_obs["agentview_image"][:steps], demo["next_obs/agentview_image"][()])
        reward = RewardConfig()
        np.testing.assert_allclose(batch.rewards[:steps], demo["rewards"][()] * reward.scale + reward.bias)
    assert replay.nbytes > replay.frames["agentview_image"].nbytes


def _write_robomimic_style(path, demos, with_next_obs=False):
    """A hand-written file the way robomimic lays it out (dones as done_mode 2 marks them)."""
    with h5py.File(path, "w") as f:
        for name, (eef, actions, rewards, dones) in demos.items():
            group = f.create_group(f"data/{name}")
            group.create_dataset("obs/robot0_eef_pos", data=eef)
            group.create_dataset("obs/robot0_joint_pos", data=np.zeros((len(actions), 7)))
            if with_next_obs:
                group.create_dataset("next_obs/robot0_eef_pos", data=np.concatenate([eef[1:], eef[-1:] + 1]))
            group.create_dataset("actions", data=actions)
            group.create_dataset("rewards", data=rewards)
            group.create_dataset("dones", data=dones)
            group.attrs["num_samples"] = len(actions)
        f.create_dataset("mask/train", data=np.array(list(demos), dtype="S"))


def test_robomimic_file_without_next_obs_and_done_mode_2(tmp_path):
    path = tmp_path / "robomimic.hdf5"
    eef = np.arange(15, dtype=np.float64).reshape(5, 3)
    # success from step 2 on: done_mode 2 sets dones on every success step and at the end
    success = (eef, np.zeros((5, 7)), np.array([0, 0, 1, 1, 1.0]), np.array([0, 0, 1, 1, 1]))
    failure = (eef + 100, np.zeros((5, 7)), np.zeros(5), np.array([0, 0, 0, 0, 1]))
    _write_robomimic_style(path, {"demo_0": success, "demo_1": failure})
    stats = LoaderStats()
    episodes = list(iter_episodes(path, ["robot0_eef_pos"], "train", "success", stats))
    first, second = episodes
    assert len(first) == 3 and first.terminals.tolist() == [False, False, True] and not first.timeouts.any()
    np.testing.assert_array_equal(first.next_obs["robot0_eef_pos"][:2], eef[1:3])  # rebuilt by shifting
    assert len(second) == 5 and not second.terminals.any() and second.timeouts.tolist() == [0, 0, 0, 0, 1]
    assert stats.dropped_after_terminal == 2
    # `dones` rule: the done at the end of the failed demo becomes a terminal too
    by_dones = list(iter_episodes(path, ["robot0_eef_pos"], "train", "dones"))
    assert by_dones[1].terminals.tolist() == [0, 0, 0, 0, 1]
    assert not any(e.terminals.any() for e in iter_episodes(path, ["robot0_eef_pos"], "train", "none"))
    replay, _ = load_replay(path, ["robot0_eef_pos"], 0.5, RewardConfig(scale=1.0, bias=-1.0))
    np.testing.assert_allclose(replay.data["mc_returns"][:3], [-1 - 0.5, -1, 0])
    np.testing.assert_allclose(replay.data["mc_returns"][3:], np.full(5, -2.0))


def test_episode_boundaries_split_inside_a_demo(tmp_path):
    path = tmp_path / "concatenated.hdf5"
    eef = np.arange(18, dtype=np.float64).reshape(6, 3)
    _write_robomimic_style(path, {"demo_0": (eef, np.zeros((6, 7)), np.zeros(6), np.zeros(6))}, with_next_obs=True)
    with h5py.File(path, "r+") as f:  # two episodes of 3 steps stored back to back
        next_obs = f["data/demo_0/next_obs/robot0_eef_pos"]
        next_obs[2] = [-1, -1, -1]
    stats = LoaderStats()
    episodes = list(iter_episodes(path, ["robot0_eef_pos"], "train", stats=stats))
    assert [len(e) for e in episodes] == [3, 3] and stats.split_episodes == 1
    assert all(e.timeouts[-1] for e in episodes)


def test_unknown_key_lists_the_file_keys(small_dataset):
    with pytest.raises(ValueError, match=r"\['robot0_eye_in_hand_image'\] not found; the file has: \['agentview_image', 'object'"):
        load_replay(small_dataset, ["robot0_eye_in_hand_image"], 0.99, RewardConfig())


def test_actions_outside_the_unit_box_are_rejected(tmp_path):
    path = tmp_path / "bad_actions.hdf5"
    eef = np.zeros((3, 3))
    _write_robomimic_style(path, {"demo_0": (eef, np.full((3, 7), 1.5), np.zeros(3), np.zeros(3))})
    with pytest.raises(ValueError, match=r"exceed \[-1, 1\]"):
        list(iter_episodes(path, ["robot0_eef_pos"]))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset file not found"):
        list(iter_episodes(tmp_path / "nope.hdf5", KEYS))
    corrupt = tmp_path / "corrupt.hdf5"
    corrupt.write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        list(iter_episodes(corrupt, KEYS))
    with pytest.raises(ValueError, match="unknown terminals rule"):
        list(iter_episodes(corrupt, KEYS, terminals="sometimes"))
