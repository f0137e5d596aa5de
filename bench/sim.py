"""Simulation throughput: ``python -m bench.sim [--steps N]``.

Prints env steps/s of ``pickplace`` at 48x48 in one process and with 2 AsyncVectorEnv workers,
its reset time, and robosuite's Lift with a 64 px camera at robosuite's defaults, for scale.
Actions are uniformly random; episodes are reset when they end.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import sim


def single_env_rate(steps: int) -> tuple[float, float]:
    env = sim.make_env("pickplace")
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    for _ in range(20):  # warm-up: GL context and caches
        env.step(rng.uniform(-1, 1, 4))
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 4))
        if terminated or truncated:
            env.reset()
    rate = steps / (time.perf_counter() - start)
    start = time.perf_counter()
    for seed in range(100):
        env.reset(seed=seed)
    reset_ms = (time.perf_counter() - start) * 10.0
    env.close()
    return rate, reset_ms


def vector_env_rate(num_envs: int, steps: int) -> float:
    envs = sim.make_vector_env("pickplace", num_envs)
    rng = np.random.default_rng(0)
    envs.reset(seed=list(range(num_envs)))
    for _ in range(20):
        envs.step(rng.uniform(-1, 1, (num_envs, 4)))
    start = time.perf_counter()
    for _ in range(steps // num_envs):
        envs.step(rng.uniform(-1, 1, (num_envs, 4)))  # workers autoreset finished episodes
    rate = (steps // num_envs) * num_envs / (time.perf_counter() - start)
    envs.close()
    return rate


def robosuite_lift_rate(steps: int) -> float:
    import robosuite

    env = robosuite.make(
        "Lift", robots="Panda", has_renderer=False, has_offscreen_renderer=True,
        use_camera_obs=True, camera_heights=64, camera_widths=64,
    )
    env.reset()
    low, high = env.action_spec
    rng = np.random.default_rng(0)
    for _ in range(5):
        env.step(rng.uniform(low, high))
    start = time.perf_counter()
    for _ in range(steps):
        env.step(rng.uniform(low, high))
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="env steps per pickplace measurement")
    parser.add_argument("--robosuite-steps", type=int, default=200)
    args = parser.parse_args()

    single, reset_ms = single_env_rate(args.steps)
    print(f"pickplace 48x48, 1 process     : {single:7.1f} steps/s   reset {reset_ms:.1f} ms", flush=True)
    vector = vector_env_rate(2, args.steps)
    print(f"pickplace 48x48, 2 workers     : {vector:7.1f} steps/s", flush=True)
    lift = robosuite_lift_rate(args.robosuite_steps)
    print(f"robosuite Lift, 64 px, defaults: {lift:7.1f} steps/s", flush=True)
    print(f"ratio pickplace (1 process) / Lift: {single / lift:.1f}x; (2 workers) / Lift: {vector / lift:.1f}x")


if __name__ == "__main__":
    main()
