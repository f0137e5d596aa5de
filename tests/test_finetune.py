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

from omegaconf import OmegaConf

from datasets.episode import Episode
from datasets.returns import RewardConfig, episode_rewards_and_returns
from policy import checkpoint as checkpoint_module
from conftest import tiny_checkpoint
from policy.checkpoint import load_checkpoint, save_checkpoint
from policy.config import FinetuneConfig
from policy.finetune import Workspace
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
                       "algo.actor_bc_weight=0.5", "algo.policy_average_tau=0.1",
                       f"dataset.path={small_dataset}", f"hydra.run.dir={run_dir}", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    evals = _rows(run_dir / "eval.csv")
    # the starting point (before any online step), then every eval_every env steps
    assert [int(r["step"]) for r in evals] == [0, 100, 200]
    assert {"success_rate", "return", "episode_length", "cumulative_regret"} <= set(evals[1])
    # the policy average is evaluated; the trained weights too, on the same episodes (by default)
    assert {"trained_success_rate", "trained_return"} <= set(evals[1]) and evals[1]["policy_average"] == "1.0"
    # before any update there is no average yet: one policy, scored once
    assert evals[0]["policy_average"] == "0.0" and evals[0]["trained_success_rate"] == evals[0]["success_rate"]
    assert evals[0]["trained_return"] == ""
    assert evals[0]["cumulative_regret"] == "" and evals[0]["updates"] == "0"  # regret is fine-tuning's only
    assert float(evals[2]["cumulative_regret"]) == pytest.approx(1 - np.mean([float(r["success_rate"]) for r in evals[1:]]))
    # the calibration picture on held-out offline states and on recent online ones
    assert {"q_policy", "q_data", "mc_return", "q_data_mc_corr", "online_q_policy", "online_mc_return"} <= set(evals[1])
    videos = sorted((run_dir / "videos").glob("*.mp4"))
    assert len(videos) == 3 and all(v.stat().st_size > 1000 for v in videos)
    episodes = _rows(run_dir / "episodes.csv")
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    assert checkpoint.stage == "finetune" and checkpoint.env_steps == 200
    assert checkpoint.stage_state["counters"]["episodes"] == len(episodes) >= 4
    # one update per transition of every finished episode (UTD 1), all of them in the buffer
    assert checkpoint.updates == checkpoint.stage_state["online_buffer"]["size"] == sum(int(r["length"]) for r in episodes)
    assert checkpoint.algo == checkpoint.config["algo"]["name"] == "calql"  # Cal-QL stays calibrated
    recorded = OmegaConf.load(run_dir / "config.yaml")  # the run records what it trained
    assert recorded.algo.name == "calql" and recorded.algo.actor_bc_weight == 0.5 and recorded.algo.cql_num_actions == 2
    assert recorded.algo.policy_average_tau == 0.1
    assert any(key.startswith("policy_average.") for key in checkpoint.agent["model"])
    # the actor's BC term, switched on from the command line
    train = _rows(run_dir / "train.csv")
    assert {"bound_rate", "bc_mse", "bc_share", "env_steps", "sim_seconds", "learn_seconds"} <= set(train[0])
    # TD error split by the source of the transitions once both are in the batches
    assert any(row.get("td_loss_online") and row.get("td_loss_offline") for row in train)
    # the same command again would overwrite this run: refused before any work
    again = _finetune(f"checkpoint={trained}", f"hydra.run.dir={run_dir}", "env_steps=200")
    assert again.returncode == 2 and "already holds a run (checkpoint.pt, train.csv, eval.csv, episodes.csv)" in again.stderr
    assert load_checkpoint(run_dir / "checkpoint.pt").env_steps == 200


