import numpy as np
import pytest

from policy.evaluation import Evaluator
from sim.expert import ScriptedExpert
from sim.pickplace import HOME_EEF_POS


class _ExpertPolicy:
    """Scripted experts behind the batched policy interface the Evaluator calls."""

    def __init__(self, count: int) -> None:
        self.experts = [ScriptedExpert(0.04) for _ in range(count)]

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        actions = []
        for i, expert in enumerate(self.experts):
            if np.allclose(obs["robot0_eef_pos"][i], HOME_EEF_POS, atol=1e-3):  # a fresh episode
                expert.reset(np.random.default_rng(i))
            actions.append(expert.act({k: v[i] for k, v in obs.items()}))
        return np.stack(actions)


def test_evaluator_reports_the_success_of_the_policy_it_runs():
    evaluator = Evaluator("pickplace", {}, workers=2, seed=500)
    try:
        expert = evaluator.run(_ExpertPolicy(2), episodes=5)
        idle = evaluator.run(lambda obs: np.zeros((2, 4)), episodes=3)
    finally:
        evaluator.close()
    assert expert["success_rate"] == 1.0 and expert["return"] == 1.0 and expert["episode_length"] < 45
    assert idle == {"success_rate": 0.0, "return": 0.0, "episode_length": 45.0}


def test_calibration_metrics_on_a_hand_built_batch():
    from datasets.replay import Batch
    from policy.evaluation import calibration_metrics

    class FixedCritic:
        def q_values(self, obs, actions=None):
            return np.array([-10.0, -30.0]) if actions is None else np.array([-20.0, -40.0])

    zeros = np.zeros(2, np.float32)
    batch = Batch(obs={"x": np.zeros((2, 1))}, next_obs={"x": np.zeros((2, 1))}, actions=np.zeros((2, 1)), rewards=zeros,
                  terminals=zeros, timeouts=zeros, mc_returns=np.array([-100.0, -300.0]), discounts=zeros, online=zeros)
    metrics = calibration_metrics(FixedCritic(), batch, "online_")
    assert metrics == {"online_q_policy": -20.0, "online_q_data": -30.0, "online_mc_return": -200.0,
                       "online_q_policy_minus_mc": 180.0, "online_q_policy_below_mc": 0.0, "online_q_data_mc_corr": 1.0}
    # the second state's policy action (-30) is valued below its return (-20), the first's is not
    below = Batch(**{**batch.__dict__, "mc_returns": np.array([-100.0, -20.0])})
    metrics = calibration_metrics(FixedCritic(), below)
    assert metrics["q_policy_below_mc"] == 0.5 and metrics["q_policy_minus_mc"] == ((-10 + 100) + (-30 + 20)) / 2
    assert metrics["q_data_mc_corr"] == pytest.approx(-1.0)  # the higher-valued action has the lower return
