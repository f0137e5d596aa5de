"""Update throughput of every algorithm: ``python -m bench.update [--algos calql,iql] [--batch-size 256]``.

Each algorithm at its reference settings (its config's defaults: for Cal-QL and CQL 10 sampled
actions per CQL term and a max backup over 10 target actions), two 256-wide critics, the
default conv encoder with random shift, batch 256 of 48x48 images by default. Prints gradient
updates/s on the CPU (and on CUDA when present), the FLOPs of one update (counted by torch's
FLOP counter, forward and backward) and the GFLOP/s reached; ``--profile`` adds where the time
goes (torch profiler, top operators by self time).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from datasets.replay import Batch, obs_spec_of
from perception.encoders import EncoderConfig
from policy.agent import Agent
from policy.algorithms import REGISTRY, make_agent


def synthetic_batch(batch_size: int, image_size: int, rng: np.random.Generator) -> Batch:
    def obs() -> dict:
        return {
            "agentview_image": rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8),
            "robot0_eef_pos": rng.normal(size=(batch_size, 3)).astype(np.float32),
            "robot0_gripper_qpos": rng.normal(size=(batch_size, 2)).astype(np.float32),
        }

    return Batch(
        obs=obs(), next_obs=obs(),
        actions=rng.uniform(-1, 1, (batch_size, 4)).astype(np.float32),
        rewards=-np.ones(batch_size, np.float32),
        terminals=np.zeros(batch_size, np.float32),
        timeouts=np.zeros(batch_size, np.float32),
        mc_returns=rng.uniform(-100, 0, batch_size).astype(np.float32),
        discounts=np.full(batch_size, 0.99, np.float32),
        online=(np.arange(batch_size) % 2).astype(np.float32),  # half online, as in fine-tuning
    )


def reference_agent(name: str, batch: Batch, device: str) -> Agent:
    return make_agent(REGISTRY[name].config(), obs_spec_of(batch.obs), 4, EncoderConfig(), device)


def updates_per_second(agent: Agent, batch: Batch, seconds: float) -> float:
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
    parser.add_argument("--algos", default=",".join(REGISTRY), help="comma-separated registered algorithms")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per algorithm and device")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--profile", action="store_true", help="print the top operators of each algorithm's update")
    args = parser.parse_args()
    names = args.algos.split(",")
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        parser.error(f"unknown algorithm(s) {unknown}; registered: {', '.join(REGISTRY)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = synthetic_batch(args.batch_size, args.image_size, np.random.default_rng(0))
    print(f"batch {args.batch_size}, {args.image_size}x{args.image_size} images, {torch.get_num_threads()} CPU threads")
    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    print(f"{'algo':<8}{'CPU updates/s':>15}{'GFLOP/update':>14}{'CPU GFLOP/s':>13}" + (f"{'CUDA updates/s':>16}" if cuda else ""))
    for name in names:
        torch.manual_seed(0)
        agent = reference_agent(name, batch, "cpu")
        counter = FlopCounterMode(display=False)
        with counter:
            agent.update(batch)
        flops = counter.get_total_flops()
        rate = updates_per_second(agent, batch, args.seconds)
        row = f"{name:<8}{rate:>15.2f}{flops / 1e9:>14.2f}{flops * rate / 1e9:>13.1f}"
        if cuda:
            row += f"{updates_per_second(reference_agent(name, batch, 'cuda'), batch, args.seconds):>16.1f}"
        print(row, flush=True)
        if args.profile:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    agent.update(batch)
            print(f"where {name}'s time goes (5 updates, top operators by self CPU time):")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    print(f"CUDA: {cuda}" if cuda else "CUDA: not available on this machine")


if __name__ == "__main__":
    main()
