import math

import pytest
import torch

from policy.agent import td_loss
from policy.calql import bc_regularizer, cql_penalty

ACTION_DIM = 2


def _terms(q_data, q_random, q_current, q_next, logp_current, logp_next, temperature=1.0):
    log_density = ACTION_DIM * math.log(0.5)
    ood = torch.cat([q_random - log_density, q_next - logp_next, q_current - logp_current], dim=-1)
    return (temperature * torch.logsumexp(ood / temperature, dim=-1) - q_data).mean(dim=1)


def _case():
    # one head, two states, two samples of each kind; MC returns above some policy Q-values
    q_data = torch.tensor([[0.0, 1.0]])
    q_random = torch.tensor([[[-3.0, -2.0], [-1.0, 0.5]]])
    q_current = torch.tensor([[[-5.0, 0.0], [2.0, -4.0]]])
    q_next = torch.tensor([[[-6.0, 1.0], [-2.0, 3.0]]])
    logp = torch.tensor([[0.1, -0.2], [0.3, 0.0]])
    mc = torch.tensor([-1.0, 0.5])
    return q_data, q_random, q_current, q_next, logp, logp.flip(-1), mc


def test_cql_is_the_plain_logsumexp_gap():
    q_data, q_random, q_current, q_next, logp_c, logp_n, mc = _case()
    gap, metrics = cql_penalty(q_data, q_random, q_current, q_next, logp_c, logp_n, mc, False, ACTION_DIM, 1.0)
    torch.testing.assert_close(gap, _terms(q_data, q_random, q_current, q_next, logp_c, logp_n))
    # CQL reports the share of its policy-action values below the MC return without lifting
    # them: 4 of the 8 (state 0: -5, -6 < -1; state 1: -4, -2 < 0.5)
    assert metrics["bound_rate"] == 0.5


def test_calql_bounds_only_the_policy_terms_by_mc_returns():
    q_data, q_random, q_current, q_next, logp_c, logp_n, mc = _case()
    gap, metrics = cql_penalty(q_data, q_random, q_current, q_next, logp_c, logp_n, mc, True, ACTION_DIM, 1.0)
    bound = mc.view(1, -1, 1)
    expected = _terms(q_data, q_random, torch.maximum(q_current, bound), torch.maximum(q_next, bound), logp_c, logp_n)
    torch.testing.assert_close(gap, expected)
    # random-action Q-values below the MC return are left alone: bounding them too differs
    wrong = _terms(q_data, torch.maximum(q_random, bound), torch.maximum(q_current, bound), torch.maximum(q_next, bound), logp_c, logp_n)
    assert not torch.allclose(gap, wrong)
    # 4 of the 8 policy-action values lie below their state's MC return
    assert metrics["bound_rate"] == 0.5
    plain, _ = cql_penalty(q_data, q_random, q_current, q_next, logp_c, logp_n, mc, False, ACTION_DIM, 1.0)
    assert torch.all(gap > plain)  # lifting Q-values can only raise the logsumexp


def test_calql_equals_cql_when_q_exceeds_the_mc_return():
    q_data, q_random, q_current, q_next, logp_c, logp_n, mc = _case()
    low_mc = torch.tensor([-100.0, -100.0])
    calibrated, metrics = cql_penalty(q_data, q_random, q_current, q_next, logp_c, logp_n, low_mc, True, ACTION_DIM, 1.0)
    plain, _ = cql_penalty(q_data, q_random, q_current, q_next, logp_c, logp_n, mc, False, ACTION_DIM, 1.0)
    torch.testing.assert_close(calibrated, plain)
    assert metrics["bound_rate"] == 0.0


def test_penalty_on_hand_computed_numbers():
    # one head, one state, one sample of each kind, action_dim 2: the random action's density
    # correction is -2 log 0.5 = log 4, so the terms are [0 + log 4, 1 - 1, 0 - 0]
    one = lambda value: torch.tensor([[[value]]])  # noqa: E731
    args = (torch.tensor([[0.0]]), one(0.0), one(0.0), one(1.0), torch.tensor([[0.0]]), torch.tensor([[1.0]]))
    plain, _ = cql_penalty(*args, torch.tensor([2.0]), False, ACTION_DIM, 1.0)
    assert plain.item() == pytest.approx(math.log(4 + 1 + 1))
    # Cal-QL with an MC return of 2 lifts both policy terms to 2: [log 4, 2 - 1, 2 - 0]
    calibrated, metrics = cql_penalty(*args, torch.tensor([2.0]), True, ACTION_DIM, 1.0)
    assert calibrated.item() == pytest.approx(math.log(4 + math.e + math.e**2))
    assert metrics["bound_rate"] == 1.0


def test_temperature_and_td_loss():
    q_data, q_random, q_current, q_next, logp_c, logp_n, mc = _case()
    gap, _ = cql_penalty(q_data, q_random, q_current, q_next, logp_c, logp_n, mc, False, ACTION_DIM, 0.5)
    torch.testing.assert_close(gap, _terms(q_data, q_random, q_current, q_next, logp_c, logp_n, temperature=0.5))
    loss, metrics = td_loss(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([0.0, 2.0]))
    assert math.isclose(loss.item(), 0.5 + 2.0) and math.isclose(metrics["td_loss"], 1.25)
    assert "td_loss_online" not in metrics
    # split by source: row 0 (offline) errs 1 and 0 over the heads, row 1 (online) 0 and 4
    _, split = td_loss(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([0.0, 2.0]), torch.tensor([0.0, 1.0]))
    assert float(split["td_loss_offline"]) == pytest.approx(0.5) and float(split["td_loss_online"]) == pytest.approx(2.0)
    # a batch without online rows: NaN there (skipped by the logged averages), the offline half is all
    _, offline_only = td_loss(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.0]))
    assert offline_only["td_loss_online"].isnan() and float(offline_only["td_loss_offline"]) == pytest.approx(1.25)


def test_bc_regularizer_scales_with_q_magnitude():
    mean = torch.zeros(2, 3)
    actions = torch.tensor([[0.5, 0.0, 0.0], [0.0, -1.0, 0.0]])
    loss, metrics = bc_regularizer(mean, actions, torch.tensor([-100.0, -300.0]), weight=0.4)
    assert float(metrics["bc_mse"]) == pytest.approx((0.25 + 1.0) / 2)
    assert loss.item() == pytest.approx(0.4 * 200.0 * 0.625)
    scaled, _ = bc_regularizer(mean, actions, torch.tensor([-10.0, -30.0]), weight=0.4)
    assert scaled.item() == pytest.approx(loss.item() / 10)


def test_bc_regularizer_on_selected_rows():
    mean = torch.zeros(2, 3)
    actions = torch.tensor([[0.5, 0.0, 0.0], [0.0, -1.0, 0.0]])
    loss, metrics = bc_regularizer(mean, actions, torch.tensor([-100.0, -300.0]), 0.4, torch.tensor([True, False]))
    assert float(metrics["bc_mse"]) == pytest.approx(0.25) and loss.item() == pytest.approx(0.4 * 200.0 * 0.25)
    # no selected row in the batch (all online): the term falls back to every row
    _, fallback = bc_regularizer(mean, actions, torch.tensor([-100.0, -300.0]), 0.4, torch.tensor([False, False]))
    assert float(fallback["bc_mse"]) == pytest.approx(0.625)
