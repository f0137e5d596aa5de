"""Update throughput of every algorithm: ``python -m bench.update [--algos calql,iql] [--devices cpu]``.

Each algorithm at its reference settings (its config's defaults: for Cal-QL and CQL 10 sampled
actions per CQL term and a max backup over 10 target actions), two 256-wide critics, the
default conv encoder with random shift, on a batch that already lies on the training device
(as the replay's batches do). For every algorithm, device (CPU, and CUDA when present), mode
(eager; compiled with ``torch.compile``; on CUDA also compiled and replayed as CUDA graphs),
precision of the image trunks (float32, and bfloat16 autocast as ``encoder_bf16=true`` where the
device has bfloat16 instructions), batch size and image size it prints:

- ``updates/s``: gradient updates per second;
- ``GFLOP/update``: the FLOPs of one update, forward and backward, counted by torch's FLOP
  counter (matrix multiplies and convolutions; element-wise work is not counted);
- ``GFLOP/s``: the two multiplied, what the update achieves;
- ``roofline``: GFLOP/s of this machine's single-precision matrix multiplies of the critic's
  own shapes, measured in the same run at the same thread count: the hidden layer's forward,
  input-gradient and weight-gradient products over the ensemble, at the largest number of
  (state, action) rows one critic call of the update scores (batch x 31 for Cal-QL and CQL);
- ``%roof``: the achieved GFLOP/s as a share of that roofline.

``--profile`` adds where the time goes (torch profiler, top operators, and the share of
matrix-multiply and convolution operators). The full matrix compiles every configuration once (a
minute or more each on a CPU): narrow it with the options for a quick look.
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Callable

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from datasets.replay import Batch, obs_spec_of
from perception.encoders import EncoderConfig
from policy.agent import Agent
from policy.algorithms import REGISTRY, make_agent
from policy.run import cpu_has_native_bf16, cpu_model, prepare_device

MODES = ("eager", "compiled", "cudagraphs")
# operators whose FLOPs the counter counts: the rest of an update's time is element-wise work,
# data movement and overhead
COUNTED_OPERATORS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::convolution_backward",
                     "aten::mkldnn_convolution", "aten::cudnn_convolution", "aten::_convolution")


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


def reference_agent(name: str, batch: Batch, device: str | torch.device) -> Agent:
    return make_agent(REGISTRY[name].config(), obs_spec_of(batch.obs), 4, EncoderConfig(), device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calls_per_second(call: Callable[[int], None], seconds: float, device: torch.device, warmup: int = 3) -> float:
    """Calls/s of ``call(index)`` over about ``seconds``, after ``warmup`` untimed calls (indices
    count from 0 through the warm-up); the device's queued work is waited for at both ends."""
    for index in range(warmup):
        call(index)
    synchronize(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call(warmup + count)
        count += 1
    synchronize(device)
    return count / (time.perf_counter() - start)


def updates_per_second(agent: Agent, batch: Batch, seconds: float, warmup: int = 3) -> float:
    """Updates/s over about ``seconds`` after ``warmup`` untimed updates (compiling happens
    there). Metrics stay on the device, as in training; the non-finite flags are read every 10
    updates, as the training loops do at each log row."""

    def update(index: int) -> None:
        agent.update(batch)
        if index % 10 == 9:
            agent.raise_if_nonfinite()

    rate = calls_per_second(update, seconds, agent.device, warmup)
    agent.raise_if_nonfinite()
    return rate


def update_flops(name: str, batch: Batch) -> tuple[int, int]:
    """FLOPs of one update (forward and backward), counted on the CPU in eager mode, and the most
    (state, action) rows that one critic call of the update scores."""
    torch.manual_seed(0)
    agent = reference_agent(name, batch, "cpu")
    rows = [0]
    hook = agent.critic.register_forward_hook(lambda module, inputs, output: rows.append(output[0].numel()))
    counter = FlopCounterMode(display=False)
    with counter:
        agent.update(batch)
    hook.remove()
    return counter.get_total_flops(), max(rows)


def matmul_roofline(rows: int, hidden_dim: int, num_critics: int, device: torch.device, seconds: float = 2.0) -> float:
    """GFLOP/s of the critic's hidden-layer products at ``rows`` rows, in float32 on ``device``:
    forward (rows x H by H x H), input gradient (by the transposed weight) and weight gradient
    (H x rows by rows x H), each batched over the ensemble, timed together."""
    generator = torch.Generator(device=device).manual_seed(0)
    activations = torch.randn(num_critics, rows, hidden_dim, device=device, generator=generator)
    gradients = torch.randn(num_critics, rows, hidden_dim, device=device, generator=generator)
    weight = torch.randn(num_critics, hidden_dim, hidden_dim, device=device, generator=generator)

    def products(index: int) -> None:
        torch.bmm(activations, weight)
        torch.bmm(gradients, weight.transpose(1, 2))
        torch.bmm(activations.transpose(1, 2), gradients)

    return 3 * 2 * num_critics * rows * hidden_dim**2 * calls_per_second(products, seconds, device, warmup=1) / 1e9


def counted_share(prof: profile) -> float:
    """Share of the profiled self CPU time spent in the operators whose FLOPs are counted."""
    events = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    counted = sum(event.self_cpu_time_total for event in events if event.key in COUNTED_OPERATORS)
    return counted / total if total else float("nan")


def parse_list(text: str, kind: type = str) -> list:
    return [kind(item) for item in text.split(",") if item]


def parse_arguments() -> tuple[argparse.Namespace, list[str], list[str], list[str], list[str]]:
    """The options, checked: algorithms, devices (CUDA dropped where absent), modes, precisions."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", default=",".join(REGISTRY), help="comma-separated registered algorithms")
    parser.add_argument("--devices", default="cpu,cuda", help="cpu and/or cuda (cuda is skipped where absent)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="eager, compiled (torch.compile) and/or cudagraphs (compiled, replayed as CUDA graphs; CUDA only)")
    parser.add_argument("--precisions", default=None,
                        help="fp32 and/or bf16 (the image trunks under bfloat16 autocast); default: both where the "
                             "CPU has bfloat16 instructions, else fp32")
    parser.add_argument("--batch-sizes", default="256,1024")
    parser.add_argument("--image-sizes", default="48,84")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per configuration")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--profile", action="store_true", help="print the top operators of each eager CPU update")
    args = parser.parse_args()
    names, modes, devices = parse_list(args.algos), parse_list(args.modes), parse_list(args.devices)
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        parser.error(f"unknown algorithm(s) {unknown}; registered: {', '.join(REGISTRY)}")
    if not set(modes) <= set(MODES) or not modes:
        parser.error(f"--modes takes {', '.join(MODES)}, got {args.modes!r}")
    precisions = parse_list(args.precisions) if args.precisions is not None else ["fp32", "bf16"]
    if not set(precisions) <= {"fp32", "bf16"} or not precisions:
        parser.error(f"--precisions takes fp32 and/or bf16, got {args.precisions!r}")
    if not set(devices) <= {"cpu", "cuda"} or not devices:
        parser.error(f"--devices takes cpu and/or cuda, got {args.devices!r}")
    if "cuda" in devices and not torch.cuda.is_available():
        devices.remove("cuda")
        print("CUDA: not available on this machine (CPU only)")
    if not devices:
        parser.error("no device to measure")
    if "bf16" in precisions and "cpu" in devices and not cpu_has_native_bf16():
        if args.precisions is not None:
            parser.error("--precisions bf16: this CPU has no bfloat16 instructions (it would run slower than float32); "
                         "use --precisions fp32")
        print("bf16: this CPU has no bfloat16 instructions (CPU rows in fp32 only)")
    return args, names, devices, modes, precisions


def print_profile(name: str, agent: Agent, batch: Batch) -> None:
    """Where an eager CPU update's time goes: the top operators, and the counted operators' share."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            agent.update(batch)
    print(f"where {name}'s time goes (5 updates, top operators by self CPU time):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    print(f"matrix multiplies and convolutions (the counted FLOPs): {100 * counted_share(prof):.0f}% of the "
          f"self CPU time; the rest is element-wise work, copies and overhead")


def main() -> None:
    args, names, devices, modes, precisions = parse_arguments()
    native_bf16 = cpu_has_native_bf16()
    for device in devices:
        prepare_device(torch.device(device), args.threads)
    cuda = torch.cuda.get_device_name() if "cuda" in devices else None
    print(f"{torch.get_num_threads()} CPU threads on {cpu_model()}" + (f"; CUDA: {cuda}" if cuda else ""))
    print(f"{'algo':<7}{'device':<7}{'mode':<11}{'encoder':<8}{'batch':>6}{'px':>4}{'updates/s':>11}{'GFLOP/update':>14}"
          f"{'GFLOP/s':>9}{'roofline':>10}{'%roof':>7}")
    rooflines: dict[tuple[str, int], float] = {}
    for name, batch_size, image_size in itertools.product(names, parse_list(args.batch_sizes, int), parse_list(args.image_sizes, int)):
        host_batch = synthetic_batch(batch_size, image_size, np.random.default_rng(0))
        flops, critic_rows = update_flops(name, host_batch)
        for device, mode, precision in itertools.product(devices, modes, precisions):
            if (mode == "cudagraphs" and device != "cuda") or (precision == "bf16" and device == "cpu" and not native_bf16):
                continue  # CUDA graphs exist on CUDA only; bf16 only where the CPU has it
            if (device, critic_rows) not in rooflines:
                hidden_dim = REGISTRY[name].config().hidden_dim
                rooflines[device, critic_rows] = matmul_roofline(critic_rows, hidden_dim, 2, torch.device(device))
            roofline = rooflines[device, critic_rows]
            batch = host_batch.to_torch(device)
            torch.manual_seed(0)
            agent = reference_agent(name, batch, device)
            agent.set_encoder_bf16(precision == "bf16")
            if mode != "eager":
                agent.compile_networks(cuda_graphs=mode == "cudagraphs")
            rate = updates_per_second(agent, batch, args.seconds)
            achieved = flops * rate / 1e9
            print(f"{name:<7}{device:<7}{mode:<11}{precision:<8}{batch_size:>6}{image_size:>4}{rate:>11.2f}"
                  f"{flops / 1e9:>14.2f}{achieved:>9.1f}{roofline:>10.1f}{100 * achieved / roofline:>6.0f}%", flush=True)
            if args.profile and device == "cpu" and mode == "eager":
                print_profile(name, agent, batch)


if __name__ == "__main__":
    main()
