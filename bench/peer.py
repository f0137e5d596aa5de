"""Update throughput of our Cal-QL next to d3rlpy 2.8.1's CalQL: ``python -m bench.peer [--shapes image,lowdim]``.

Both run in this process, on the CPU, at the same thread count, one after the other, each on
one fixed batch that already lies on the CPU as tensors; 3 untimed updates, then as many as fit
in ``--seconds``. For each shape it prints updates/s, GFLOP/update (forward and backward,
matrix multiplies and convolutions, by torch's FLOP counter around one update), GFLOP/s, and
the ratio of our updates/s to d3rlpy's. d3rlpy is an optional peer for this benchmark only
(``pip install d3rlpy==2.8.1``; it is not a dependency of the project).

Shapes: ``image`` is ``bench.update``'s batch: one 48x48x3 uint8 camera plus 3 + 2 low-dim
dims, action dim 4. ``lowdim`` is observations of 3 + 2 + 10 float32 dims, action dim 4.

Settings that match (d3rlpy's taken from our ``calql`` config): batch size; Adam with actor lr
1e-4, critic lr 3e-4, temperature lr 1e-4; initial temperature 1.0; conservative weight 5.0
fixed (d3rlpy's Lagrange multiplier frozen at 1: ``alpha_learning_rate=0``); CQL temperature 1;
10 actions per conservative term (random, current-policy at s, next-policy scored at s), policy
terms bounded below by the MC return (Cal-QL); a max backup over 10 target-policy actions of
the minimum of the target critics, no entropy in the backup (d3rlpy's ``max_q_backup=True``);
tau 5e-3, gamma 0.99; 2 critics with mean squared TD errors; SAC actor loss with automatic
temperature towards entropy -4; low-dim critics and actor with two 256-wide ReLU layers
(``VectorEncoderFactory(hidden_units=[256, 256])``).

Settings that differ (d3rlpy cannot express ours):

- Images: d3rlpy's ``PixelEncoderFactory`` with three 3x3 stride-2 convolutions of 16, 32, 32
  channels and feature size 64, as ours, but unpadded (48 -> 23 -> 11 -> 5 where ours, padded,
  gives 24 -> 12 -> 6) and its linear layer ends in ReLU (ours: LayerNorm and tanh). Its heads
  follow the encoder directly: the critic is conv -> concat(features, action) -> 64 -> 1 and the
  actor conv -> 64 -> (mean, log std), with no 256-wide layers; ours puts the two-layer
  256-wide critic and actor on the 64 features plus the 5 low-dim dims.
- Images: d3rlpy takes only the (3, 48, 48) image, as float in [0, 1]: its built-in encoders
  accept a single tensor (a tuple observation needs a custom encoder), so the 5 low-dim dims
  are left out. Ours takes the uint8 HWC image and converts it inside the update.
- Images: random-shift augmentation (4 px) on our side only; d3rlpy 2.8.1 has none.
- Images: d3rlpy gives the actor and each critic (and each target critic) its own conv encoder,
  the actor's trained by the actor loss, and runs a critic's encoder on every (state, action)
  pair it scores: per state and critic 32 encodings of s for the critic loss, 10 of s' for the
  backup and one of s for the actor loss. Ours has one encoder shared by both critics and
  trained by the critic loss, encodes s and s' once per update, and the actor reads its
  features detached.
- d3rlpy's critics run one after the other as separate modules, the dataset action scored
  twice (TD error and conservative term) apart from the 30 sampled ones; ours are one batched
  ensemble that scores all 31 actions of a state in one call and computes the state part of
  the first layer once per state.
- d3rlpy's actor backward also computes the critics' weight gradients (discarded); ours
  freezes the critics for it. d3rlpy's temperature loss multiplies by the temperature, ours by
  its log (same fixed point). d3rlpy clamps log std to [-20, 2], ours to [-5, 2].
- d3rlpy's updates read every loss back as a Python float (a synchronisation; free on the
  CPU); ours leave metrics as tensors. Its update is called as ``impl.update(batch, step)``
  on a prepared ``TorchMiniBatch``: ``algo.update`` would convert a numpy batch every time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import sys
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.update import calls_per_second, reference_agent, synthetic_batch, update_flops, updates_per_second
from datasets.replay import Batch
from perception.encoders import EncoderConfig
from policy.algorithms import REGISTRY
from policy.run import cpu_model, prepare_device

D3RLPY_VERSION = "2.8.1"
SHAPES = ("image", "lowdim")
IMAGE_SIZE = 48
ACTION_DIM = 4
LOWDIM_KEYS = {"robot0_eef_pos": 3, "robot0_gripper_qpos": 2, "object": 10}
DEVICE = "cpu:0"


def import_d3rlpy() -> Any:
    """d3rlpy at the version the settings above were matched against, or exit 2 with one line."""
    try:
        # d3rlpy imports gym, which prints a deprecation notice on import
        with contextlib.redirect_stderr(io.StringIO()):
            import d3rlpy
    except ImportError:
        d3rlpy = None
    if d3rlpy is None or d3rlpy.__version__ != D3RLPY_VERSION:
        print(f"error: bench.peer needs d3rlpy {D3RLPY_VERSION} (pip install d3rlpy=={D3RLPY_VERSION})", file=sys.stderr)
        sys.exit(2)
    return d3rlpy


def lowdim_batch(batch_size: int, rng: np.random.Generator) -> Batch:
    """``bench.update``'s batch with only low-dimensional observations (3 + 2 + 10 float32)."""
    def obs() -> dict[str, np.ndarray]:
        return {key: rng.normal(size=(batch_size, dims)).astype(np.float32) for key, dims in LOWDIM_KEYS.items()}

    return dataclasses.replace(synthetic_batch(batch_size, IMAGE_SIZE, rng), obs=obs(), next_obs=obs())


