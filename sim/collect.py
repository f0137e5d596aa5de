"""Scripted data collection: ``python -m sim.collect task=pickplace episodes=N out=PATH``.

Runs the scripted expert in ``workers`` processes and streams the episodes, in order, into a
robomimic-format HDF5 file. Episode ``i`` depends only on ``(seed, i)``, so a file is the same
whatever the number of workers. With no arguments it writes the default ``pickplace`` dataset.
"""

from __future__ import annotations

import multiprocessing
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import hydra
from hydra.core.hydra_config import HydraConfig
import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from tqdm import tqdm

import sim
from datasets.command_line import check_overrides, remove_empty_run_dir
from datasets.episode import Episode
from datasets.robomimic_hdf5 import write_dataset
from sim.expert import MODES, ScriptedExpert
from sim.pickplace import PickPlaceConfig
from sim.rollout import play_episode

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATASETS = {"pickplace": PROJECT_ROOT / "data" / "pickplace.hdf5"}


@dataclass
class ModeMix:
    """Share of episodes per expert mode and the range their action noise is drawn from."""

    weight: float
    noise_low: float
    noise_high: float


@dataclass
class CollectConfig:
    task: str = "pickplace"
    episodes: int = 1000
    out: str | None = None  # default: data/<task>.hdf5 in the project
    seed: int = 0
    workers: int = 2
    valid_fraction: float = 0.1
    overwrite: bool = False  # replace an existing file at `out` (only once the new one is complete)
    env: dict[str, Any] = field(default_factory=dict)  # keyword arguments for sim.make_env
    mix: dict[str, ModeMix] = field(
        default_factory=lambda: {
            "pick_place": ModeMix(0.6, 0.1, 0.4),
            "grasp_only": ModeMix(0.2, 0.1, 0.3),
            "failed_grasp": ModeMix(0.2, 0.1, 0.3),
        }
    )


ConfigStore.instance().store(name="collect_schema", node=CollectConfig)


def _validate(config: CollectConfig) -> None:
    if config.task not in sim.TASKS:
        raise ValueError(f"unknown task {config.task!r}; available tasks: {', '.join(sorted(sim.TASKS))}")
    if config.task != "pickplace":
        raise ValueError(f"there is a scripted expert only for 'pickplace', not {config.task!r}")
    if config.episodes < 1:
        raise ValueError(f"episodes must be positive, got {config.episodes}")
    if config.workers < 1:
        raise ValueError(f"workers must be positive, got {config.workers}")
    if config.seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {config.seed}")
    unknown = set(config.mix) - set(MODES)
    if unknown:
        raise ValueError(f"unknown expert modes in mix: {sorted(unknown)}; available: {', '.join(MODES)}")
    weights = [m.weight for m in config.mix.values()]
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"mix weights must be non-negative with a positive sum, got {weights}")


_worker_env = None
_worker_config: CollectConfig | None = None


def _init_worker(config: CollectConfig) -> None:
    global _worker_env, _worker_config
    _worker_config = config
    _worker_env = sim.make_env(config.task, **config.env)


def _episode_plan(config: CollectConfig, index: int) -> tuple[str, float, int, np.random.Generator]:
    """Expert mode, noise, env seed and expert generator of episode ``index``."""
    rng = np.random.default_rng([config.seed, index])
    modes = list(config.mix)
    weights = np.array([config.mix[m].weight for m in modes], dtype=float)
    mode = modes[rng.choice(len(modes), p=weights / weights.sum())]
    noise = float(rng.uniform(config.mix[mode].noise_low, config.mix[mode].noise_high))
    return mode, noise, int(rng.integers(2**31)), rng


def run_episode(env, config: CollectConfig, index: int) -> Episode:
    """Roll out the scripted expert for episode ``index`` of a collection."""
    mode, noise, env_seed, rng = _episode_plan(config, index)
    expert = ScriptedExpert(env.unwrapped.config.max_delta, mode=mode, noise=noise)
    expert.reset(rng)
    episode, _ = play_episode(env, expert.act, env_seed, states=True)
    episode.attrs = {"mode": mode, "noise": noise, "env_seed": env_seed, **episode.attrs}
    return episode


def _worker_episode(index: int) -> Episode:
    return run_episode(_worker_env, _worker_config, index)


def collect(config: CollectConfig) -> dict[str, Any]:
    """Collect ``config.episodes`` episodes into ``config.out``; returns a summary."""
    _validate(config)
    try:  # the full task config, so that the file rebuilds the same env even if defaults change
        env_kwargs = asdict(PickPlaceConfig(**config.env))
    except TypeError as error:
        raise ValueError(f"bad env argument: {error}") from None
    out = Path(config.out) if config.out else DEFAULT_DATASETS[config.task]
    if out.exists() and not config.overwrite:
        raise ValueError(f"{out} already exists: write the dataset elsewhere with out=PATH, or replace it with "
                         f"overwrite=true (the old file stays until the new one is complete)")
    summary: dict[str, Any] = {"episodes": 0, "transitions": 0, "successes": 0, "by_mode": {}}

    def episodes() -> Iterator[Episode]:
        context = multiprocessing.get_context("spawn")  # each worker owns a fresh GL context
        with context.Pool(config.workers, initializer=_init_worker, initargs=(config,)) as pool, \
                tqdm(total=config.episodes, desc=f"collect {config.task}", unit="ep") as bar:
            for episode in pool.imap(_worker_episode, range(config.episodes), chunksize=4):
                bar.update(1)
                mode = summary["by_mode"].setdefault(episode.attrs["mode"], {"episodes": 0, "successes": 0})
                mode["episodes"] += 1
                mode["successes"] += int(episode.attrs["success"])
                summary["episodes"] += 1
                summary["transitions"] += len(episode)
                summary["successes"] += int(episode.attrs["success"])
                yield episode

    env_args = {"env_name": config.task, "env_kwargs": env_kwargs}
    stream = episodes()
    try:
        write_dataset(out, stream, env_args, valid_fraction=config.valid_fraction,
                      attrs={"collection": OmegaConf.to_yaml(OmegaConf.structured(config))})
    finally:
        stream.close()  # workers stopped and the progress bar closed before any error is printed
    summary["success_rate"] = summary["successes"] / summary["episodes"]
    summary["path"] = str(out)
    return summary


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "configs"), config_name="collect")
def main(cfg) -> None:
    config: CollectConfig = OmegaConf.to_object(cfg)
    try:
        summary = collect(config)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        remove_empty_run_dir(Path(HydraConfig.get().runtime.output_dir))
        sys.exit(2)
    except OSError as error:  # a full disk or an unwritable destination
        print(f"error: {error}", file=sys.stderr)
        sys.exit(3)
    print(f"wrote {summary['path']}: {summary['episodes']} episodes, {summary['transitions']} transitions, "
          f"success rate {summary['success_rate']:.3f}")
    for mode, stats in sorted(summary["by_mode"].items()):
        print(f"  {mode:13s} {stats['episodes']:5d} episodes, success rate {stats['successes'] / stats['episodes']:.3f}")


if __name__ == "__main__":
    check_overrides(sys.argv[1:], PROJECT_ROOT / "configs", "collect")
    main()
