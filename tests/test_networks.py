import copy
import math
import dataclasses

import numpy as np
import pytest
import torch

from datasets.replay import Batch, obs_spec_of
from perception.encoders import EncoderConfig
from policy.algorithms import make_agent
from policy.calql import CalQLConfig, CQLConfig, SACConfig
from policy.networks import EnsembleCritic, TanhGaussianActor, sample_tanh_gaussian, soft_update, tanh_gaussian_log_prob


def test_ensemble_critic_matches_separate_mlps():
    torch.manual_seed(0)
    critic = EnsembleCritic(feature_dim=5, action_dim=3, hidden_dim=8, num_critics=2)
    features, actions = torch.randn(4, 5), torch.randn(4, 6, 3)
    out = critic(features, actions)
    assert out.shape == (2, 4, 6)
    for head in range(2):
        inputs = torch.cat([features.unsqueeze(1).expand(-1, 6, -1), actions], dim=-1)
        w1 = torch.cat([critic.w1_state[head], critic.w1_action[head]])
        h = torch.relu(inputs @ w1 + critic.b1[head])
        h = torch.relu(h @ critic.w2[head] + critic.b2[head])
        torch.testing.assert_close(out[head], (h @ critic.w3[head] + critic.b3[head])[..., 0])


def test_tanh_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    mean, log_std = torch.randn(3, 2), torch.randn(3, 2) * 0.3
    actions, logp = sample_tanh_gaussian(mean, log_std, 5)
    assert actions.shape == (3, 5, 2) and actions.abs().max() < 1
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean.unsqueeze(1), log_std.exp().unsqueeze(1)),
        [torch.distributions.TanhTransform(cache_size=1)],
    )
    expected = dist.log_prob(actions.clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1)
    torch.testing.assert_close(logp, expected, atol=2e-3, rtol=1e-3)
    # the log-probability of given actions agrees with that of the sampler
    torch.testing.assert_close(tanh_gaussian_log_prob(mean.unsqueeze(1), log_std.unsqueeze(1), actions), logp, atol=1e-3, rtol=1e-4)
    assert torch.isfinite(tanh_gaussian_log_prob(mean, log_std, torch.ones(3, 2))).all()
    actor = TanhGaussianActor(4, 2, 16)
    assert actor.deterministic(torch.zeros(7, 4)).shape == (7, 2)


def test_soft_update_moves_targets_by_tau():
    source, target = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    before = copy.deepcopy(target)
    soft_update(target, source, 0.1)
    for t, b, s in zip(target.parameters(), before.parameters(), source.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)


def _batch(rng, batch_size=8, mc_return=-50.0) -> Batch:
    obs = {"agentview_image": rng.integers(0, 255, (batch_size, 32, 32, 3), dtype=np.uint8),
           "robot0_eef_pos": rng.normal(size=(batch_size, 3)).astype(np.float32)}
    return Batch(
        obs=obs, next_obs={k: v.copy() for k, v in obs.items()},
        actions=rng.uniform(-1, 1, (batch_size, 4)).astype(np.float32),
        rewards=-np.ones(batch_size, np.float32), terminals=np.zeros(batch_size, np.float32),
        timeouts=np.zeros(batch_size, np.float32), mc_returns=np.full(batch_size, mc_return, np.float32),
        discounts=np.full(batch_size, 0.99, np.float32), online=np.zeros(batch_size, np.float32),
    )


def _agent(config, batch, encoder=None):
    return make_agent(config, obs_spec_of(batch.obs), 4, encoder or EncoderConfig(channels=[4], feature_dim=8))


def test_agent_update_trains_critic_and_moves_target_by_tau():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    batch = _batch(rng)
    config = CalQLConfig(tau=0.25, cql_num_actions=3, backup_num_actions=2, hidden_dim=32)
    agent = _agent(config, batch, EncoderConfig(channels=[8, 8], feature_dim=16))
    target_before = copy.deepcopy(agent.target_critic)
    agent.update(batch)
    for t, b, s in zip(agent.target_critic.parameters(), target_before.parameters(), agent.critic.parameters()):
        torch.testing.assert_close(t, 0.75 * b + 0.25 * s)