def d3rlpy_observations(obs: dict[str, torch.Tensor], image: bool) -> torch.Tensor:
    """What d3rlpy's encoders take: the camera as float CHW in [0, 1] (its pixel scaler's
    output), or the low-dim keys concatenated."""
    if image:
        return obs["agentview_image"].permute(0, 3, 1, 2).float().div(255.0).contiguous()
    return torch.cat([obs[key] for key in sorted(obs)], dim=1)


def d3rlpy_batch(batch: Batch, image: bool) -> Any:
    """The same transitions as d3rlpy's ``TorchMiniBatch``, with the MC returns as returns-to-go."""
    from d3rlpy.torch_utility import TorchMiniBatch

    def column(values: torch.Tensor) -> torch.Tensor:
        return values.reshape(-1, 1)

    return TorchMiniBatch(
        observations=d3rlpy_observations(batch.obs, image),
        actions=batch.actions,
        rewards=column(batch.rewards),
        next_observations=d3rlpy_observations(batch.next_obs, image),
        next_actions=batch.actions,  # unused by CalQL
        returns_to_go=column(batch.mc_returns),
        terminals=column(batch.terminals),
        intervals=torch.ones(len(batch), 1),
        device=DEVICE,
    )


def d3rlpy_calql(observation_shape: tuple[int, ...], batch_size: int) -> Any:
    """d3rlpy's CalQL at our ``calql`` reference settings, as far as its config reaches."""
    from d3rlpy.algos import CalQLConfig
    from d3rlpy.models.encoders import PixelEncoderFactory, VectorEncoderFactory

    ours = REGISTRY["calql"].config()
    if len(observation_shape) == 3:
        conv = EncoderConfig()
        encoder = PixelEncoderFactory(filters=[[channels, 3, 2] for channels in conv.channels],
                                      feature_size=conv.feature_dim)
    else:
        encoder = VectorEncoderFactory(hidden_units=[ours.hidden_dim, ours.hidden_dim])
    config = CalQLConfig(
        batch_size=batch_size,
        actor_learning_rate=ours.actor_lr,
        critic_learning_rate=ours.critic_lr,
        temp_learning_rate=ours.alpha_lr,
        initial_temperature=ours.init_entropy_alpha,
        alpha_learning_rate=0.0,  # a fixed conservative weight, as ours (cql_lagrange=false)
        initial_alpha=1.0,
        alpha_threshold=0.0,  # a constant offset of the penalty: no effect on gradients
        conservative_weight=ours.cql_alpha,
        n_action_samples=ours.cql_num_actions,  # also the max backup's number of actions
        max_q_backup=True,
        soft_q_backup=False,
        tau=ours.tau,
        gamma=ours.gamma,
        n_critics=2,
        actor_encoder_factory=encoder,
        critic_encoder_factory=encoder,
    )
    algo = config.create(device=DEVICE)
    algo.create_impl(observation_shape, ACTION_DIM)
    return algo


