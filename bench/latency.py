"""Exported-policy latency: ``python -m bench.latency [--checkpoint PATH | --policy policy.pt] [--batch N]``.

Prints p50 and p99 latency of the TorchScript policy and of the ONNX model under ONNX Runtime,
single observation (batch 1) unless ``--batch`` says otherwise, at one CPU thread. Without a
file it exports a freshly initialised Cal-QL policy for the default pickplace observations
(48x48 image, end-effector position, gripper state): latency does not depend on the weights.
With ``--policy`` the ONNX model is the ``.onnx`` file beside it, when there is one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime
import torch

from perception.encoders import EncoderConfig
from policy.algorithms import make_agent
from policy.calql import CalQLConfig
from policy.checkpoint import agent_checkpoint, save_checkpoint
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
    save_checkpoint(path, agent_checkpoint(agent, spec, {"name": "pickplace", "kwargs": {"image_size": image_size}}))


def percentiles_ms(run: Callable[[], object], iterations: int) -> tuple[float, float]:
    """p50 and p99 wall time of ``run()`` in milliseconds, after a warm-up."""
    for _ in range(100):
        run()
    times = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter()
        run()
        times[i] = time.perf_counter() - start
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def onnx_session(path: Path) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session at one thread, like the TorchScript measurement."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="export this checkpoint")
    parser.add_argument("--policy", help="an already exported TorchScript file (its .onnx sibling is measured too)")
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--batch", type=int, default=1, help="observations per call")
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.policy) if args.policy else Path(tmp) / "policy.pt"
        if not args.policy:
            checkpoint = Path(args.checkpoint) if args.checkpoint else Path(tmp) / "fresh.pt"
            if not args.checkpoint:
                fresh_checkpoint(checkpoint, args.image_size)
            export_policy(checkpoint, path, ("onnx",))
        policy = torch.jit.load(str(path))
        rng = np.random.default_rng(0)
        keys, shapes, dtypes = policy.obs_keys(), policy.input_shapes(), policy.input_dtypes()
        arrays = [
            rng.integers(0, 256, [args.batch, *s], dtype=np.uint8) if d == "uint8"
            else rng.normal(size=[args.batch, *s]).astype(np.float32)
            for s, d in zip(shapes, dtypes)
        ]
        inputs = [torch.from_numpy(a) for a in arrays]
        with torch.no_grad():
            results["TorchScript"] = percentiles_ms(lambda: policy(inputs), args.iterations)
        onnx_path = path.with_suffix(".onnx")
        if onnx_path.is_file():
            session, feed = onnx_session(onnx_path), dict(zip(keys, arrays))
            results[f"ONNX Runtime {onnxruntime.__version__}"] = percentiles_ms(lambda: session.run(None, feed), args.iterations)
        else:
            print(f"no ONNX model {onnx_path}: export with format=onnx to measure ONNX Runtime")
    for runtime, (p50, p99) in results.items():
        print(f"{runtime}, batch {args.batch}, {shapes}, 1 CPU thread: p50 {p50:.3f} ms, p99 {p99:.3f} ms")


if __name__ == "__main__":
    main()
