"""Compiled networks (``compile=true``) learn exactly like eager ones."""

import numpy as np
import pytest
import torch

from bench.update import synthetic_batch
from datasets.replay import obs_spec_of
from perception.encoders import EncoderConfig
from policy.algorithms import make_agent
from policy.calql import CalQLConfig


def _agent(batch, device="cpu"):
    torch.manual_seed(0)
    config = CalQLConfig(hidden_dim=32, cql_num_actions=3, backup_num_actions=2, policy_average_tau=0.5)
    return make_agent(config, obs_spec_of(batch.obs), 4, EncoderConfig(channels=[8, 8], feature_dim=16), device)


@pytest.mark.parametrize("device, cuda_graphs", [
    ("cpu", False),
    pytest.param("cuda", True, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
])
def test_compiled_updates_agree_with_eager_ones(device, cuda_graphs):
    batch = synthetic_batch(16, 32, np.random.default_rng(0)).to_torch(device)
    eager, compiled = _agent(batch, device), _agent(batch, device)
    compiled.compile_networks(cuda_graphs)
    for update in range(3):
        torch.manual_seed(update)  # the same random shifts and sampled actions in both
        expected = eager.update(batch)
        torch.manual_seed(update)
        got = compiled.update(batch)
        for name in ("critic_loss", "actor_loss", "q_data", "td_target"):
            # fused kernels sum in another order: float32 rounding, a relative 1e-4 over 3 updates
            torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-4)
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=name)
    # the state dict is the eager networks' (checkpoints load either way), the average works
    assert list(eager.state_dict()) == list(compiled.state_dict())
    np.testing.assert_allclose(compiled.act(batch.obs), eager.act(batch.obs), atol=1e-4)


def test_compiled_networks_take_a_second_image_size():
    """Each image size compiles on its own (static shapes): a new size in the same process, e.g. a
    second run with 84-px images after 48-px ones, used to crash while compiling symbolic shapes."""
    for size in (24, 40):
        batch = synthetic_batch(8, size, np.random.default_rng(size))
        agent = _agent(batch)
        agent.compile_networks()
        metrics = agent.update(batch)
        agent.raise_if_nonfinite()
        assert torch.isfinite(metrics["critic_loss"])
        assert agent.act(batch.obs).shape == (8, 4)  # acting compiles one more (batch) shape