@pytest.mark.parametrize("mc_return, expected_rate", [(50.0, 1.0), (-50.0, 0.0)])
def test_calql_bound_acts_where_q_lies_below_the_mc_return(mc_return, expected_rate):
    # a fresh critic's values lie within a few units of 0: every policy-action value is below
    # an MC return of +50 (all lifted) and above one of -50 (none lifted)
    torch.manual_seed(0)
    batch = _batch(np.random.default_rng(0), mc_return=mc_return)
    agent = _agent(CalQLConfig(cql_num_actions=3, backup_num_actions=2, hidden_dim=32), batch)
    metrics = agent.update(batch)
    assert metrics["bound_rate"] == expected_rate
    assert (float(metrics["q_current"]) == pytest.approx(mc_return)) == (expected_rate == 1.0)  # lifted values are the bound
    # CQL reports the same share without lifting anything
    cql = _agent(CQLConfig(cql_num_actions=3, backup_num_actions=2, hidden_dim=32), batch)
    cql_metrics = cql.update(batch)
    assert cql_metrics["bound_rate"] == expected_rate and abs(float(cql_metrics["q_current"])) < 10


def test_lagrange_alpha_moves_with_the_gap():
    torch.manual_seed(0)
    batch = _batch(np.random.default_rng(1))
    config = CalQLConfig(cql_lagrange=True, cql_target_action_gap=1e6, cql_num_actions=2, backup_num_actions=2, hidden_dim=16)
    agent = _agent(config, batch)
    before = agent.log_cql_alpha.item()
    agent.update(batch)
    assert agent.log_cql_alpha.item() < before  # gap far below target: alpha decreases


def test_behaviour_cloning_warm_start_then_sac():
    torch.manual_seed(0)
    batch = _batch(np.random.default_rng(2))
    config = CalQLConfig(bc_steps=1, cql_num_actions=2, backup_num_actions=2, hidden_dim=16)
    agent = _agent(config, batch)
    initial_alpha = agent.log_entropy_alpha.item()
    first = agent.update(batch)
    assert agent.log_entropy_alpha.item() == initial_alpha  # held during the warm start
    second = agent.update(batch)
    assert agent.log_entropy_alpha.item() != initial_alpha  # tuned in the RL phase
    assert "bc_log_prob" in first and "q_policy" not in first
    assert "q_policy" in second and "bc_log_prob" not in second


def test_sac_skips_the_penalty_and_backs_up_entropy():
    torch.manual_seed(0)
    batch = _batch(np.random.default_rng(3))
    agent = _agent(SACConfig(hidden_dim=16), batch)
    metrics = agent.update(batch)
    assert metrics["cql_loss"] == 0.0 and "cql_gap" not in metrics and "bound_rate" not in metrics
    assert np.isfinite(float(metrics["critic_loss"])) and float(metrics["critic_loss"]) == pytest.approx(2 * float(metrics["td_loss"]))


def test_n_step_discounts_replace_gamma_in_the_td_target():
    batch = _batch(np.random.default_rng(4))
    config = CalQLConfig(cql_num_actions=2, backup_num_actions=2, hidden_dim=16)
    torch.manual_seed(0)
    agent = _agent(config, batch)
    same, no_bootstrap = copy.deepcopy(agent), copy.deepcopy(agent)
    torch.manual_seed(1)
    one_step = agent.update(batch)
    torch.manual_seed(1)
    halved = same.update(dataclasses.replace(batch, discounts=np.full(8, config.gamma / 2, np.float32)))
    # same sampled backup, half the discount: td_target - r halves
    assert float(halved["td_target"]) + 1 == pytest.approx((float(one_step["td_target"]) + 1) / 2, rel=1e-4)
    cut = no_bootstrap.update(dataclasses.replace(batch, discounts=np.zeros(8, np.float32)))
    assert float(cut["td_target"]) == pytest.approx(float(batch.rewards.mean()))



