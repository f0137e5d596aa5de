"""Every registered algorithm against the one agent contract, each algorithm's losses on
hand-computed numbers, and a small offline problem every algorithm must solve."""

import copy
import dataclasses
import math

import numpy as np
import onnxruntime
import pytest
import torch

from datasets.replay import Batch, obs_spec_of
from perception.encoders import EncoderConfig
from policy.algorithms import REGISTRY, algo_config, check_config, make_agent
from policy.calql import CalQLConfig, CQLConfig
from policy.checkpoint import agent_checkpoint, save_checkpoint
from policy.export import export_policy
from policy.iql import IQLConfig, advantage_weights, expectile_loss, weighted_log_likelihood_loss
from policy.td3bc import TD3BCConfig, td3bc_actor_loss

ALGORITHMS = sorted(REGISTRY)
SMALL_ENCODER = EncoderConfig(channels=[4, 4], feature_dim=8)


def _small_config(name: str, **overrides):
    config = REGISTRY[name].config(hidden_dim=16, **overrides)
    if isinstance(config, CQLConfig):
        config.cql_num_actions = config.backup_num_actions = 2
    return config


def _image_batch(seed: int = 0, size: int = 8) -> Batch:
    rng = np.random.default_rng(seed)

    def obs():
        return {"agentview_image": rng.integers(0, 256, (size, 24, 24, 3), dtype=np.uint8),
                "robot0_eef_pos": rng.normal(size=(size, 3)).astype(np.float32)}

    return Batch(obs=obs(), next_obs=obs(), actions=rng.uniform(-1, 1, (size, 4)).astype(np.float32),
                 rewards=rng.normal(size=size).astype(np.float32), terminals=np.zeros(size, np.float32),
                 timeouts=np.zeros(size, np.float32), mc_returns=rng.normal(size=size).astype(np.float32),
                 discounts=np.full(size, 0.99, np.float32), online=(np.arange(size) % 2).astype(np.float32))


