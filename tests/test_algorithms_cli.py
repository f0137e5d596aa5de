"""Each registered algorithm through the real CLIs and simulator: pretrain, fine-tune from
its own checkpoint, export."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from policy.algorithms import REGISTRY
from policy.checkpoint import load_checkpoint, restore_agent

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"calql": ["algo.cql_num_actions=2", "algo.backup_num_actions=2"], "cql": ["algo.cql_num_actions=2", "algo.backup_num_actions=2"]}


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{module} {args}:\n{result.stderr[-3000:]}"
    return result


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_pretrain_finetune_export(name, small_dataset, tmp_path):
    pretrained, finetuned, exported = tmp_path / "pretrain", tmp_path / "finetune", tmp_path / "policy.pt"
    _run("policy.pretrain", f"algo={name}", "algo.hidden_dim=32", *SMALL.get(name, []), "dataset=pickplace_lowdim",
         f"dataset.path={small_dataset}", "steps=4", "eval_every=4", "eval_episodes=1", "eval_workers=1",
         "checkpoint_every=4", "batch_size=16", "log_every=2", "calibration_states=16", f"hydra.run.dir={pretrained}")
    # AWAC fine-tunes on one buffer of offline and online data, as in its own protocol
    sampling = "sampling=uniform" if name == "awac" else "sampling=mixed"
    _run("policy.finetune", f"checkpoint={pretrained / 'checkpoint.pt'}", f"dataset.path={small_dataset}", sampling,
         "env_steps=200", "eval_every=200", "checkpoint_every=200", "eval_episodes=1", "eval_workers=1", "num_envs=2",
         "batch_size=16", "log_every=20", "video=false", f"hydra.run.dir={finetuned}")
    checkpoint = load_checkpoint(finetuned / "checkpoint.pt")
    assert checkpoint.algo == checkpoint.config["algo"]["name"] == name
    assert checkpoint.env_steps >= 200 and checkpoint.updates == checkpoint.stage_state["online_buffer"]["size"]
    with open(finetuned / "eval.csv") as f:
        first = next(csv.DictReader(f))
    assert int(first["step"]) == 0 and float(first["success_rate"]) in (0.0, 1.0)  # one episode: it succeeded or not
    # the share of online rows in the batches: exactly half when mixed, the buffers' sizes when uniform
    with open(finetuned / "train.csv") as f:
        shares = [float(row["online_share"]) for row in csv.DictReader(f)]
    assert shares and (all(share == 0.5 for share in shares) if name != "awac" else all(0.0 < share < 1.0 for share in shares))
    _run("policy.export", f"checkpoint={finetuned / 'checkpoint.pt'}", f"out={exported}")
    policy = torch.jit.load(str(exported))
    agent = restore_agent(checkpoint).eval()
    rng = np.random.default_rng(0)
    obs = {k: rng.normal(size=(5, *checkpoint.obs_spec[k]["shape"])).astype(np.float32) for k in policy.obs_keys()}
    np.testing.assert_allclose(policy([torch.from_numpy(obs[k]) for k in policy.obs_keys()]).numpy(), agent.act(obs), atol=1e-5)