def test_separate_actor_encoder_is_trained_by_the_actor_only():
    batch = _batch(np.random.default_rng(6))
    config = CalQLConfig(separate_actor_encoder=True, bc_steps=1, cql_num_actions=2, backup_num_actions=2, hidden_dim=16)
    torch.manual_seed(0)
    agent = _agent(config, batch)
    actor_encoder_before = copy.deepcopy(agent.actor_encoder)
    critic_encoder_before = copy.deepcopy(agent.encoder)
    agent.optimizers["critic"].param_groups[0]["lr"] = 0.0  # isolate the actor's update
    for _ in range(2):  # a behaviour-cloning update, then an RL one
        metrics = agent.update(batch)
        assert metrics["actor_encoder_grad_norm"] > 0
    assert all(torch.equal(a, b) for a, b in zip(agent.encoder.parameters(), critic_encoder_before.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(agent.actor_encoder.parameters(), actor_encoder_before.parameters()))
    clone = _agent(config, batch)
    clone.load_training_state(agent.training_state())
    np.testing.assert_allclose(clone.act(batch.obs), agent.act(batch.obs))


@pytest.mark.parametrize("field, value", [("n_step", 0), ("actor_bc_weight", -0.1), ("cql_alpha", -1.0)])
def test_invalid_algo_values_are_rejected(field, value):
    config = CalQLConfig(hidden_dim=16, **{field: value})
    with pytest.raises(ValueError, match=f"algo.{field}"):
        make_agent(config, {"robot0_eef_pos": {"shape": [3], "dtype": "float32"}}, 4, EncoderConfig())


@pytest.mark.parametrize("source", ["all", "offline"])
def test_bc_term_imitates_the_rows_it_is_told_to(source):
    torch.manual_seed(0)
    rng = np.random.default_rng(7)
    obs = {"robot0_eef_pos": rng.normal(size=(8, 3)).astype(np.float32)}
    online = (np.arange(8) >= 4).astype(np.float32)  # the last four rows came from the online buffer
    batch = Batch(obs=obs, next_obs=obs, actions=rng.uniform(-1, 1, (8, 4)).astype(np.float32),
                  rewards=-np.ones(8, np.float32), terminals=np.zeros(8, np.float32), timeouts=np.zeros(8, np.float32),
                  mc_returns=np.full(8, -50.0, np.float32), discounts=np.full(8, 0.99, np.float32), online=online)
    config = CalQLConfig(actor_bc_weight=0.4, actor_bc_source=source, cql_num_actions=2, backup_num_actions=2, hidden_dim=16)
    agent = _agent(config, batch)
    with torch.no_grad():  # the actor's mean before the update (low-dimensional inputs: no augmentation)
        mean = agent.actor(agent.encoder({k: torch.from_numpy(v) for k, v in obs.items()}))[0]
    per_row = ((torch.tanh(mean) - torch.from_numpy(batch.actions)) ** 2).sum(-1)
    expected = per_row[:4].mean() if source == "offline" else per_row.mean()
    assert float(agent.update(batch)["bc_mse"]) == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="algo.actor_bc_source must be one of all, offline"):
        _agent(CalQLConfig(actor_bc_source="online"), batch)


def test_layer_norm_critic_bounds_q_for_any_input():
    torch.manual_seed(0)
    critic = EnsembleCritic(feature_dim=5, action_dim=3, hidden_dim=8, num_critics=2, layer_norm=True)
    actions = torch.rand(4, 6, 3) * 2 - 1
    # each normalised hidden unit is at most sqrt(H - 1) in size, so |Q| <= ||w3||_1 sqrt(7) + |b3|
    bound = critic.w3.abs().sum(dim=(1, 2)) * math.sqrt(7) + critic.b3.abs().view(2)
    for scale in (1.0, 1e3, 1e6):
        q = critic(torch.randn(4, 5) * scale, actions)
        assert q.shape == (2, 4, 6) and torch.isfinite(q).all()
        assert (q.abs().amax(dim=(1, 2)) <= bound + 1e-4).all()
    plain = EnsembleCritic(feature_dim=5, action_dim=3, hidden_dim=8, num_critics=2)
    plain.load_state_dict(critic.state_dict())
    assert plain(torch.randn(4, 5) * 1e6, actions).abs().max() > bound.max()  # unnormalised: unbounded


@pytest.mark.parametrize("algo", ["calql", "iql", "awac", "td3bc"])
def test_policy_average_follows_the_trained_policy_by_tau(algo):
    from policy.algorithms import lookup

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    batch = _batch(rng)
    config = lookup(algo).config(hidden_dim=16, policy_average_tau=0.25)
    agent = _agent(config, batch)
    assert agent.policy_average is None  # made by the first update, from the weights it starts at
    start = copy.deepcopy(agent.actor), copy.deepcopy(agent.policy_encoder)
    agent.update(batch)
    trained = agent.actor, agent.policy_encoder
    average = agent.policy_average["actor"], agent.policy_average["encoder"]
    for before, now, averaged in zip(start, trained, average):
        for b, n, a in zip(before.parameters(), now.parameters(), averaged.parameters()):
            torch.testing.assert_close(a, 0.75 * b + 0.25 * n)
            assert not a.requires_grad
    # the average is what deterministic acting uses; `trained=True` the trained weights
    assert not np.allclose(agent.act(batch.obs), agent.act(batch.obs, trained=True))
    with torch.no_grad():
        obs = {k: torch.as_tensor(v) for k, v in batch.obs.items()}
        expected = average[0].deterministic(average[1](obs)).numpy()
    np.testing.assert_allclose(agent.act(batch.obs), expected, atol=1e-6)