def _parameters(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, module.parameters()))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_agent_contract(name, tmp_path):
    torch.manual_seed(0)
    batch = _image_batch()
    spec = obs_spec_of(batch.obs)
    config = _small_config(name)
    agent = make_agent(config, spec, 4, SMALL_ENCODER)
    heads = {"encoder": agent.encoder, "critic": agent.critic, "actor": agent.actor}
    if hasattr(agent, "value"):
        heads["value"] = agent.value
    before = {key: _parameters(module) for key, module in heads.items()}
    targets = {key: _parameters(getattr(agent, key)) for key in ("target_critic", "target_actor") if hasattr(agent, key)}

    # two updates: TD3+BC updates its actor and targets every second one
    for _ in range(2):
        metrics = agent.update(batch)
        # scalar tensors left on the device, without a graph (read back once per log row)
        assert metrics and all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad
                               and math.isfinite(v) for v in metrics.values()), metrics
        assert {"td_loss_online", "td_loss_offline"} <= set(metrics)  # the batch is half online
    for key, module in heads.items():
        assert _changed(before[key], module), f"{name}: {key} did not change"
    for key, params in targets.items():
        target = getattr(agent, key)
        assert _changed(params, target) and not any(p.requires_grad for p in target.parameters())
    assert agent.num_updates == 2

    # the encoder learns from the critic only: one backward pass reaches it per update (the
    # critic's), and with the critic's optimiser stopped the other losses leave it as it was
    backward_passes = []
    hook = next(agent.encoder.parameters()).register_hook(lambda grad: backward_passes.append(1))
    agent.update(batch)
    agent.update(batch)
    hook.remove()
    assert len(backward_passes) == 2
    agent.optimizers["critic"].param_groups[0]["lr"] = 0.0
    encoder_before, actor_before = _parameters(agent.encoder), _parameters(agent.actor)
    for _ in range(2):
        agent.update(batch)
    assert not _changed(encoder_before, agent.encoder) and _changed(actor_before, agent.actor)
    agent.optimizers["critic"].param_groups[0]["lr"] = 1e-3

    # acting
    for deterministic in (True, False):
        actions = agent.act(batch.obs, deterministic=deterministic)
        assert actions.shape == (8, 4) and actions.dtype == np.float32 and np.all(np.abs(actions) <= 1)
    assert agent.q_values(batch.obs).shape == agent.q_values(batch.obs, batch.actions).shape == (8,)

    # training state round-trips exactly: the clone continues identically
    clone = make_agent(_small_config(name), spec, 4, SMALL_ENCODER)
    clone.load_training_state(copy.deepcopy(agent.training_state()))
    assert clone.num_updates == agent.num_updates
    for key, value in agent.state_dict().items():
        assert torch.equal(value, clone.state_dict()[key]), key
    torch.manual_seed(1)
    agent.update(batch)
    torch.manual_seed(1)
    clone.update(batch)
    for key, value in agent.state_dict().items():
        assert torch.equal(value, clone.state_dict()[key]), key

    # the exported module and ONNX model are the eager deterministic policy
    checkpoint = tmp_path / "checkpoint.pt"
    save_checkpoint(checkpoint, agent_checkpoint(agent, spec, {"name": "pickplace", "kwargs": {"image_size": 24}}))
    written = export_policy(checkpoint, tmp_path / "policy.pt", ("onnx",))
    policy = torch.jit.load(str(written["torchscript"]))
    exported = policy([torch.from_numpy(batch.obs[k]) for k in policy.obs_keys()]).numpy()
    eager = agent.eval().act(batch.obs)
    np.testing.assert_allclose(exported, eager, atol=1e-5)
    session = onnxruntime.InferenceSession(str(written["onnx"]), providers=["CPUExecutionProvider"])
    (onnx_actions,) = session.run(["action"], {k: batch.obs[k] for k in policy.obs_keys()})
    np.testing.assert_allclose(onnx_actions, eager, atol=1e-5)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_frozen_encoder_stays_while_the_heads_learn(name):
    torch.manual_seed(0)
    batch = _image_batch()
    agent = make_agent(_small_config(name), obs_spec_of(batch.obs), 4, SMALL_ENCODER)
    agent.freeze_encoders()
    encoder_before, critic_before = _parameters(agent.encoder), _parameters(agent.critic)
    actor_before = _parameters(agent.actor)
    for _ in range(2):
        metrics = agent.update(batch)
    assert not _changed(encoder_before, agent.encoder)
    assert _changed(critic_before, agent.critic) and _changed(actor_before, agent.actor)
    assert metrics["encoder_grad_norm"] == 0.0


@pytest.mark.parametrize("name", ALGORITHMS)
def test_bf16_encoder_updates_track_float32_ones(name):
    """encoder_bf16: every encoder (the actor's own too) computes in bfloat16; the losses of the
    first updates stay within bfloat16's rounding of the float32 agent's, the weights float32."""
    batch = _image_batch(size=32).to_torch("cpu")
    agents = []
    for bf16 in (False, True):
        torch.manual_seed(0)
        agent = make_agent(_small_config(name), obs_spec_of(batch.obs), 4, SMALL_ENCODER)
        agent.set_encoder_bf16(bf16)
        agents.append(agent)
    full, half = agents
    assert all(encoder.bf16 for encoder in (half.encoder, half.policy_encoder))
    for update in range(3):
        torch.manual_seed(update)  # the same random shifts and sampled actions in both
        expected = full.update(batch)
        torch.manual_seed(update)
        got = half.update(batch)
        for loss in [key for key in expected if key.endswith("_loss")]:
            assert torch.isfinite(got[loss])
            torch.testing.assert_close(got[loss], expected[loss], rtol=0.05, atol=0.02, msg=loss)
    assert all(tensor.dtype == torch.float32 for tensor in half.state_dict().values() if tensor.is_floating_point())


