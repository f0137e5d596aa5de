"""Cal-QL update throughput: ``python -m bench.update [--batch-size 256] [--image-size 48]``.

Reference settings: batch 256, 48x48 images, 10 sampled actions per CQL term, max backup
over 10 target actions, two 256-wide critics, the default conv encoder with random shift.
Prints gradient updates/s on the CPU (and on CUDA when present), the FLOPs of one update
(counted by torch's FLOP counter, forward and backward), the GFLOP/s reached, and where the
time goes (torch profiler, top operators by self time).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from perception.encoders import EncoderConfig
from policy.calql import CalQLAgent, CalQLConfig


def synthetic_batch(batch_size: int, image_size: int, rng: np.random.Generator) -> dict:
    def obs() -> dict:
        return {
            "agentview_image": rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8),
            "robot0_eef_pos": rng.normal(size=(batch_size, 3)).astype(np.float32),
            "robot0_gripper_qpos": rng.normal(size=(batch_size, 2)).astype(np.float32),
        }

    return {
        "obs": obs(), "next_obs": obs(),
        "actions": rng.uniform(-1, 1, (batch_size, 4)).astype(np.float32),
        "rewards": -np.ones(batch_size, np.float32),
        "terminals": np.zeros(batch_size, np.float32),
        "timeouts": np.zeros(batch_size, np.float32),
        "mc_returns": rng.uniform(-100, 0, batch_size).astype(np.float32),
    }


def make_agent(batch: dict, device: str) -> CalQLAgent:
    spec = {k: {"shape": list(v.shape[1:]), "dtype": str(v.dtype)} for k, v in batch["obs"].items()}
    return CalQLAgent(spec, 4, CalQLConfig(), EncoderConfig(), device)


def updates_per_second(agent: CalQLAgent, batch: dict, seconds: float) -> float:
    for _ in range(3):
        agent.update(batch)
    if agent.device.type == "cuda":
        torch.cuda.synchronize()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        agent.update(batch)
        count += 1
    if agent.device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = synthetic_batch(args.batch_size, args.image_size, np.random.default_rng(0))

    agent = make_agent(batch, "cpu")
    counter = FlopCounterMode(display=False)
    with counter:
        agent.update(batch)
    flops = counter.get_total_flops()
    rate = updates_per_second(agent, batch, args.seconds)
    print(f"Cal-QL update, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
          f"{torch.get_num_threads()} CPU threads: {rate:.2f} updates/s")
    print(f"FLOPs per update: {flops / 1e9:.2f} GFLOP; reached {flops * rate / 1e9:.1f} GFLOP/s")

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            agent.update(batch)
    print("where the time goes (5 updates, top operators by self CPU time):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))

    if torch.cuda.is_available():
        gpu_agent = make_agent(batch, "cuda")
        gpu_rate = updates_per_second(gpu_agent, batch, args.seconds)
        print(f"CUDA ({torch.cuda.get_device_name()}): {gpu_rate:.1f} updates/s, {flops * gpu_rate / 1e9:.0f} GFLOP/s")
    else:
        print("CUDA: not available on this machine")


if __name__ == "__main__":
    main()
