import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from policy.agent import NonFiniteLossError
from policy.calql import CalQLConfig
from policy.checkpoint import load_checkpoint
from policy.config import DatasetConfig, PretrainConfig
from policy.pretrain import Workspace

ROOT = Path(__file__).resolve().parent.parent
FAST = ["steps=6", "eval_every=3", "eval_episodes=2", "eval_workers=2", "batch_size=16", "log_every=2",
        "checkpoint_every=3", "calibration_states=32", "algo.cql_num_actions=3", "algo.backup_num_actions=2"]


def _pretrain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "policy.pretrain", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_cli_smoke_through_the_simulator(small_dataset, tmp_path):
    run_dir = tmp_path / "run"
    result = _pretrain(f"dataset.path={small_dataset}", f"hydra.run.dir={run_dir}", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "final success rate" in result.stdout
    for name in ("config.yaml", "train.csv", "eval.csv", "checkpoint.pt", ".hydra/config.yaml"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "tb").iterdir())
    with open(run_dir / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [3, 6]
    # two evaluation episodes per point: 0, 1/2 or 1
    assert all(float(r["success_rate"]) in (0.0, 0.5, 1.0) for r in rows) and "q_policy_minus_mc" in rows[0]
    with open(run_dir / "train.csv") as f:
        train = list(csv.DictReader(f))
    assert len(train) == 3 and {"bound_rate", "cql_gap", "entropy", "critic_grad_norm"} <= set(train[0])
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)  # plain tensors and Python values
    assert checkpoint["updates"] == 6 and checkpoint["env_steps"] == 0 and checkpoint["stage"] == "pretrain"
    assert checkpoint["algo"] == "calql" and checkpoint["obs_spec"]["agentview_image"] == {"shape": [48, 48, 3], "dtype": "uint8"}
    assert checkpoint["config"]["algo"]["name"] == "calql" and checkpoint["env"]["name"] == "pickplace"
    assert {"critic", "actor"} <= set(checkpoint["agent"]["optimizers"]) and "torch" in checkpoint["rng"]
    best = load_checkpoint(run_dir / "best.pt")  # the first evaluation with the highest success rate
    best_rate = max(float(r["success_rate"]) for r in rows)
    first_best_step = next(int(r["step"]) for r in rows if float(r["success_rate"]) == best_rate)
    assert best.updates == first_best_step and best.eval["success_rate"] == best_rate