@pytest.mark.parametrize("name", ALGORITHMS)
def test_actor_learning_rate_can_change_and_is_recorded(name):
    batch = _image_batch()
    agent = make_agent(_small_config(name), obs_spec_of(batch.obs), 4, SMALL_ENCODER)
    agent.update(batch)
    agent.set_actor_lr(2e-5)
    assert agent.config.actor_lr == 2e-5
    assert all(group["lr"] == 2e-5 for group in agent.optimizers["actor"].param_groups)
    clone = make_agent(_small_config(name), obs_spec_of(batch.obs), 4, SMALL_ENCODER)
    clone.load_training_state(copy.deepcopy(agent.training_state()))
    assert clone.optimizers["actor"].param_groups[0]["lr"] == 2e-5


def test_optimisers_use_the_kernel_of_the_device_they_run_on():
    """Adam is fused on CUDA only; a state saved on CUDA (fused) resumes on the CPU unfused."""
    batch = _image_batch()
    agent = make_agent(_small_config("calql"), obs_spec_of(batch.obs), 4, SMALL_ENCODER)
    assert all(group["fused"] is None for optimizer in agent.optimizers.values() for group in optimizer.param_groups)
    state = copy.deepcopy(agent.training_state())
    for optimizer_state in state["optimizers"].values():
        for group in optimizer_state["param_groups"]:
            group["fused"] = True  # as written by an agent on CUDA
    agent.load_training_state(state)
    assert all(group["fused"] is None for optimizer in agent.optimizers.values() for group in optimizer.param_groups)
    agent.update(batch)
    if torch.cuda.is_available():
        on_cuda = make_agent(_small_config("calql"), obs_spec_of(batch.obs), 4, SMALL_ENCODER, device="cuda")
        assert all(group["fused"] for optimizer in on_cuda.optimizers.values() for group in optimizer.param_groups)
        on_cuda.update(batch)


def test_settings_change_only_to_valid_values_the_algorithm_has():
    batch = _image_batch()
    calql = make_agent(_small_config("calql"), obs_spec_of(batch.obs), 4, SMALL_ENCODER)
    calql.change_setting("actor_bc_weight", 0.7)
    assert calql.config.actor_bc_weight == 0.7
    with pytest.raises(ValueError, match="algo.actor_bc_weight must be >= 0, got -1"):
        calql.change_setting("actor_bc_weight", -1.0)
    assert calql.config.actor_bc_weight == 0.7  # a refused value changes nothing
    with pytest.raises(ValueError, match="algo.policy_average_tau must be in \\[0, 1\\], got 2"):
        calql.change_setting("policy_average_tau", 2.0)
    iql = make_agent(_small_config("iql"), obs_spec_of(batch.obs), 4, SMALL_ENCODER)
    with pytest.raises(ValueError, match="actor_bc_weight is not a setting of algo 'iql'"):
        iql.change_setting("actor_bc_weight", 0.5)


def test_config_must_match_the_name_it_carries():
    check_config(CalQLConfig())
    with pytest.raises(ValueError, match="algo.name=calql contradicts the CQLConfig settings"):
        check_config(CQLConfig(name="calql"))
    with pytest.raises(ValueError, match="unknown algorithm 'bc'; registered: awac, calql, cql, iql, sac, td3bc"):
        check_config(IQLConfig(name="bc"))
    assert algo_config(dataclasses.asdict(IQLConfig(expectile=0.9))) == IQLConfig(expectile=0.9)
    with pytest.raises(ValueError, match=r"algo 'iql' has no field\(s\) \['cql_alpha'\]"):
        algo_config({**dataclasses.asdict(IQLConfig()), "cql_alpha": 5.0})


# ------------------------------------------------------------------ losses by hand
def test_expectile_loss_on_both_sides_of_zero():
    loss, _ = expectile_loss(torch.tensor([2.0, -1.0]), 0.7)
    assert loss.item() == pytest.approx((0.7 * 4 + 0.3 * 1) / 2)
    loss, _ = expectile_loss(torch.tensor([2.0, -1.0]), 0.5)  # 0.5: half the mean squared error
    assert loss.item() == pytest.approx(0.5 * (4 + 1) / 2)


