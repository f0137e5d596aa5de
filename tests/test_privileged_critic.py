"""The asymmetric critic: ``algo.privileged_keys`` are read by the critic only, never by the
actor or the exported policy; ``algo.critic_reads_images=false`` leaves the camera to the actor."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.replay import Batch, obs_spec_of
from perception.encoders import EncoderConfig
from policy.algorithms import REGISTRY, make_agent
from policy.checkpoint import agent_checkpoint, load_checkpoint, save_checkpoint
from policy.export import export_policy

ROOT = Path(__file__).resolve().parent.parent
ENCODER = EncoderConfig(channels=[4, 4], feature_dim=8)
ASYMMETRIC = ["calql", "cql", "sac"]


def _batch(seed: int = 0, size: int = 8) -> Batch:
    rng = np.random.default_rng(seed)

    def obs():
        return {"agentview_image": rng.integers(0, 256, (size, 24, 24, 3), dtype=np.uint8),
                "robot0_eef_pos": rng.normal(size=(size, 3)).astype(np.float32),
                "object": rng.normal(size=(size, 10)).astype(np.float32)}

    return Batch(obs=obs(), next_obs=obs(), actions=rng.uniform(-1, 1, (size, 4)).astype(np.float32),
                 rewards=rng.normal(size=size).astype(np.float32), terminals=np.zeros(size, np.float32),
                 timeouts=np.zeros(size, np.float32), mc_returns=rng.normal(size=size).astype(np.float32),
                 discounts=np.full(size, 0.99, np.float32), online=(np.arange(size) % 2).astype(np.float32))


def _config(name: str, **overrides):
    values = {"hidden_dim": 16, "privileged_keys": ["object"], **overrides}
    if name != "sac":
        values.update(cql_num_actions=2, backup_num_actions=2)
    return REGISTRY[name].config(**values)


def _parameters(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("critic_reads_images", [True, False])
@pytest.mark.parametrize("name", ASYMMETRIC)
def test_actor_never_reads_the_privileged_keys(name, critic_reads_images, tmp_path):
    torch.manual_seed(0)
    batch = _batch()
    spec = obs_spec_of(batch.obs)
    config = _config(name, critic_reads_images=critic_reads_images)
    agent = make_agent(config, spec, 4, ENCODER)
    assert agent.policy_obs_keys == ["agentview_image", "robot0_eef_pos"]
    assert "object" in agent.encoder.lowdim_keys
    assert agent.encoder.image_keys == (["agentview_image"] if critic_reads_images else [])
    before = {"critic encoder": _parameters(agent.encoder), "actor encoder": _parameters(agent.actor_encoder)}
    for _ in range(2):
        metrics = agent.update(batch)
        assert all(torch.isfinite(value) for value in metrics.values())
    after = {"critic encoder": agent.encoder, "actor encoder": agent.actor_encoder}
    for part, parameters in before.items():
        changed = any(not torch.equal(b, p) for b, p in zip(parameters, after[part].parameters()))
        # a critic encoder of low-dimensional keys only has no weights (standardisation only)
        assert changed or (part == "critic encoder" and not critic_reads_images), part

    # the policy's actions do not depend on the privileged state; the critic's values do
    shuffled = {**batch.obs, "object": batch.obs["object"][::-1].copy()}
    np.testing.assert_array_equal(agent.act(batch.obs), agent.act(shuffled))
    assert not np.allclose(agent.q_values(batch.obs, batch.actions), agent.q_values(shuffled, batch.actions))

    # exported: the policy's inputs only, the same actions as the eager policy
    checkpoint = tmp_path / "checkpoint.pt"
    save_checkpoint(checkpoint, agent_checkpoint(agent, spec, {"name": "pickplace", "kwargs": {"image_size": 24}}))
    written = export_policy(checkpoint, tmp_path / "policy.pt")
    policy = torch.jit.load(str(written["torchscript"]))
    assert policy.obs_keys() == ["agentview_image", "robot0_eef_pos"]
    with zipfile.ZipFile(written["torchscript"]) as archive:
        metadata = json.loads(archive.read(next(n for n in archive.namelist() if n.endswith("metadata.json"))))
    assert [item["key"] for item in metadata["inputs"]] == metadata["obs_keys"] == ["agentview_image", "robot0_eef_pos"]
    exported = policy([torch.from_numpy(batch.obs[k]) for k in policy.obs_keys()]).numpy()
    np.testing.assert_allclose(exported, agent.eval().act(batch.obs), atol=1e-5)


@pytest.mark.parametrize("name", ["iql", "awac", "td3bc"])
@pytest.mark.parametrize("setting", [{"privileged_keys": ["object"]}, {"critic_reads_images": False}])
def test_algorithms_whose_actor_reads_the_critic_features_refuse_it(name, setting):
    config = REGISTRY[name].config(hidden_dim=16, **setting)
    with pytest.raises(ValueError, match=f"not supported by algo '{name}'"):
        make_agent(config, obs_spec_of(_batch().obs), 4, ENCODER)


@pytest.mark.parametrize("overrides, message", [
    ({"privileged_keys": ["wrist_state"]}, r"algo.privileged_keys \['wrist_state'\] are not observations"),
    ({"privileged_keys": ["agentview_image", "robot0_eef_pos", "object"]}, "leaves the policy no observation"),
])
def test_privileged_keys_must_leave_the_policy_something_and_exist(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_agent(_config("calql", **overrides), obs_spec_of(_batch().obs), 4, ENCODER)


def test_critic_without_images_needs_a_low_dimensional_key():
    spec = {"agentview_image": {"shape": [24, 24, 3], "dtype": "uint8"}}
    with pytest.raises(ValueError, match="critic_reads_images=false leaves the critic no observation"):
        make_agent(_config("calql", privileged_keys=[], critic_reads_images=False), spec, 4, ENCODER)


def _pretrain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "policy.pretrain", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


FAST = ["steps=4", "eval_every=4", "eval_episodes=1", "eval_workers=1", "batch_size=16", "log_every=2",
        "checkpoint_every=4", "calibration_states=16", "algo.cql_num_actions=2", "algo.backup_num_actions=2"]


def test_cli_pretrains_an_asymmetric_critic_and_records_it(small_dataset, tmp_path):
    run_dir = tmp_path / "run"
    result = _pretrain(f"dataset.path={small_dataset}", "algo.privileged_keys=[object]", "algo.critic_reads_images=false",
                       f"hydra.run.dir={run_dir}", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    # loaded besides dataset.obs_keys, which stay the policy's
    assert set(checkpoint.obs_spec) == {"agentview_image", "robot0_eef_pos", "robot0_gripper_qpos", "object"}
    assert checkpoint.config["algo"]["privileged_keys"] == ["object"]
    assert checkpoint.config["algo"]["critic_reads_images"] is False
    assert "privileged_keys:\n  - object" in (run_dir / "config.yaml").read_text()
    written = export_policy(run_dir / "checkpoint.pt", tmp_path / "policy.pt")
    assert torch.jit.load(str(written["torchscript"])).obs_keys() == ["agentview_image", "robot0_eef_pos", "robot0_gripper_qpos"]


def test_cli_refuses_privileged_keys_for_iql_in_one_line(small_dataset, tmp_path):
    result = _pretrain(f"dataset.path={small_dataset}", "algo=iql", "algo.privileged_keys=[object]",
                       f"hydra.run.dir={tmp_path / 'run'}", *FAST[:-2])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "algo.privileged_keys and algo.critic_reads_images=false are not supported by algo 'iql'" in result.stderr
