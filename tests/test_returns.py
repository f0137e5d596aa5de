import numpy as np
import pytest

from datasets.returns import RewardConfig, episode_rewards_and_returns, mc_returns, transform_rewards

GAMMA = 0.9


def test_success_at_the_end():
    # raw sparse rewards 0, 0, 1 with a terminal at the end; transform r - 1 -> -1, -1, 0
    rewards, returns = episode_rewards_and_returns(np.array([0, 0, 1.0]), np.array([0, 0, 1]), GAMMA, RewardConfig(1.0, -1.0))
    np.testing.assert_allclose(rewards, [-1, -1, 0])
    np.testing.assert_allclose(returns, [-1 + GAMMA * (-1 + GAMMA * 0), -1 + GAMMA * 0, 0.0], rtol=1e-6)


def test_never_a_success_gets_the_infinite_horizon_failure_value():
    _, returns = episode_rewards_and_returns(np.zeros(4), np.zeros(4), GAMMA, RewardConfig(10.0, -5.0, sparse=True))
    np.testing.assert_allclose(returns, np.full(4, -5.0 / (1 - GAMMA)))


def test_terminal_in_the_middle_cuts_the_sum():
    rewards = np.array([1.0, 2.0, 3.0, 4.0])
    terminals = np.array([0, 1, 0, 0])
    np.testing.assert_allclose(mc_returns(rewards, terminals, GAMMA), [1 + GAMMA * 2, 2, 3 + GAMMA * 4, 4], rtol=1e-6)


def test_truncation_is_not_bootstrapped():
    # dense rewards, cut by the time limit: the last step's return is its reward alone
    _, returns = episode_rewards_and_returns(np.array([0.5, 0.5]), np.zeros(2), GAMMA, RewardConfig(2.0, 0.0, sparse=False))
    np.testing.assert_allclose(returns, [1 + GAMMA * 1, 1], rtol=1e-6)


def test_reward_transform_and_shape_check():
    np.testing.assert_allclose(transform_rewards(np.array([0.0, 1.0]), 10.0, -5.0), [-5.0, 5.0])
    with pytest.raises(ValueError, match="1-d"):
        mc_returns(np.zeros(3), np.zeros(2), GAMMA)
