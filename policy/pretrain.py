"""Offline pretraining from HDF5 demonstrations: ``python -m policy.pretrain dataset=pickplace``.

The Workspace owns the loop: it loads the dataset into replay (generating the default
dataset first if its file is missing), checks it against the evaluation env, trains the
agent, logs to TensorBoard and CSV, evaluates in parallel sim workers every ``eval_every``
steps and writes self-describing checkpoints to the hydra run directory.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from tqdm import tqdm

import sim
from datasets.offline import DemoFile
from policy.agent import loaded_obs_keys
from policy.algorithms import check_config, make_agent, with_defaults
from policy.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from policy.config import DatasetConfig, EnvConfig, PretrainConfig
from policy.evaluation import calibration_batch
from policy.logger import MetricWindow
from policy.run import PROJECT_ROOT, check_command_line, run_workspace
from policy.session import RunSession

log = logging.getLogger(__name__)
# What defines a run: a resumed run must be given the same (budget and logging may change).
RUN_DEFINING = ("algo", "encoder", "dataset", "env", "seed", "batch_size", "eval_seed", "calibration_states")


def env_for_dataset(data: DemoFile, dataset: DatasetConfig, env: EnvConfig) -> dict[str, Any]:
    """The kwargs of the evaluation env ``env.name`` for a file: the settings of the env the
    file was made in (its ``env_args``, robomimic's translated), the size its frames are resized
    to, then ``env.kwargs``. A file made in another env is refused."""
    path = data.path
    env_args = data.env_args()
    made_in, kwargs = sim.env_from_args(env_args, str(path))
    if made_in != env.name:
        described = f"env {made_in!r}" if env_args.get("env_name") == made_in else f"robosuite's {env_args.get('env_name')!r}"
        raise ValueError(f"{path} was made in {described}, the evaluation env is {env.name!r}: add env={made_in}")
    if dataset.image_size is not None:
        if dataset.image_size < 1:
            raise ValueError(f"dataset.image_size must be positive, got {dataset.image_size}")
        kwargs["image_size"] = dataset.image_size  # the env renders at the size the frames are resized to
    return {**kwargs, **env.overrides()}


class Workspace:
    """Pretraining: settings, the run session, the data (checked against the evaluation env
    before the long load), the agent, resume; then ``train``: update -> log -> evaluate ->
    checkpoint until ``steps``."""

    def __init__(self, cfg: PretrainConfig, run_dir: Path) -> None:
        check_config(cfg.algo)
        cfg.dataset.check()
        for name in ("steps", "batch_size", "eval_every", "eval_episodes", "eval_workers", "log_every", "checkpoint_every"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(cfg, name)}")
        self.cfg = cfg
        self.run_dir = run_dir
        self.session = RunSession(cfg, run_dir)
        self.device = self.session.device
        resumed = self.session.resumed
        if resumed is not None:
            self._check_same_run(resumed.config)

        self.dataset_path = cfg.dataset.file()
        with DemoFile(self.dataset_path) as data:
            self._load_data(data)
        self.agent = make_agent(cfg.algo, self.replay.obs_spec, self.replay.action_dim, cfg.encoder, self.device)
        self.agent.set_lowdim_normalization(self.replay.lowdim_stats())
        self.step = 0
        self.best_success = -1.0
        self.last_eval: dict[str, float] = {}
        if resumed is not None:
            self._restore(resumed)
        self.agent.set_encoder_bf16(cfg.encoder_bf16)
        if cfg.compile:
            self.agent.compile_networks(cfg.cuda_graphs)
        self.session.open_outputs(cfg, cfg.env.name, self.env_kwargs, cfg.eval_workers, cfg.eval_seed,
                                  resume_steps={"train": self.step, "eval": self.step}, purge_step=self.step + 1)

    def _load_data(self, data: DemoFile) -> None:
        """The training replay and the calibration states, after the file was checked against
        the evaluation env (before the long load)."""
        cfg = self.cfg
        self.env_kwargs = env_for_dataset(data, cfg.dataset, cfg.env)
        obs_keys, image_size = loaded_obs_keys(cfg.dataset.obs_keys, cfg.algo), cfg.dataset.image_size
        probe = sim.make_env(cfg.env.name, **self.env_kwargs)  # spaces only: no rendering yet
        sim.check_obs_spec(data.obs_spec(obs_keys, image_size), probe.observation_space, cfg.env.name)
        action_dim = probe.action_space.shape[0]
        probe.close()
        self.replay, stats = data.load_replay(obs_keys, cfg.algo.gamma, cfg.dataset.reward, cfg.dataset.filter_key,
                                              cfg.dataset.terminals, image_size, self.device)
        log.info("replay: %d transitions in %d episodes (%d successes), %.1f MB",
                 len(self.replay), stats.episodes, stats.successes, self.replay.nbytes / 2**20)
        if self.replay.action_dim != action_dim:
            raise ValueError(f"action dimension mismatch: dataset {self.replay.action_dim}, env {cfg.env.name!r} {action_dim}")
        self.calibration_batch = calibration_batch(
            data, obs_keys, cfg.algo.gamma, cfg.dataset.reward, cfg.dataset.terminals,
            cfg.dataset.eval_filter_key, cfg.calibration_states, cfg.seed + 1, self.replay, image_size)

    def _check_same_run(self, saved: dict[str, Any]) -> None:
        current = OmegaConf.to_container(OmegaConf.structured(self.cfg), resolve=True)
        saved = {**saved, "algo": with_defaults(saved["algo"])} if "algo" in saved else saved  # fields added since
        differ = [key for key in RUN_DEFINING if current[key] != saved.get(key)]
        if differ:
            raise ValueError(f"resume=true: this command's {', '.join(differ)} differ from the run in {self.run_dir}; "
                             f"repeat its settings (they are in {self.run_dir / 'config.yaml'})")

    def _restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a checkpoint: weights, optimisers, step, RNG, best-so-far."""
        self.agent.load_training_state(checkpoint.agent)
        self.step = checkpoint.updates
        self.best_success = float(checkpoint.stage_state["best_success"])
        self.last_eval = dict(checkpoint.stage_state["last_eval"])
        self.session.continue_from(checkpoint)
        best = self.run_dir / "best.pt"
        if best.is_file() and load_checkpoint(best).updates > self.step:
            # killed between writing best.pt and the checkpoint after it: that evaluation is redone
            best.unlink()
        log.info("resumed from step %d", self.step)
        print(f"resumed from step {self.step}", flush=True)

    def checkpoint(self, best_eval: dict[str, float] | None = None) -> Checkpoint:
        """This run now; ``best_eval``: for best.pt, the evaluation that made it the best."""
        return Checkpoint(
            stage="pretrain",
            algo=self.cfg.algo.name,
            config=OmegaConf.to_container(OmegaConf.structured(self.cfg), resolve=True),
            obs_spec=self.replay.obs_spec,
            action_dim=self.agent.action_dim,
            env={"name": self.cfg.env.name, "kwargs": self.env_kwargs},
            dataset=str(self.dataset_path),
            agent=self.agent.training_state(),
            updates=self.step,
            env_steps=0,
            **self.session.checkpoint_fields(),
            stage_state={"best_success": self.best_success, "last_eval": self.last_eval},
            eval=best_eval,
        )

    def evaluate(self) -> dict[str, float]:
        return self.session.evaluate(self.agent, self.cfg.eval_episodes, self.cfg.eval_trained_policy, {"": self.calibration_batch})

    def train(self) -> dict[str, float]:
        cfg = self.cfg
        window = MetricWindow()
        start, start_step = time.perf_counter(), self.step
        with self.session.progress(cfg.steps, self.step, f"pretrain {cfg.algo.name}") as bar:
            while self.step < cfg.steps:
                metrics = self.agent.update(self.replay.sample(cfg.batch_size, self.session.sampler, cfg.algo.gamma, cfg.algo.n_step))
                self.step += 1
                bar.update(1)
                window.add(metrics)
                evaluate = self.step % cfg.eval_every == 0 or self.step == cfg.steps
                save = evaluate or self.step % cfg.checkpoint_every == 0
                if self.step % cfg.log_every == 0 or save:
                    self.agent.raise_if_nonfinite()  # before anything is logged, evaluated or saved
                if self.step % cfg.log_every == 0:
                    averaged = window.averages()
                    averaged["updates_per_second"] = (self.step - start_step) / (time.perf_counter() - start)
                    self.session.logger.log("train", self.step, averaged)
                    bar.set_postfix(q=f"{averaged['q_data']:.2f}", bound=f"{averaged.get('bound_rate', 0):.2f}",
                                    success=f"{self.last_eval.get('success_rate', float('nan')):.2f}")
                if evaluate:
                    self.last_eval = self.evaluate()
                    self.session.logger.log("eval", self.step, {**self.last_eval, "wall_seconds": self.session.clock.seconds()})
                    tqdm.write(f"step {self.step}: success {self.last_eval['success_rate']:.2f}, "
                               f"Q(s, pi) {self.last_eval['q_policy']:.2f} vs MC {self.last_eval['mc_return']:.2f}")
                    if self.last_eval["success_rate"] > self.best_success:
                        # Offline RL's eval curve is not monotone: the best policy is kept apart.
                        self.best_success = self.last_eval["success_rate"]
                        save_checkpoint(self.run_dir / "best.pt", self.checkpoint(best_eval=self.last_eval))
                # a checkpoint after every evaluation too, so that best.pt is never ahead of it
                if save:
                    save_checkpoint(self.run_dir / "checkpoint.pt", self.checkpoint())
        return {**self.last_eval, "wall_seconds": self.session.clock.seconds()}

    def close(self) -> None:
        self.session.close()


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "configs"), config_name="pretrain")
def main(cfg) -> None:
    config: PretrainConfig = OmegaConf.to_object(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    final = run_workspace(lambda: Workspace(config, run_dir), run_dir)
    print(f"done: {run_dir / 'checkpoint.pt'}; final success rate {final['success_rate']:.2f} "
          f"(best evaluation: {run_dir / 'best.pt'})")


if __name__ == "__main__":
    check_command_line(sys.argv[1:], "pretrain")
    main()