def test_policy_average_is_saved_and_restored_and_absent_without_tau():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    batch = _batch(rng)
    config = CalQLConfig(hidden_dim=16, cql_num_actions=2, backup_num_actions=2, policy_average_tau=0.1)
    agent = _agent(config, batch)
    agent.update(batch)
    agent.update(batch)
    clone = _agent(dataclasses.replace(config), batch)
    clone.load_training_state(agent.training_state())
    np.testing.assert_allclose(clone.act(batch.obs), agent.act(batch.obs), atol=1e-6)
    np.testing.assert_allclose(clone.act(batch.obs, trained=True), agent.act(batch.obs, trained=True), atol=1e-6)
    # a state without an average (an older checkpoint) loads, and the average starts from it
    plain = _agent(dataclasses.replace(config, policy_average_tau=0.0), batch)
    plain.update(batch)
    assert plain.policy_average is None
    fresh = _agent(dataclasses.replace(config), batch)
    fresh.load_training_state(plain.training_state())
    np.testing.assert_allclose(fresh.act(batch.obs), plain.act(batch.obs), atol=1e-6)
    with pytest.raises(ValueError, match="policy_average_tau"):
        _agent(CalQLConfig(policy_average_tau=1.5), batch)


def test_turning_the_average_off_evaluates_the_trained_weights():
    # fine-tuning with algo.policy_average_tau=0 from a checkpoint whose pretraining kept an average
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    batch = _batch(rng)
    agent = _agent(CalQLConfig(hidden_dim=16, cql_num_actions=2, backup_num_actions=2, policy_average_tau=0.1), batch)
    agent.update(batch)
    assert not np.allclose(agent.act(batch.obs), agent.act(batch.obs, trained=True))
    agent.change_setting("policy_average_tau", 0)
    assert agent.policy_average is None and "policy_average.actor" not in str(list(agent.training_state()["model"]))
    agent.update(batch)  # the evaluated policy keeps following training
    np.testing.assert_allclose(agent.act(batch.obs), agent.act(batch.obs, trained=True), atol=0)
    assert agent.evaluated_policy() == (agent.policy_encoder, agent.actor)


def test_cql_alpha_zero_online_is_the_td_loss_alone():
    # fine-tuning with algo.cql_alpha=0 (WSRL's recipe): no penalty, and none of its sampled actions
    torch.manual_seed(0)
    batch = _batch(np.random.default_rng(5))
    agent = _agent(CalQLConfig(hidden_dim=16, cql_num_actions=2, backup_num_actions=2, cql_alpha=10.0), batch)
    penalized = agent.update(batch)
    assert float(penalized["cql_loss"]) != 0.0 and "bound_rate" in penalized
    agent.change_setting("cql_alpha", 0)
    assert agent.config.cql_alpha == 0.0
    metrics = agent.update(batch)
    assert metrics["cql_loss"] == 0.0 and "bound_rate" not in metrics
    # two heads: the critic's loss is the sum of their TD losses, nothing else
    assert float(metrics["critic_loss"]) == pytest.approx(2 * float(metrics["td_loss"]))
    with pytest.raises(ValueError, match="algo.cql_alpha must be >= 0"):
        agent.change_setting("cql_alpha", -1.0)
    assert agent.config.cql_alpha == 0.0
    lagrange = _agent(CalQLConfig(hidden_dim=16, cql_num_actions=2, backup_num_actions=2, cql_lagrange=True), batch)
    with pytest.raises(ValueError, match="algo.cql_alpha cannot change online for a checkpoint trained with algo.cql_lagrange"):
        lagrange.change_setting("cql_alpha", 0)


def test_entropy_tuning_settings_change_online():
    torch.manual_seed(0)
    batch = _batch(np.random.default_rng(6))
    agent = _agent(CalQLConfig(hidden_dim=16, cql_num_actions=2, backup_num_actions=2), batch)
    assert agent.target_entropy == -4.0  # -action_dim by default
    # a target far above any entropy a 4-d tanh-Gaussian reaches: the coefficient must grow
    agent.change_setting("target_entropy", 100.0)
    before = agent.log_entropy_alpha.item()
    agent.update(batch)
    assert agent.target_entropy == 100.0 and agent.log_entropy_alpha.item() > before
    # far below: it must shrink, by about the new learning rate (an Adam step moves it by about lr)
    agent.change_setting("target_entropy", -100)
    agent.change_setting("alpha_lr", 0.01)
    assert all(group["lr"] == 0.01 for group in agent.optimizers["entropy_alpha"].param_groups)
    before = agent.log_entropy_alpha.item()
    agent.update(batch)
    assert before - 0.02 < agent.log_entropy_alpha.item() < before
    # 0 holds the coefficient where it is
    agent.change_setting("alpha_lr", 0)
    before = agent.log_entropy_alpha.item()
    agent.update(batch)
    assert agent.log_entropy_alpha.item() == before
    with pytest.raises(ValueError, match="algo.alpha_lr must be >= 0"):
        agent.change_setting("alpha_lr", -1.0)
    assert agent.config.alpha_lr == 0.0
