import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import sim
from datasets.offline import DemoFile
from datasets.episode import Episode
from datasets.robomimic_hdf5 import demo_names, write_dataset
from sim.collect import CollectConfig, collect

ROOT = Path(__file__).resolve().parent.parent


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sim.collect", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "small.hdf5"
    result = _run_cli("episodes=6", "workers=2", "seed=3", f"out={out}")
    assert result.returncode == 0, result.stderr
    assert "6 episodes" in result.stdout
    return out


def test_file_has_robomimic_schema(collected):
    with h5py.File(collected, "r") as f:
        names = demo_names(f)
        assert names == [f"demo_{i}" for i in range(6)]
        total = 0
        for name in names:
            demo = f[f"data/{name}"]
            steps = int(demo.attrs["num_samples"])
            total += steps
            assert set(demo["obs"]) == set(demo["next_obs"]) == {"agentview_image", "robot0_eef_pos", "robot0_gripper_qpos", "object"}
            image = demo["obs/agentview_image"]
            assert image.dtype == np.uint8 and image.shape == (steps, 48, 48, 3)
            assert image.compression == "gzip" and image.chunks is not None
            assert demo["actions"].shape == (steps, 4) and np.all(np.abs(demo["actions"][()]) <= 1)
            assert demo["rewards"].shape == demo["dones"].shape == (steps,)
            assert demo["states"].ndim == 2 and demo["states"].shape[0] == steps
            # next_obs is the following obs within an episode
            for key in demo["obs"]:
                np.testing.assert_array_equal(demo[f"next_obs/{key}"][:-1], demo[f"obs/{key}"][1:])
            dones, rewards = demo["dones"][()], demo["rewards"][()]
            if demo.attrs["success"]:
                assert dones[-1] == 1 and dones[:-1].sum() == 0 and rewards[-1] == 1.0
            else:
                assert dones.sum() == 0 and rewards.sum() == 0 and steps == 45
        assert f["data"].attrs["total"] == total
        train, valid = demo_names(f, "train"), demo_names(f, "valid")
        assert sorted(train + valid) == sorted(names) and len(valid) == 1 and not set(train) & set(valid)
    with DemoFile(collected) as data:
        env_args = data.env_args()
    assert env_args["env_name"] == "pickplace"
    assert env_args["env_kwargs"]["image_size"] == 48 and env_args["env_kwargs"]["horizon"] == 45
    env = sim.make_env(env_args["env_name"], **env_args["env_kwargs"])
    env.close()


def test_first_step_replays_from_stored_seed(collected):
    with h5py.File(collected, "r") as f:
        demo = f["data/demo_2"]
        env = sim.make_env("pickplace")
        try:
            obs, _ = env.reset(seed=int(demo.attrs["env_seed"]))
            np.testing.assert_array_equal(obs["agentview_image"], demo["obs/agentview_image"][0])
            np.testing.assert_allclose(env.unwrapped.get_state(), demo["states"][0])
            for t in range(5):
                obs, *_ = env.step(demo["actions"][t])
            np.testing.assert_allclose(obs["object"], demo["next_obs/object"][4], atol=1e-6)
        finally:
            env.close()


def test_collection_is_independent_of_worker_count(collected, tmp_path):
    out = tmp_path / "one_worker.hdf5"
    collect(CollectConfig(episodes=3, workers=1, seed=3, out=str(out)))
    with h5py.File(collected, "r") as a, h5py.File(out, "r") as b:
        for i in range(3):
            np.testing.assert_array_equal(a[f"data/demo_{i}/actions"][()], b[f"data/demo_{i}/actions"][()])
            np.testing.assert_array_equal(a[f"data/demo_{i}/obs/agentview_image"][()], b[f"data/demo_{i}/obs/agentview_image"][()])


def _tiny_episode(steps: int = 3) -> Episode:
    obs = {"x": np.zeros((steps, 2), np.float32)}
    return Episode(obs, obs, np.zeros((steps, 4), np.float32), np.zeros(steps, np.float32),
                   np.zeros(steps, bool), np.zeros((steps, 5)))


def test_interrupted_write_leaves_no_file(tmp_path):
    out = tmp_path / "broken.hdf5"

    def episodes():
        yield _tiny_episode()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_dataset(out, episodes(), {"env_name": "pickplace", "env_kwargs": {}})
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_the_previous_file(tmp_path):
    out = tmp_path / "kept.hdf5"
    write_dataset(out, [_tiny_episode(3)], {"env_name": "pickplace", "env_kwargs": {}})

    def episodes():
        yield _tiny_episode(7)
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        write_dataset(out, episodes(), {"env_name": "pickplace", "env_kwargs": {}})
    with h5py.File(out, "r") as f:
        assert f["data"].attrs["total"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["kept.hdf5"]


def test_mismatched_episode_arrays_are_rejected(tmp_path):
    episode = _tiny_episode(3)
    episode.rewards = np.zeros(2, np.float32)
    with pytest.raises(ValueError, match="rewards has 2 steps"):
        write_dataset(tmp_path / "bad.hdf5", [episode], {})


def test_cli_unknown_task_fails_with_one_line(tmp_path):
    result = _run_cli("task=stack", f"out={tmp_path / 'x.hdf5'}")
    assert result.returncode != 0
    assert "unknown task 'stack'; available tasks: can, lift, pickplace" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.hdf5").exists()


def test_cli_bad_env_argument_fails_with_one_line(tmp_path):
    result = _run_cli("+env.colour=red", f"out={tmp_path / 'x.hdf5'}")
    assert result.returncode != 0 and "bad env argument" in result.stderr and "colour" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_filter_key_lists_available(collected):
    with h5py.File(collected, "r") as f, pytest.raises(ValueError, match="available: \\['train', 'valid'\\]"):
        demo_names(f, "holdout")
