import csv

from policy.logger import MetricLogger


def _read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_metrics_that_appear_later_get_their_own_column(tmp_path):
    logger = MetricLogger(tmp_path)
    logger.log("train", 1, {"loss": 2.0, "bc_log_prob": -3.0})
    logger.log("train", 2, {"loss": 1.5, "q_policy": -40.0})
    logger.log("train", 3, {"loss": 1.0, "q_policy": -41.0})
    logger.close()
    assert _read(tmp_path / "train.csv") == [
        ["step", "loss", "bc_log_prob", "q_policy"],
        ["1", "2.0", "-3.0", ""],
        ["2", "1.5", "", "-40.0"],
        ["3", "1.0", "", "-41.0"],
    ]
    resumed = MetricLogger(tmp_path)  # a resumed run appends under the widened header
    resumed.log("train", 4, {"loss": 0.5, "q_policy": -42.0})
    resumed.close()
    assert _read(tmp_path / "train.csv")[-1] == ["4", "0.5", "", "-42.0"]
    assert not list(tmp_path.glob("*.tmp"))


def test_metric_window_averages_tensors_and_floats_and_skips_nan():
    import math

    import torch

    from policy.logger import MetricWindow

    window = MetricWindow()
    window.add({"loss": torch.tensor(1.0), "td_loss_online": torch.tensor(float("nan")), "share": 0.5})
    window.add({"loss": torch.tensor(3.0), "td_loss_online": torch.tensor(4.0), "share": 1.0})
    window.add({"loss": torch.tensor(5.0), "td_loss_online": torch.tensor(float("nan")), "never": torch.tensor(float("nan"))})
    assert len(window) == 3
    averages = window.averages()
    assert averages == {"loss": 3.0, "td_loss_online": 4.0, "share": 0.75}  # "never" had no value
    assert all(isinstance(v, float) and math.isfinite(v) for v in averages.values())
    assert window.averages() == {} and len(window) == 0


def test_non_finite_losses_are_reported_with_their_update_range():
    import numpy as np
    import pytest

    from datasets.replay import Batch, obs_spec_of
    from perception.encoders import EncoderConfig
    from policy.agent import NonFiniteLossError
    from policy.algorithms import make_agent
    from policy.td3bc import TD3BCConfig

    rng = np.random.default_rng(0)
    obs = {"state": rng.normal(size=(8, 3)).astype(np.float32)}
    ones = np.ones(8, np.float32)
    batch = Batch(obs=obs, next_obs=obs, actions=rng.uniform(-1, 1, (8, 2)).astype(np.float32), rewards=ones,
                  terminals=0 * ones, timeouts=0 * ones, mc_returns=ones, discounts=0.9 * ones, online=0 * ones)
    agent = make_agent(TD3BCConfig(hidden_dim=8), obs_spec_of(obs), 2, EncoderConfig())
    agent.update(batch)
    agent.raise_if_nonfinite()  # finite so far
    agent.update(batch)
    agent.update(Batch(**{**batch.__dict__, "rewards": np.full(8, np.nan, np.float32)}))
    agent.update(batch)
    with pytest.raises(NonFiniteLossError, match=r"^non-finite critic_loss(, actor_loss)? in updates 2 to 4$"):
        agent.raise_if_nonfinite()
    agent.raise_if_nonfinite()  # reported once: the next check covers later updates only
