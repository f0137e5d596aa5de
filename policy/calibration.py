"""How a checkpoint's critic compares with the Monte-Carlo returns of a dataset's states:
``python -m policy.calibration checkpoint=PATH [dataset_file=PATH] [filter_key=valid|null] [states=1024]``.

The returns are computed as the checkpoint's critic was trained: its discount, reward
transform and terminal rule. By default the states are the held-out ``valid`` split of the data
the checkpoint was trained on; ``dataset_file=`` scores another file (e.g. one collected with another
seed), ``filter_key=null`` every episode of it. ``rollout_episodes=N`` also runs the trained policy in
the checkpoint's env and scores the critic on the states it visits against the policy's own
returns (``rollout_*``). Prints the figures the training runs log (``q_data``, ``q_policy``,
``mc_return``, ``q_data_mc_corr``, ...) and, with ``out=``, writes them as JSON.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from datasets.atomic import write_bytes_atomically
from datasets.command_line import check_overrides
from datasets.offline import load_replay
from datasets.replay import ReplayBuffer, input_image_size
from datasets.returns import RewardConfig
from policy.agent import Agent
from policy.checkpoint import Checkpoint, load_checkpoint, restore_agent
from policy.evaluation import Evaluator, calibration_metrics
from policy.run import PROJECT_ROOT, exit_on_error



@dataclass
class CalibrationConfig:
    checkpoint: str = "???"
    dataset_file: Optional[str] = None  # null: the file the checkpoint was trained on
    filter_key: Optional[str] = "valid"  # the file's split to score; null: every episode
    states: int = 1024  # states drawn (uniformly, with replacement) from the selected episodes
    seed: int = 0
    # Also run the trained policy (deterministic) for this many episodes in the checkpoint's env
    # and score the critic on the states it visits against the policy's own discounted returns
    # (rollout_* figures): whether Q(s, pi) is at, above or below what pi actually earns. 0: off.
    rollout_episodes: int = 0
    rollout_seed: int = 1_000_000  # episode i starts from env seed rollout_seed + i
    workers: int = 2  # sim processes of the rollouts
    out: Optional[str] = None  # also write the figures to this JSON file


ConfigStore.instance().store(name="calibration_schema", node=CalibrationConfig)


def checkpoint_calibration(config: CalibrationConfig) -> dict[str, float | str | int]:
    """The calibration figures of ``config.checkpoint``'s critic on the chosen states."""
    if config.states < 2:
        raise ValueError(f"states must be at least 2 (a correlation needs two), got {config.states}")
    if config.rollout_episodes < 0 or config.workers < 1:
        raise ValueError(f"rollout_episodes must be >= 0 and workers positive, got {config.rollout_episodes}, {config.workers}")
    checkpoint = load_checkpoint(config.checkpoint)
    dataset = config.dataset_file or checkpoint.dataset
    if not dataset:
        raise ValueError(f"{config.checkpoint} does not name the data it was trained on; give dataset_file=PATH")
    if not Path(dataset).is_file():
        raise FileNotFoundError(f"dataset file not found: {dataset}")
    trained = checkpoint.config
    obs_spec = checkpoint.obs_spec
    image_size = input_image_size(obs_spec)
    gamma = float(trained["algo"]["gamma"])
    replay, stats = load_replay(dataset, sorted(obs_spec), gamma, RewardConfig(**trained["dataset"]["reward"]),
                                config.filter_key, trained["dataset"]["terminals"], image_size)
    if replay.obs_spec != obs_spec:
        raise ValueError(f"{dataset} has observations {replay.obs_spec}, the checkpoint's critic reads {obs_spec}")
    index = np.random.default_rng(config.seed).integers(0, len(replay), size=config.states)
    agent = restore_agent(checkpoint).eval()
    metrics = calibration_metrics(agent, replay.gather(index, gamma))
    if config.rollout_episodes > 0:
        metrics.update(rollout_calibration(agent, checkpoint, config, gamma))
    return {"checkpoint": str(config.checkpoint), "dataset": str(dataset), "filter_key": config.filter_key,
            "episodes": stats.episodes, "states": config.states, "gamma": gamma, **metrics}


def rollout_calibration(agent: Agent, checkpoint: Checkpoint, config: CalibrationConfig, gamma: float) -> dict[str, float]:
    """The critic on every state of ``config.rollout_episodes`` episodes of the trained policy
    (the one its backup follows) against that policy's discounted returns-to-go, with the
    checkpoint's rewards and discount; ``rollout_q_data`` is Q of the actions taken."""
    evaluator = Evaluator(checkpoint.env["name"], dict(checkpoint.env["kwargs"]), config.workers, config.rollout_seed)
    try:
        played = evaluator.episodes(lambda obs: agent.act(obs, trained=True), config.rollout_episodes, sorted(checkpoint.obs_spec))
    finally:
        evaluator.close()
    reward = RewardConfig(**checkpoint.config["dataset"]["reward"])
    if checkpoint.config["dataset"]["terminals"] == "none":  # trained without terminals: none here either
        for episode in played:
            episode.terminals[:] = False
    steps = sum(len(episode) for episode in played)
    visited = ReplayBuffer(checkpoint.obs_spec, checkpoint.action_dim, steps, steps + len(played))
    for episode in played:
        visited.add_episode(episode.obs, episode.next_obs, **episode.transitions(gamma, reward))
    metrics = calibration_metrics(agent, visited.gather(np.arange(steps), gamma), prefix="rollout_")
    metrics["rollout_success_rate"] = float(np.mean([episode.attrs["success"] for episode in played]))
    metrics["rollout_states"] = steps
    return metrics


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "configs"), config_name="calibration")
def main(cfg) -> None:
    config: CalibrationConfig = OmegaConf.to_object(cfg)
    figures = exit_on_error(lambda: checkpoint_calibration(config), Path(HydraConfig.get().runtime.output_dir))
    for key, value in figures.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    if config.out:
        write_bytes_atomically(config.out, (json.dumps(figures, indent=2) + "\n").encode())


if __name__ == "__main__":
    check_overrides(sys.argv[1:], PROJECT_ROOT / "configs", "calibration")
    main()
