"""Exported-policy latency: ``python -m bench.latency [--checkpoint PATH | --policy policy.pt]``.

Prints p50 and p99 single-observation (batch 1) latency of the TorchScript policy at one CPU
thread. Without a file it exports a freshly initialised Cal-QL policy for the default
pickplace observations (48x48 image, end-effector position, gripper state): latency does not
depend on the weights.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from perception.encoders import EncoderConfig
from policy.algorithms import make_agent
from policy.calql import CalQLConfig
from policy.checkpoint import save_checkpoint
from policy.export import export_policy

DEFAULT_SPEC = {
    "agentview_image": {"shape": [48, 48, 3], "dtype": "uint8"},
    "robot0_eef_pos": {"shape": [3], "dtype": "float32"},
    "robot0_gripper_qpos": {"shape": [2], "dtype": "float32"},
}


def fresh_checkpoint(path: Path, image_size: int) -> None:
    spec = {k: dict(v) for k, v in DEFAULT_SPEC.items()}
    spec["agentview_image"]["shape"] = [image_size, image_size, 3]
    agent = make_agent(CalQLConfig(), spec, 4, EncoderConfig())
    config = {"algo": asdict(CalQLConfig()), "encoder": asdict(EncoderConfig())}
    save_checkpoint(path, {"algo": "calql", "config": config, "obs_spec": spec, "action_dim": 4,
                           "env": {"name": "pickplace", "kwargs": {"image_size": image_size}},
                           "agent": agent.training_state(), "step": 0})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="export this checkpoint")
    parser.add_argument("--policy", help="an already exported TorchScript file")
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.policy) if args.policy else Path(tmp) / "policy.pt"
        if not args.policy:
            checkpoint = Path(args.checkpoint) if args.checkpoint else Path(tmp) / "fresh.pt"
            if not args.checkpoint:
                fresh_checkpoint(checkpoint, args.image_size)
            export_policy(checkpoint, path)
        policy = torch.jit.load(str(path))
        rng = np.random.default_rng(0)
        shapes, dtypes = policy.input_shapes(), policy.input_dtypes()
        inputs = [
            torch.from_numpy(rng.integers(0, 256, [1, *s], dtype=np.uint8)) if d == "uint8"
            else torch.from_numpy(rng.normal(size=[1, *s]).astype(np.float32))
            for s, d in zip(shapes, dtypes)
        ]
        with torch.no_grad():
            for _ in range(100):
                policy(inputs)
            times = np.empty(args.iterations)
            for i in range(args.iterations):
                start = time.perf_counter()
                policy(inputs)
                times[i] = time.perf_counter() - start
    print(f"exported policy, batch 1, {shapes}, 1 CPU thread: "
          f"p50 {np.percentile(times, 50) * 1e3:.3f} ms, p99 {np.percentile(times, 99) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