def test_cli_cql_in_low_dimensional_mode(small_dataset, tmp_path):
    run_dir = tmp_path / "run"
    result = _pretrain("algo=cql", "dataset=pickplace_lowdim", f"dataset.path={small_dataset}", "algo.policy_average_tau=0.05",
                       f"hydra.run.dir={run_dir}", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    assert checkpoint.algo == "cql" and checkpoint.config["algo"]["name"] == "cql"
    assert set(checkpoint.obs_spec) == {"robot0_eef_pos", "robot0_gripper_qpos", "object"}
    with open(run_dir / "train.csv") as f:
        columns = next(csv.reader(f))
    # CQL has no Monte-Carlo bound, but reports how many policy actions it would lift
    assert "cql_gap" in columns and "bound_rate" in columns
    with open(run_dir / "eval.csv") as f:
        evals = list(csv.DictReader(f))
    # with a policy average, every evaluation scores the average and the trained weights (by default)
    assert evals and all(row["policy_average"] == "1.0" and row["trained_success_rate"] != "" for row in evals)
    assert all(0.0 <= float(row["q_policy_below_mc"]) <= 1.0 for row in evals)


@pytest.mark.parametrize(
    "args, message",
    [
        (["dataset.path=/nonexistent/data.hdf5"], "error: dataset file not found: /nonexistent/data.hdf5"),
        (["dataset.obs_keys=[agentview_image,wrist_image]"], "['wrist_image'] not found; the file has: ['agentview_image', 'object', "),
        (["cuda_graphs=true"], "error: cuda_graphs=true replays the compiled networks; set compile=true as well"),
        (["compile=true", "cuda_graphs=true", "device=cpu"], "error: cuda_graphs=true needs a CUDA device, this run trains on cpu; drop cuda_graphs"),
        (["env.kwargs.image_size=32"], "error: image size mismatch for 'agentview_image': dataset [48, 48, 3], env 'pickplace' [32, 32, 3]; set env.kwargs.image_size=48"),
    ],
)
def test_cli_bad_input_fails_before_training(small_dataset, tmp_path, args, message):
    result = _pretrain(f"dataset.path={small_dataset}", f"hydra.run.dir={tmp_path / 'run'}", *FAST, *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_cli_without_offscreen_rendering_fails_before_any_work(small_dataset, tmp_path):
    environment = {key: value for key, value in os.environ.items() if key != "DISPLAY"}
    result = subprocess.run([sys.executable, "-m", "policy.pretrain", f"dataset.path={small_dataset}",
                             f"hydra.run.dir={tmp_path / 'run'}", *FAST], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env={**environment, "MUJOCO_GL": "glfw"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: offscreen rendering does not work here (MUJOCO_GL=glfw)" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run" / "train.csv").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["algo=bc"], "error: unknown algorithm 'bc'; registered: awac, calql, cql, iql, sac, td3bc\n"),
        (["-m", "algo=calql,bc"], "error: unknown algorithm 'bc'; registered: awac, calql, cql, iql, sac, td3bc\n"),
        (["algo=cql", "algo.name=calql"], "error: algo.name=calql contradicts the CQLConfig settings it came with; "
                                          "select the algorithm with algo=calql instead\n"),
    ],
)
def test_cli_unknown_or_contradicting_algorithm_is_one_line_before_work(tmp_path, args, message):
    result = _pretrain(*args, f"hydra.run.dir={tmp_path / 'run'}", "dataset.path=/nonexistent.hdf5")
    assert result.returncode == 2 and result.stderr.endswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_cli_field_of_another_algorithm_is_rejected(tmp_path):
    result = _pretrain("algo=iql", "algo.cql_alpha=5", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0 and "Key 'cql_alpha' not in 'IQLConfig'" in result.stderr


def test_presets_compose_for_every_algorithm():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from policy.algorithms import REGISTRY

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        for name, algorithm in REGISTRY.items():
            cpu = OmegaConf.to_object(compose("pretrain", overrides=[f"algo={name}"]))
            paper = OmegaConf.to_object(compose("pretrain", overrides=[f"algo={name}", "preset=paper"]))
            assert type(cpu.algo) is type(paper.algo) is algorithm.config and paper.steps == 500000
            # the paper preset runs every algorithm's reference values
            assert paper.algo == algorithm.config()
            # the CPU budget deviates only for the conservative SAC family (configs/preset_algo)
            assert (cpu.algo != algorithm.config()) == (name in ("calql", "cql"))
        assert OmegaConf.to_object(compose("pretrain")).algo.actor_bc_weight == 0.4


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(small_dataset, tmp_path):
    config = PretrainConfig(dataset=DatasetConfig(path=str(small_dataset)), algo=CalQLConfig(cql_num_actions=2, backup_num_actions=2),
                            steps=4, eval_every=100, checkpoint_every=2, eval_episodes=2, batch_size=8, log_every=1,
                            calibration_states=8)
    workspace = Workspace(config, tmp_path)
    try:
        workspace.cfg.eval_every = 10**6  # no sim episodes needed here
        workspace.cfg.steps = 2
        workspace.train()
        saved = (tmp_path / "checkpoint.pt").read_bytes()
        workspace.replay.data["rewards"][:] = np.nan
        workspace.cfg.steps = 4
        with pytest.raises(NonFiniteLossError, match=r"non-finite critic_loss(, \w+)* in update 3$"):
            workspace.train()
    finally:
        workspace.close()
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved
    assert load_checkpoint(tmp_path / "checkpoint.pt").updates == 2


def test_missing_default_dataset_is_generated_first(tmp_path, monkeypatch):
    import dataclasses

    import sim.collect

    target = tmp_path / "data" / "pickplace.hdf5"
    monkeypatch.setitem(sim.collect.DEFAULT_DATASETS, "pickplace", target)
    # the real collector, made small: 4 episodes in one worker
    real_collect = sim.collect.collect
    monkeypatch.setattr(sim.collect, "collect", lambda config: real_collect(dataclasses.replace(config, episodes=4, workers=1)))
    assert DatasetConfig().file() == target
    assert target.is_file()
    with pytest.raises(ValueError, match="has no default file"):
        DatasetConfig(name="robomimic").file()
