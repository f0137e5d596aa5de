import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from datasets.offline import RewardConfig
from datasets.replay import ReplayBuffer
from datasets.returns import episode_mc_returns
from policy import checkpoint as checkpoint_module
from policy.checkpoint import load_checkpoint, save_checkpoint
from policy.config import FinetuneConfig
from policy.finetune import Workspace, mixed_batch
from sim.faults import FaultTolerantEnv

ROOT = Path(__file__).resolve().parent.parent
FAST = ["num_envs=2", "batch_size=16", "eval_episodes=2", "eval_workers=1", "log_every=10"]


def _finetune(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "policy.finetune", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, **kwargs)


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_cli_smoke_from_a_pretrained_checkpoint(trained, small_dataset, tmp_path):
    run_dir = tmp_path / "run"
    result = _finetune(f"checkpoint={trained}", "env_steps=200", "eval_every=100", "checkpoint_every=100",
                       "actor_bc_weight=0.5", f"dataset.path={small_dataset}", f"hydra.run.dir={run_dir}", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    evals = _rows(run_dir / "eval.csv")
    assert [int(r["step"]) for r in evals] == [100, 200]
    assert {"success_rate", "return", "episode_length", "cumulative_regret"} <= set(evals[0])
    videos = sorted((run_dir / "videos").glob("*.mp4"))
    assert len(videos) == 2 and all(v.stat().st_size > 1000 for v in videos)
    episodes = _rows(run_dir / "episodes.csv")
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    counters = checkpoint["counters"]
    assert counters["env_steps"] == 200 and counters["episodes"] == len(episodes) >= 4
    # one update per transition of every finished episode (UTD 1), all of them in the buffer
    assert counters["updates"] == checkpoint["online_buffer"]["size"] == sum(int(r["length"]) for r in episodes)
    assert checkpoint["config"]["algo"]["calibrated"] is True  # Cal-QL stays calibrated
    # the actor's BC term, switched on from the command line
    assert {"bound_rate", "bc_mse", "env_steps", "sim_seconds", "learn_seconds"} <= set(_rows(run_dir / "train.csv")[0])


def test_sac_from_scratch_runs_through_the_same_loop(tmp_path):
    run_dir = tmp_path / "run"
    result = _finetune("env_steps=100", "eval_every=100", "checkpoint_every=100", "offline_data=false", "video=false",
                       "algo.hidden_dim=32", "encoder.channels=[8,8]", f"hydra.run.dir={run_dir}", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    assert checkpoint["algo"] == "sac" and checkpoint["counters"]["updates"] > 0


def test_resume_after_sigkill(trained, small_dataset, tmp_path):
    run_dir = tmp_path / "run"
    args = [f"checkpoint={trained}", "env_steps=300", "eval_every=1000", "checkpoint_every=40", "video=false",
            f"dataset.path={small_dataset}", f"hydra.run.dir={run_dir}", *FAST]
    process = subprocess.Popen([sys.executable, "-m", "policy.finetune", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (run_dir / "checkpoint.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGKILL)  # the trainer and its env workers, mid-run
    process.wait()
    killed_at = load_checkpoint(run_dir / "checkpoint.pt")["counters"]["env_steps"]
    assert 0 < killed_at < 300

    result = _finetune(*args, "resume=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from env step {killed_at}" in result.stdout
    final = load_checkpoint(run_dir / "checkpoint.pt")
    counters = final["counters"]
    assert counters["env_steps"] >= 300
    assert counters["updates"] == final["online_buffer"]["size"]  # buffer and optimiser steps restored together


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    result = _finetune("resume=true", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "no checkpoint to resume" in result.stderr


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "weights": torch.ones(3)})

    def dying_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the write

    monkeypatch.setattr(checkpoint_module.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2, "weights": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def _filled_buffer(action_value: float, size: int) -> ReplayBuffer:
    spec = {"x": {"shape": [2], "dtype": "float32"}}
    buffer = ReplayBuffer(spec, 1, size, 2 * size)
    zeros = np.zeros(size, np.float32)
    buffer.add_episode({"x": np.zeros((size, 2), np.float32)}, {"x": np.zeros((size, 2), np.float32)},
                       actions=np.full((size, 1), action_value, np.float32), rewards=zeros, terminals=zeros,
                       timeouts=zeros, mc_returns=zeros)
    return buffer


@pytest.mark.parametrize("ratio, offline_count", [(0.5, 128), (0.25, 64), (0.0, 0), (1.0, 256)])
def test_mixing_ratio_is_honoured(ratio, offline_count):
    offline, online = _filled_buffer(1.0, 50), _filled_buffer(-1.0, 50)
    batch = mixed_batch(offline, online, 256, ratio, np.random.default_rng(0))
    assert batch["actions"].shape == (256, 1) and batch["obs"]["x"].shape == (256, 2)
    assert int((batch["actions"] == 1.0).sum()) == offline_count
    empty_online = ReplayBuffer({"x": {"shape": [2], "dtype": "float32"}}, 1, 10, 20)
    assert (mixed_batch(offline, empty_online, 32, ratio, np.random.default_rng(0))["actions"] == 1.0).all()


def test_online_episodes_get_mc_returns(trained, tmp_path):
    config = FinetuneConfig(checkpoint=str(trained), offline_data=False, env_steps=100)
    config.dataset.reward = RewardConfig(scale=2.0, bias=-3.0)  # the checkpoint's units win
    pretrained = RewardConfig(**load_checkpoint(trained)["config"]["dataset"]["reward"])
    workspace = Workspace(config, tmp_path)
    try:
        assert workspace.reward == pretrained
        obs = {k: np.zeros(v["shape"], np.uint8 if v["dtype"] == "uint8" else np.float32) for k, v in workspace.obs_spec.items()}
        success = {"obs": [obs] * 3, "next_obs": [obs] * 3, "actions": [np.zeros(4)] * 3,
                   "rewards": [0.0, 0.0, 1.0], "terminals": [False, False, True]}
        failure = {**success, "rewards": [0.0] * 3, "terminals": [False] * 3}
        assert workspace._finish_episode(success, success=True, fault=False) == 3
        workspace._finish_episode(failure, success=False, fault=True)
        gamma = workspace.agent.config.gamma
        scale, bias = pretrained.scale, pretrained.bias
        expected = np.concatenate([episode_mc_returns(np.array([0, 0, 1.0]), np.array([0, 0, 1]), gamma, scale, bias, True),
                                   np.full(3, bias / (1 - gamma))])
        np.testing.assert_allclose(workspace.online.data["mc_returns"][:6], expected, rtol=1e-6)
        np.testing.assert_array_equal(workspace.online.data["timeouts"][:6], [0, 0, 0, 0, 0, 1])
        assert workspace.faults == 1 and workspace.episodes == 2
    finally:
        workspace.close()
    assert [r["sim_fault"] for r in _rows(tmp_path / "episodes.csv")] == ["0.0", "1.0"]


class _BrokenEnv(gym.Env):
    observation_space = gym.spaces.Dict({"x": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)})
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def __init__(self, failure: str) -> None:
        self.failure, self.steps = failure, 0

    def reset(self, *, seed=None, options=None):
        self.steps = 0
        return {"x": np.zeros(2, np.float32)}, {}

    def step(self, action):
        self.steps += 1
        if self.steps == 2 and self.failure == "raise":
            raise RuntimeError("physics diverged")
        value = np.nan if self.steps == 2 and self.failure == "nan" else 1.0
        return {"x": np.full(2, value, np.float32)}, 0.0, False, False, {"is_success": False}


@pytest.mark.parametrize("failure", ["raise", "nan"])
def test_sim_faults_end_the_episode_as_truncated(failure):
    env = FaultTolerantEnv(_BrokenEnv(failure))
    env.reset()
    obs, _, terminated, truncated, info = env.step(np.zeros(1))
    assert not truncated and info["sim_fault"] is False
    obs, reward, terminated, truncated, info = env.step(np.zeros(1))
    assert truncated and not terminated and reward == 0.0 and info["sim_fault"] is True
    np.testing.assert_array_equal(obs["x"], [1.0, 1.0])  # the last good observation


def test_incompatible_checkpoint_is_rejected_before_any_work(trained, tmp_path):
    run_dir = tmp_path / "run"
    result = _finetune(f"checkpoint={trained}", "+env.kwargs.image_size=32", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert "image size mismatch for 'agentview_image': checkpoint [48, 48, 3], env 'pickplace' [32, 32, 3]" in result.stderr
    assert not (run_dir / "checkpoint.pt").exists()
    result = _finetune(f"checkpoint={tmp_path / 'missing.pt'}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2 and "checkpoint not found" in result.stderr
