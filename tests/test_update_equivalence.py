"""The optimised update learns what a plain one learns: for every registered algorithm, one update
on a fixed batch gives the same losses, gradients and parameters as the same agent whose critic
and augmentation are plain reference implementations kept here (a per-head MLP on the
concatenated state features and action; padding and cropping each sample of float images)."""

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import perception.encoders
from datasets.replay import Batch, obs_spec_of
from perception.encoders import EncoderConfig
from policy.algorithms import REGISTRY, make_agent
from policy.calql import CQLConfig
from policy.networks import EnsembleCritic

ENCODER = EncoderConfig(channels=[4, 8], feature_dim=8, augment_pad=2)


def plain_critic_forward(critic: EnsembleCritic, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Each head on its own: Linear(cat(s, a)) -> ReLU -> Linear -> ReLU -> Linear, the state
    repeated for every action; (num_critics, B, N)."""
    batch, num_actions, _ = actions.shape
    inputs = torch.cat([features.unsqueeze(1).expand(-1, num_actions, -1), actions], dim=-1).reshape(batch * num_actions, -1)
    heads = []
    for head in range(critic.num_critics):
        first_weight = torch.cat([critic.w1_state[head], critic.w1_action[head]], dim=0)
        hidden = inputs @ first_weight + critic.b1[head]
        if critic.layer_norm:
            hidden = F.layer_norm(hidden, hidden.shape[-1:])
        hidden = torch.relu(hidden) @ critic.w2[head] + critic.b2[head]
        if critic.layer_norm:
            hidden = F.layer_norm(hidden, hidden.shape[-1:])
        heads.append((torch.relu(hidden) @ critic.w3[head] + critic.b3[head]).view(batch, num_actions))
    return torch.stack(heads)


def plain_random_shift(images: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """The same random offsets (one draw of the same shape), applied to float CHW images one
    sample at a time after edge padding; back to the input's layout and dtype."""
    batch, height, width, _ = images.shape
    offsets = torch.randint(0, 2 * pad + 1, (batch, 2), device=images.device, generator=generator)
    padded = F.pad(images.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="replicate")
    crops = [padded[b, :, y : y + height, x : x + width] for b, (y, x) in enumerate(offsets.tolist())]
    return torch.stack(crops).permute(0, 2, 3, 1).to(images.dtype)


def _batch(size: int = 12) -> Batch:
    rng = np.random.default_rng(3)

    def obs():
        return {"agentview_image": rng.integers(0, 256, (size, 16, 16, 3), dtype=np.uint8),
                "robot0_eef_pos": rng.normal(size=(size, 3)).astype(np.float32)}

    return Batch(obs=obs(), next_obs=obs(), actions=rng.uniform(-1, 1, (size, 4)).astype(np.float32),
                 rewards=rng.normal(size=size).astype(np.float32), terminals=(np.arange(size) % 5 == 0).astype(np.float32),
                 timeouts=np.zeros(size, np.float32), mc_returns=rng.normal(size=size).astype(np.float32),
                 discounts=np.full(size, 0.99, np.float32), online=(np.arange(size) % 2).astype(np.float32))


def _agent(name: str, layer_norm: bool):
    config = REGISTRY[name].config(hidden_dim=32, critic_layer_norm=layer_norm, policy_average_tau=0.01)
    if isinstance(config, CQLConfig):
        config.cql_num_actions, config.backup_num_actions = 3, 4
    torch.manual_seed(0)
    return make_agent(config, obs_spec_of(_batch().obs), 4, ENCODER)


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_update_matches_plain_reference(name, layer_norm, monkeypatch):
    batch = _batch()
    optimised = _agent(name, layer_norm)
    plain = _agent(name, layer_norm)
    for critic in (plain.critic, plain.target_critic):
        critic.forward = types.MethodType(plain_critic_forward, critic)
    results = []
    for agent, shift in ((optimised, perception.encoders.random_shift), (plain, plain_random_shift)):
        monkeypatch.setattr(perception.encoders, "random_shift", shift)
        torch.manual_seed(1)  # the same samples (actions, noise, shifts) in both updates
        metrics = {key: value.item() for key, value in agent.update(batch).items()}
        grads = {key: p.grad.clone() for key, p in agent.named_parameters() if p.grad is not None}
        results.append((metrics, grads, {key: p.detach().clone() for key, p in agent.state_dict().items()}))
    (metrics, grads, state), (plain_metrics, plain_grads, plain_state) = results
    assert metrics.keys() == plain_metrics.keys() and grads.keys() == plain_grads.keys()
    assert "critic.w2" in grads and state.keys() == plain_state.keys()
    for key, value in metrics.items():
        assert value == pytest.approx(plain_metrics[key], rel=1e-4, abs=1e-5, nan_ok=True), key
    for key, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[key], rtol=1e-4, atol=1e-5, msg=key)
    for key, value in state.items():
        torch.testing.assert_close(value, plain_state[key], rtol=1e-4, atol=1e-5, msg=key)
    assert any(not torch.equal(value, _agent(name, layer_norm).state_dict()[key]) for key, value in state.items())
