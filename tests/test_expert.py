import numpy as np
import pytest

from sim.expert import ScriptedExpert


def _success_rate(env, mode: str, noise: float, episodes: int) -> tuple[float, float]:
    expert = ScriptedExpert(env.unwrapped.config.max_delta, mode=mode, noise=noise)
    successes, lengths = [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=1000 + episode)
        expert.reset(np.random.default_rng(episode))
        for step in range(env.unwrapped.config.horizon):
            obs, reward, terminated, truncated, info = env.step(expert.act(obs))
            if terminated or truncated:
                break
        successes.append(info["is_success"])
        lengths.append(step + 1)
    return float(np.mean(successes)), float(np.mean(lengths))


def test_noise_free_expert_succeeds_in_two_thirds_of_the_horizon(pickplace_env):
    rate, length = _success_rate(pickplace_env, "pick_place", 0.0, 20)
    assert rate >= 0.95
    horizon = pickplace_env.unwrapped.config.horizon
    assert 0.5 * horizon < length < 0.8 * horizon


@pytest.mark.parametrize("mode", ["grasp_only", "failed_grasp"])
def test_partial_modes_never_succeed(pickplace_env, mode):
    rate, _ = _success_rate(pickplace_env, mode, 0.1, 4)
    assert rate == 0.0


def test_grasp_only_lifts_the_cube(pickplace_env):
    expert = ScriptedExpert(pickplace_env.unwrapped.config.max_delta, mode="grasp_only")
    obs, _ = pickplace_env.reset(seed=5)
    expert.reset(np.random.default_rng(0))
    start_z = obs["object"][2]
    for _ in range(25):
        obs, *_ = pickplace_env.step(expert.act(obs))
    assert obs["object"][2] > start_z + 0.05  # held by friction, in the air


def test_unknown_mode_and_negative_noise_raise():
    with pytest.raises(ValueError, match="unknown expert mode"):
        ScriptedExpert(0.04, mode="teleport")
    with pytest.raises(ValueError, match="noise"):
        ScriptedExpert(0.04, noise=-0.1)