def test_advantage_weights_and_their_clipping():
    weights = advantage_weights(torch.tensor([0.0, 1.0, 10.0, -1.0]), 3.0, 100.0)
    torch.testing.assert_close(weights, torch.tensor([1.0, math.exp(3.0), 100.0, math.exp(-3.0)]))
    # AWAC's exp(A / lambda), lambda 0.5
    assert advantage_weights(torch.tensor([0.5]), 1 / 0.5, 100.0).item() == pytest.approx(math.e)
    loss, metrics = weighted_log_likelihood_loss(torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 3.0]))
    assert loss.item() == pytest.approx((1 * 1 + 3 * 2) / 2) and float(metrics["adv_weight_max"]) == 3.0


def test_td3bc_actor_loss_normalises_q():
    policy = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    data = torch.zeros(2, 2)
    loss, metrics = td3bc_actor_loss(torch.tensor([-2.0, -4.0]), policy, data, 2.5)
    # -2.5 * mean(Q) / mean|Q| = -2.5 * -3 / 3 = 2.5; mean squared error 0.25 / 4
    assert loss.item() == pytest.approx(2.5 + 0.0625) and float(metrics["q_scale"]) == 3.0
    scaled, _ = td3bc_actor_loss(torch.tensor([-20.0, -40.0]), policy, data, 2.5)
    assert scaled.item() == pytest.approx(loss.item())  # independent of the reward scale


def test_td3bc_updates_actor_and_targets_every_second_step():
    torch.manual_seed(0)
    batch = _image_batch()
    agent = make_agent(TD3BCConfig(hidden_dim=16), obs_spec_of(batch.obs), 4, SMALL_ENCODER)
    watched = {key: _parameters(getattr(agent, key)) for key in ("actor", "target_actor", "target_critic", "critic")}
    first = agent.update(batch)
    assert "actor_loss" not in first
    assert _changed(watched["critic"], agent.critic)
    assert not any(_changed(watched[key], getattr(agent, key)) for key in ("actor", "target_actor", "target_critic"))
    second = agent.update(batch)
    assert "actor_loss" in second
    assert all(_changed(watched[key], getattr(agent, key)) for key in ("actor", "target_actor", "target_critic"))


# ------------------------------------------------------- a problem each must solve
def _best_action(states: np.ndarray) -> np.ndarray:
    return 0.6 * np.stack([states[:, 0], -states[:, 1]], axis=1)


def _one_step_batch(rng: np.random.Generator, size: int) -> Batch:
    """A one-step task: the reward is -10 |a - a*(s)|^2; half the data's actions are near a*(s),
    half uniformly random, so cloning the data gives a*(s) / 2 and only learning from the
    rewards finds a*(s)."""
    states = rng.uniform(-1, 1, (size, 2)).astype(np.float32)
    best = _best_action(states)
    good = rng.random(size) < 0.5
    actions = np.where(good[:, None], np.clip(best + 0.05 * rng.normal(size=best.shape), -1, 1),
                       rng.uniform(-1, 1, best.shape)).astype(np.float32)
    rewards = (-10.0 * ((actions - best) ** 2).sum(axis=1)).astype(np.float32)
    ones = np.ones(size, np.float32)
    return Batch(obs={"state": states}, next_obs={"state": states}, actions=actions, rewards=rewards,
                 terminals=ones, timeouts=0 * ones, mc_returns=rewards, discounts=0.99 * ones,
                 online=0 * ones)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_algorithm_solves_a_one_step_problem_from_mixed_data(name):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = REGISTRY[name].config(hidden_dim=64)
    for rate in ("actor_lr", "critic_lr", "value_lr"):  # one learning rate for all: a small problem
        if hasattr(config, rate):
            setattr(config, rate, 1e-3)
    agent = make_agent(config, {"state": {"shape": [2], "dtype": "float32"}}, 2, EncoderConfig())
    test_states = rng.uniform(-1, 1, (500, 2)).astype(np.float32)
    cloning_error = np.abs(0.5 * _best_action(test_states) - _best_action(test_states)).mean()  # about 0.15
    for _ in range(400):
        agent.update(_one_step_batch(rng, 128))
    error = np.abs(agent.act({"state": test_states}) - _best_action(test_states)).mean()
    assert error < 0.4 * cloning_error, f"{name}: mean action error {error:.3f}, cloning the data gives {cloning_error:.3f}"