def d3rlpy_updates_per_second(algo: Any, batch: Any, seconds: float, warmup: int = 3) -> float:
    """Updates/s over about ``seconds`` after ``warmup`` untimed updates, as ``updates_per_second``."""
    return calls_per_second(lambda step: algo.impl.update(batch, step), seconds, torch.device("cpu"), warmup)


def d3rlpy_update_flops(observation_shape: tuple[int, ...], batch: Any, batch_size: int) -> int:
    """FLOPs of one d3rlpy update (forward and backward) on a fresh algorithm, as ``update_flops``."""
    torch.manual_seed(0)
    algo = d3rlpy_calql(observation_shape, batch_size)
    counter = FlopCounterMode(display=False)
    with counter:
        algo.impl.update(batch, 0)
    return counter.get_total_flops()


def measure(shape: str, batch_size: int, seconds: float) -> None:
    """Print one shape's table: ours, d3rlpy, and the ratio of their updates/s."""
    image = shape == "image"
    rng = np.random.default_rng(0)
    host_batch = synthetic_batch(batch_size, IMAGE_SIZE, rng) if image else lowdim_batch(batch_size, rng)
    batch = host_batch.to_torch("cpu")
    peer_batch = d3rlpy_batch(batch, image)
    observation_shape = tuple(peer_batch.observations.shape[1:])
    print(f"\n{shape}: batch {batch_size}, action dim {ACTION_DIM}; ours: "
          + ", ".join(f"{key} {tuple(value.shape[1:])} {str(value.dtype).removeprefix('torch.')}"
                      for key, value in batch.obs.items())
          + f"; d3rlpy: {observation_shape} float32")

    ours_flops, _ = update_flops("calql", host_batch)
    torch.manual_seed(0)
    ours_rate = updates_per_second(reference_agent("calql", batch, "cpu"), batch, seconds)
    peer_flops = d3rlpy_update_flops(observation_shape, peer_batch, batch_size)
    torch.manual_seed(0)
    peer_rate = d3rlpy_updates_per_second(d3rlpy_calql(observation_shape, batch_size), peer_batch, seconds)

    print(f"{'implementation':<16}{'updates/s':>11}{'GFLOP/update':>14}{'GFLOP/s':>9}")
    for name, rate, flops in (("ours", ours_rate, ours_flops), (f"d3rlpy {D3RLPY_VERSION}", peer_rate, peer_flops)):
        print(f"{name:<16}{rate:>11.2f}{flops / 1e9:>14.2f}{rate * flops / 1e9:>9.1f}")
    print(f"ours / d3rlpy updates/s: {ours_rate / peer_rate:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SHAPES), help="image and/or lowdim")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per implementation and shape")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    shapes = [shape for shape in args.shapes.split(",") if shape]
    if not shapes or not set(shapes) <= set(SHAPES):
        parser.error(f"--shapes takes {', '.join(SHAPES)}, got {args.shapes!r}")
    if args.threads < 1 or args.batch_size < 1:
        parser.error("--threads and --batch-size must be at least 1")
    d3rlpy = import_d3rlpy()
    prepare_device(torch.device("cpu"), args.threads)
    print(f"{torch.get_num_threads()} CPU threads on {cpu_model()}; torch {torch.__version__}, d3rlpy {d3rlpy.__version__}")
    for shape in shapes:
        measure(shape, args.batch_size, args.seconds)


if __name__ == "__main__":
    main()