def test_offline_only_control_collects_but_never_trains_on_online_data(trained, small_dataset, tmp_path):
    run_dir = tmp_path / "run"
    result = _finetune(f"checkpoint={trained}", "env_steps=100", "eval_every=100", "checkpoint_every=100", "video=false",
                       "sampling=offline", "algo.policy_average_tau=0", f"dataset.path={small_dataset}",
                       f"hydra.run.dir={run_dir}", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    episodes = _rows(run_dir / "episodes.csv")
    # the same schedule as with online data: episodes collected, one update per transition
    assert checkpoint.updates == checkpoint.stage_state["online_buffer"]["size"] == sum(int(r["length"]) for r in episodes) > 0
    train = _rows(run_dir / "train.csv")
    assert train and all(float(row["online_share"]) == 0.0 for row in train)
    # no average: the evaluated policy is the trained weights, logged as such
    evals = _rows(run_dir / "eval.csv")
    assert all(row["policy_average"] == "0.0" and row["trained_success_rate"] == row["success_rate"] for row in evals)


def test_wsrl_recipe_warms_up_without_updates_then_trains_online_only_without_the_penalty(trained, tmp_path):
    run_dir = tmp_path / "run"
    result = _finetune(f"checkpoint={trained}", "env_steps=200", "warmup_env_steps=100", "utd=2", "offline_data=false",
                       "sampling=uniform", "algo.cql_alpha=0", "algo.alpha_lr=0.001", "algo.target_entropy=-8",
                       "algo.policy_average_tau=0", "eval_every=200",
                       "checkpoint_every=200", "video=false", f"hydra.run.dir={run_dir}", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    episodes = _rows(run_dir / "episodes.csv")
    # every episode enters the buffer; only those that end after the warm-up earn (two) updates each step
    assert checkpoint.stage_state["online_buffer"]["size"] == sum(int(r["length"]) for r in episodes)
    after_warmup = sum(int(r["length"]) for r in episodes if int(r["step"]) > 100)
    assert 0 < after_warmup < checkpoint.stage_state["online_buffer"]["size"]
    assert checkpoint.updates == 2 * after_warmup
    assert checkpoint.algo == "calql" and checkpoint.config["algo"]["cql_alpha"] == 0.0
    assert checkpoint.config["algo"]["alpha_lr"] == 0.001 and checkpoint.config["algo"]["target_entropy"] == -8.0
    recorded = OmegaConf.load(run_dir / "config.yaml")
    assert recorded.warmup_env_steps == 100 and recorded.algo.cql_alpha == 0.0 and recorded.offline_data is False
    assert recorded.algo.alpha_lr == 0.001 and recorded.algo.target_entropy == -8.0
    train = _rows(run_dir / "train.csv")
    assert train and all(float(row["cql_loss"]) == 0.0 and float(row["online_share"]) == 1.0 for row in train)


def test_sac_from_scratch_runs_through_the_same_loop(tmp_path):
    run_dir = tmp_path / "run"
    result = _finetune("env_steps=100", "eval_every=100", "checkpoint_every=100", "offline_data=false", "video=false",
                       "algo=sac", "algo.hidden_dim=32", "encoder=conv", "encoder.channels=[8,8]", f"hydra.run.dir={run_dir}", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    assert checkpoint.algo == "sac" and checkpoint.updates > 0
    assert checkpoint.config["algo"]["hidden_dim"] == 32 and checkpoint.config["encoder"]["channels"] == [8, 8]


def test_from_scratch_without_algo_is_sac_and_says_so(tmp_path):
    config = FinetuneConfig(offline_data=False, env_steps=10)
    workspace = Workspace(config, tmp_path)
    workspace.close()
    recorded = OmegaConf.load(tmp_path / "config.yaml")
    assert recorded.algo.name == "sac" and recorded.algo.entropy_backup is True and recorded.encoder.name == "conv"


@pytest.mark.parametrize("override, message", [
    ("algo=cql", "error: algo=... cannot be combined with a checkpoint, which brings its own (algo 'calql'); drop the algo override"),
    ("encoder=resnet18", "error: encoder=... cannot be combined with a checkpoint, which brings its own (encoder 'conv')"),
    ("sampling=half", "error: unknown sampling mode 'half'; available: mixed, uniform, offline"),
    ("sampling=offline offline_data=false", "error: sampling=offline (the offline-only control) trains on the offline data only, but offline_data=false"),
    ("sampling=mixed offline_data=false", "error: sampling=mixed draws mixing_ratio of every batch from the offline data, but offline_data=false"),
    ("sampling=mixed mixing_ratio=0", "error: sampling=mixed mixing_ratio=0 draws no offline rows; for online data only set offline_data=false"),
    ("algo.policy_average_tau=2", "error: algo.policy_average_tau must be in [0, 1], got 2.0"),
    ("algo.actor_bc_source=online", "error: algo.actor_bc_source must be one of all, offline, got 'online'"),
    ("algo.actor_lr=0", "error: algo.actor_lr must be > 0, got 0"),
    ("algo.gamma=0.9", "error: algo.gamma cannot change online: the checkpoint's critic and actor were trained with it; "
                       "fine-tuning may change algo.policy_average_tau, algo.actor_lr, algo.actor_bc_weight, algo.actor_bc_source, "
                       "algo.cql_alpha, algo.alpha_lr, algo.target_entropy"),
    ("algo.cql_alpha=-1", "error: algo.cql_alpha must be >= 0, got -1.0"),
    ("algo.alpha_lr=-1", "error: algo.alpha_lr must be >= 0 (0 holds the entropy coefficient), got -1.0"),
    ("warmup_env_steps=50 env_steps=50", "error: warmup_env_steps must be in [0, env_steps=50), got 50"),
    ("policy_average_tau=0", "error: policy_average_tau is a setting of the algorithm: write algo.policy_average_tau=0"),
    ("freeze_encoder=true checkpoint=null", "error: freeze_encoder=true keeps a pretrained encoder fixed, but this run trains from scratch"),
])
def test_overrides_a_checkpoint_would_ignore_are_refused(trained, tmp_path, override, message):
    result = _finetune(f"checkpoint={trained}", *override.split(), f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def _without_clock(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in rows]


def test_resume_after_sigkill_collects_what_an_uninterrupted_run_does(trained, small_dataset, tmp_path):
    args = [f"checkpoint={trained}", "env_steps=240", "eval_every=120", "checkpoint_every=40", "video=false",
            f"dataset.path={small_dataset}", *FAST]
    whole = _finetune(*args, f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]

    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "policy.finetune", *args, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (run_dir / "checkpoint.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGKILL)  # the trainer and its env workers, mid-run (mid-episode)
    process.wait()
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    killed_at = checkpoint.env_steps
    assert 0 < killed_at < 240
    # taken at an episode boundary: its counter is exactly the steps of the episodes it holds
    assert checkpoint.stage_state["online_buffer"]["size"] == killed_at

    result = _finetune(*args, f"hydra.run.dir={run_dir}", "resume=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from env step {killed_at}" in result.stdout
    final, reference = load_checkpoint(run_dir / "checkpoint.pt"), load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    assert (final.env_steps, final.updates, final.stage_state["counters"]) == (
        reference.env_steps, reference.updates, reference.stage_state["counters"])
    # the same episodes, updates and evaluations as the run that was never killed
    for log in ("episodes.csv", "eval.csv", "train.csv"):
        assert _without_clock(_rows(run_dir / log)) == _without_clock(_rows(tmp_path / "whole" / log)), log


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    result = _finetune("resume=true", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "no checkpoint to resume" in result.stderr


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, tiny_checkpoint(1, torch.ones(3)))

    def dying_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the write

    monkeypatch.setattr(checkpoint_module.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, tiny_checkpoint(2, torch.zeros(3)))
    monkeypatch.undo()
    assert load_checkpoint(path).updates == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_online_episodes_get_mc_returns(trained, tmp_path):
    config = FinetuneConfig(checkpoint=str(trained), offline_data=False, env_steps=100)
    config.dataset.reward = RewardConfig(scale=2.0, bias=-3.0)  # the checkpoint's units win
    pretrained = RewardConfig(**load_checkpoint(trained).config["dataset"]["reward"])
    workspace = Workspace(config, tmp_path)
    try:
        assert workspace.reward == pretrained
        obs = {k: np.zeros(v["shape"], np.uint8 if v["dtype"] == "uint8" else np.float32) for k, v in workspace.obs_spec.items()}
        stacked = {k: np.stack([v] * 3) for k, v in obs.items()}

        def episode(rewards: list[float], terminals: list[bool], attrs: dict) -> Episode:
            return Episode(stacked, stacked, np.zeros((3, 4), np.float32), np.array(rewards, np.float32), np.array(terminals), attrs=attrs)

        assert workspace._store(episode([0.0, 0.0, 1.0], [False, False, True], {"success": True, "sim_fault": False})) == 3
        workspace._store(episode([0.0] * 3, [False] * 3, {"success": False, "sim_fault": True}))
        gamma = workspace.agent.config.gamma
        bias = pretrained.bias
        expected = np.concatenate([episode_rewards_and_returns(np.array([0, 0, 1.0]), np.array([0, 0, 1]), gamma, pretrained)[1],
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
    result = _finetune(f"checkpoint={trained}", "env.kwargs.image_size=32", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert ("image size mismatch for 'agentview_image': checkpoint [48, 48, 3], env 'pickplace' [32, 32, 3]; "
            "set env.kwargs.image_size=48 (the env renders at the checkpoint's size)\n") in result.stderr
    assert not (run_dir / "checkpoint.pt").exists()
    result = _finetune(f"checkpoint={tmp_path / 'missing.pt'}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2 and "checkpoint not found" in result.stderr
