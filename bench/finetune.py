"""End-to-end fine-tuning throughput: ``python -m bench.finetune [--checkpoint PATH] [--env-steps 1000]``.

Runs the real fine-tuning loop (parallel sim workers, episodes into the device-resident online
buffer, UTD updates on batches mixing offline and online data) in a temporary run directory,
without evaluations or videos, and prints env steps/s and how the time splits between
simulation and learning. From ``--checkpoint`` it fine-tunes that policy; without one it starts
a reference Cal-QL agent from scratch, mixing in the default dataset (made first if missing).
Start-up (sim workers, the first batches, compiling with ``--compile``) is left out: the
timed steps follow ``--warmup-steps`` untimed ones. ``--cuda-graphs`` and ``--encoder-bf16`` are
the fine-tuning options of the same names.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from policy.algorithms import REGISTRY, lookup
from policy.config import DatasetConfig, FinetuneConfig
from policy.finetune import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a pretrained checkpoint (default: a new agent of --algo)")
    parser.add_argument("--algo", default="calql", help=f"without a checkpoint: one of {', '.join(REGISTRY)}")
    parser.add_argument("--env-steps", type=int, default=1000, help="timed env steps, after the warm-up")
    parser.add_argument("--warmup-steps", type=int, default=200, help="untimed env steps first")
    parser.add_argument("--num-envs", type=int, default=0, help="sim workers (0: one per CPU core but one, at least 2)")
    parser.add_argument("--utd", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="the networks through torch.compile")
    parser.add_argument("--cuda-graphs", action="store_true", help="with --compile on CUDA: replayed as CUDA graphs")
    parser.add_argument("--encoder-bf16", action="store_true", help="the image trunks under bfloat16 autocast")
    parser.add_argument("--dataset", help="offline data to mix in (default: the checkpoint's, or the default dataset)")
    args = parser.parse_args()
    if args.checkpoint and not Path(args.checkpoint).is_file():
        parser.error(f"checkpoint not found: {args.checkpoint}")
    config = FinetuneConfig(
        checkpoint=args.checkpoint, algo=None if args.checkpoint else lookup(args.algo).config(),
        dataset=DatasetConfig(path=args.dataset), env_steps=args.env_steps, utd=args.utd, batch_size=args.batch_size,
        eval_every=10 * (args.env_steps + args.warmup_steps), eval_at_start=False, eval_episodes=1, eval_workers=1, video=False,
        checkpoint_every=10 * (args.env_steps + args.warmup_steps), log_every=10**9, device=args.device, threads=args.threads,
        compile=args.compile, cuda_graphs=args.cuda_graphs, encoder_bf16=args.encoder_bf16, num_envs=args.num_envs,
    )
    with tempfile.TemporaryDirectory() as run_dir:
        try:
            workspace = Workspace(config, Path(run_dir))
        except ValueError as error:  # a setting that cannot apply here: one line, before any work
            parser.error(str(error))
        try:
            # start-up (sim workers, the first batches, compiling) is timed apart
            config.env_steps = args.warmup_steps
            start = time.perf_counter()
            workspace.train(loop_only=True)
            warmup = time.perf_counter() - start
            config.env_steps = args.warmup_steps + args.env_steps
            first_step, first_update = workspace.env_steps, workspace.updates
            start = time.perf_counter()
            result = workspace.train(loop_only=True)
            wall = time.perf_counter() - start
        finally:
            workspace.close()
    device = workspace.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    steps, updates = workspace.env_steps - first_step, workspace.updates - first_update
    sim, learn = result["sim_seconds"], result["learn_seconds"]
    speed = [option for option, on in (("compiled", args.compile), ("CUDA graphs", args.cuda_graphs),
                                        ("bf16 encoder", args.encoder_bf16)) if on]
    print(f"{workspace.algo} on {name} ({torch.get_num_threads()} threads), {config.num_envs} sim workers rendering with {workspace.session.renderer}, "
          f"UTD {args.utd}, batch {args.batch_size}{''.join(', ' + option for option in speed)}; "
          f"warm-up {workspace.env_steps - steps} env steps in {warmup:.1f} s")
    print(f"{steps} env steps, {updates} updates in {wall:.1f} s: {steps / wall:.1f} env steps/s, {updates / wall:.1f} updates/s; "
          f"simulation {sim:.1f} s ({100 * sim / wall:.0f}%), learning {learn:.1f} s ({100 * learn / wall:.0f}%)")

if __name__ == "__main__":
    main()
