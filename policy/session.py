"""The run session every training entry point shares: the machine, randomness, run directory and
outputs of one run, set up in one order.

``RunSession(cfg, run_dir)`` picks the device and threads, prepares rendering (before any sim
worker starts: workers inherit it), seeds torch, the run's numpy generator and the replay
sampler, applies the run directory's rule (a fresh run refuses a used directory unless
``overwrite``; ``resume`` loads its checkpoint) and starts the wall clock. Once the entry point
knows its env, ``open_outputs`` starts the logger and the evaluator and writes ``config.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from datasets.replay import Batch
from policy.agent import Agent
from policy.checkpoint import Checkpoint, load_checkpoint, restore_rng_state, rng_state
from policy.config import RunConfig
from policy.evaluation import Evaluator, calibration_metrics, evaluate_policies
from policy.logger import MetricLogger
from policy.run import WallClock, check_speed_options, prepare_device, prepare_run_dir, resolve_device
from sim.rendering import prepare_rendering

log = logging.getLogger(__name__)


class RunSession:
    def __init__(self, cfg: RunConfig, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.clock = WallClock()
        self.device = resolve_device(cfg.device)
        check_speed_options(cfg.compile, cfg.cuda_graphs, cfg.encoder_bf16, self.device)
        log.info("learner: %s", prepare_device(self.device, cfg.threads))
        self.renderer = prepare_rendering(self.device)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)  # env seeds and other host-side draws
        self.sampler = torch.Generator(self.device).manual_seed(cfg.seed)  # replay batches, on the device
        resume_path = prepare_run_dir(run_dir, cfg.resume, cfg.overwrite)
        # the checkpoint this run continues, None for a fresh run
        self.resumed: Checkpoint | None = load_checkpoint(resume_path, self.device) if resume_path else None
        self.logger: MetricLogger | None = None
        self.evaluator: Evaluator | None = None

    def continue_from(self, checkpoint: Checkpoint) -> None:
        """The wall clock and random state where ``checkpoint`` left them."""
        self.clock.continue_from(checkpoint.wall_seconds)
        restore_rng_state(checkpoint.rng, self.rng, self.sampler)

    def checkpoint_fields(self) -> dict[str, Any]:
        """What a checkpoint records of the session: wall time so far and random state."""
        return {"wall_seconds": self.clock.seconds(), "rng": rng_state(self.rng, self.sampler)}

    def open_outputs(self, config: RunConfig, env_name: str, env_kwargs: dict[str, Any], eval_workers: int,
                     eval_seed: int, resume_steps: dict[str, float], purge_step: int | None = None) -> None:
        """The logger (on resume, rows logged after ``resume_steps`` are dropped), the evaluator of
        ``env_name`` and the run's ``config.yaml`` (``config`` as the run trains it)."""
        self.logger = MetricLogger(self.run_dir, resume_steps if self.resumed else None,
                                   purge_step if self.resumed else None)
        self.evaluator = Evaluator(env_name, env_kwargs, eval_workers, eval_seed)
        OmegaConf.save(OmegaConf.structured(config), self.run_dir / "config.yaml")

    def evaluate(self, agent: Agent, episodes: int, trained_too: bool, calibration: dict[str, Batch]) -> dict[str, float]:
        """The agent's evaluated policy in the sim (and its trained weights, ``trained_too``) and
        its critic against the Monte-Carlo returns of each ``calibration`` batch of states (the
        key prefixes its figures' names)."""
        agent.eval()
        try:
            metrics = evaluate_policies(self.evaluator, agent, episodes, trained_too)
            for prefix, states in calibration.items():
                metrics.update(calibration_metrics(agent, states, prefix))
        finally:
            agent.train()
        return metrics

    @staticmethod
    def progress(total: int, done: int, description: str) -> tqdm:
        """The progress bar of a run's long loop (rate and ETA)."""
        return tqdm(total=total, initial=done, desc=description, unit="step", dynamic_ncols=True)

    def close(self) -> None:
        if self.evaluator is not None:
            self.evaluator.close()
        if self.logger is not None:
            self.logger.close()
