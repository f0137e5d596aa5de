"""policy.calibration: a checkpoint's critic against the MC returns of any dataset's states,
computed with the checkpoint's own discount and rewards."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.offline import load_replay
from datasets.returns import RewardConfig
from policy.calibration import CalibrationConfig, checkpoint_calibration
from policy.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def _expected_mc_mean(checkpoint: dict, dataset: Path, gamma: float, states: int, seed: int) -> float:
    reward = RewardConfig(**checkpoint.config["dataset"]["reward"])
    replay, _ = load_replay(dataset, sorted(checkpoint.obs_spec), gamma, reward, None,
                            checkpoint.config["dataset"]["terminals"], 48)
    index = np.random.default_rng(seed).integers(0, len(replay), size=states)
    return float(torch.as_tensor(replay.gather(index, gamma).mc_returns).mean())


def test_returns_follow_the_checkpoint_discount(trained, small_dataset, tmp_path):
    checkpoint = load_checkpoint(trained)
    figures = checkpoint_calibration(CalibrationConfig(checkpoint=str(trained), dataset_file=str(small_dataset),
                                                       filter_key=None, states=64, seed=3))
    assert figures["gamma"] == checkpoint.config["algo"]["gamma"] == 0.99
    assert figures["mc_return"] == pytest.approx(_expected_mc_mean(checkpoint, small_dataset, 0.99, 64, 3), rel=1e-5)
    assert figures["q_policy_minus_mc"] == pytest.approx(figures["q_policy"] - figures["mc_return"], abs=1e-3)

    # the same weights trained at another discount: the returns change with it
    checkpoint.config["algo"]["gamma"] = 0.5
    other = tmp_path / "gamma05.pt"
    save_checkpoint(other, checkpoint)
    halved = checkpoint_calibration(CalibrationConfig(checkpoint=str(other), dataset_file=str(small_dataset),
                                                      filter_key=None, states=64, seed=3))
    assert halved["mc_return"] == pytest.approx(_expected_mc_mean(checkpoint, small_dataset, 0.5, 64, 3), rel=1e-5)
    assert halved["mc_return"] > figures["mc_return"]  # fewer steps of -10 count at gamma 0.5
    assert halved["q_data"] == pytest.approx(figures["q_data"], rel=1e-5)  # same critic


def _calibration(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "policy.calibration", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_prints_and_writes_the_figures(trained, small_dataset, tmp_path):
    out = tmp_path / "calibration.json"
    result = _calibration(f"checkpoint={trained}", f"dataset_file={small_dataset}", "filter_key=null", "states=32", f"out={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert f"q_data_mc_corr: {figures['q_data_mc_corr']:.4g}" in result.stdout
    assert figures["states"] == 32 and figures["filter_key"] is None


@pytest.mark.parametrize("args, message", [
    (["dataset_file=/nonexistent.hdf5"], "error: dataset file not found: /nonexistent.hdf5"),
    (["states=1"], "error: states must be at least 2"),
    (["filter_key=no_such_split"], "no_such_split"),
])
def test_cli_bad_input_is_one_line(trained, small_dataset, args, message):
    result = _calibration(f"checkpoint={trained}", f"dataset_file={small_dataset}", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_rollouts_score_the_critic_against_the_policy_s_own_returns(trained, small_dataset):
    checkpoint = load_checkpoint(trained)
    figures = checkpoint_calibration(CalibrationConfig(checkpoint=str(trained), dataset_file=str(small_dataset), filter_key=None,
                                                       states=16, rollout_episodes=2, workers=1))
    assert figures["rollout_success_rate"] == 0.0  # a policy of three updates never succeeds
    # so every visited state's return is the failure value, over two full-length episodes
    reward, gamma = checkpoint.config["dataset"]["reward"], figures["gamma"]
    assert figures["rollout_mc_return"] == pytest.approx(reward["bias"] / (1 - gamma), rel=1e-5)
    assert figures["rollout_states"] == 2 * 45
    assert figures["rollout_q_policy_minus_mc"] == pytest.approx(figures["rollout_q_policy"] - figures["rollout_mc_return"], abs=1e-3)
