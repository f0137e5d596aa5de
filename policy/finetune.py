"""Online fine-tuning in simulation: ``python -m policy.finetune checkpoint=PATH env_steps=N``.

The Workspace loads a pretrained checkpoint (or builds ``algo`` from scratch: SAC by
default), rebuilds its env, and collects episodes with ``num_envs`` parallel sim workers.
Every finished episode gets its Monte-Carlo returns and enters the online buffer; then
``len(episode) * utd`` gradient updates follow, each on a batch that mixes offline and
online transitions by ``mixing_ratio``. Cal-QL keeps its calibration on. Every
``eval_every`` env steps the deterministic policy is evaluated (success rate, return,
length, cumulative regret) and one episode is recorded as mp4. Checkpoints hold the online
buffer and are taken at episode boundaries, so ``resume=true`` continues a killed run with
the data and updates of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
from functools import partial
import os
import sys
import time
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from tqdm import tqdm

import sim
from datasets.offline import DemoFile
from datasets.replay import SAMPLING_MODES, Batch, ReplayBuffer, input_image_size, sample_offline_online
from datasets.episode import Episode
from datasets.returns import RewardConfig
from perception.encoders import EncoderConfig
from policy.agent import ONLINE_SETTINGS, Agent, AlgoConfig, loaded_obs_keys
from policy.algorithms import algo_config, check_config, make_agent
from policy.checkpoint import Checkpoint, load_checkpoint, restore_agent, save_checkpoint
from policy.config import FinetuneConfig
from policy.evaluation import calibration_batch
from policy.logger import MetricWindow
from policy.run import PROJECT_ROOT, check_command_line, run_workspace
from policy.session import RunSession
from sim.rollout import EpisodeCollector, play_episode

log = logging.getLogger(__name__)


class Workspace:
    """Fine-tuning, built in the order of its checks (each before any long work): settings, the
    machine, the agent and its env, the online settings, offline data, the online buffer, resume."""

    def __init__(self, cfg: FinetuneConfig, run_dir: Path) -> None:
        self._check_settings(cfg)
        self.cfg, self.run_dir = cfg, run_dir
        self.session = RunSession(cfg, run_dir)
        self.device = self.session.device
        resumed = self.session.resumed

        # The agent: pretrained, or from scratch. Everything is checked before any work.
        source = resumed or (load_checkpoint(cfg.checkpoint, self.device) if cfg.checkpoint else None)
        offline_path = self._build_agent(source, resuming=resumed is not None)
        self._apply_online_settings()
        # What is trained, and where, is what the run records.
        cfg.algo = self.agent.config
        cfg.encoder = self.agent.encoder.config
        cfg.env.name, cfg.env.kwargs = self.env_name, dict(self.env_kwargs)
        self.reward = self._reward_config(source)
        self.offline_path: str | None = None
        self.offline: ReplayBuffer | None = None
        self.calibration: Batch | None = None  # held-out offline states, as in pretraining
        if cfg.offline_data:
            self._load_offline_data(offline_path, new_agent=source is None)
        capacity = cfg.env_steps + cfg.num_envs * 1000  # a kill may redo up to one episode per env
        self.online = ReplayBuffer(self.obs_spec, self.agent.action_dim, capacity, 2 * capacity, self.device)
        log.info("online buffer: capacity %d transitions, %.1f MB", capacity, self.online.nbytes / 2**20)

        self.env_steps = self.updates = self.episodes = self.faults = 0
        self.updates_due = 0.0  # earned by finished episodes, not yet made (a fraction when utd is one)
        self.window = MetricWindow()  # the update metrics of the next train.csv row
        self.sim_seconds = self.learn_seconds = 0.0
        self.eval_history: list[list[float]] = []  # (env_steps, success_rate)
        if resumed is not None:
            self._restore(resumed)
        self.session.open_outputs(cfg, self.env_name, self.env_kwargs, cfg.eval_workers, cfg.eval_seed,
                                  resume_steps={"train": self.updates, "eval": self.env_steps, "episodes": self.env_steps})

    @staticmethod
    def _check_settings(cfg: FinetuneConfig) -> None:
        """The command line's own settings, before anything is loaded or started."""
        if cfg.num_envs == 0:  # the learner keeps a core
            cfg.num_envs = max(2, len(os.sched_getaffinity(0)) - 1)
        for name in ("env_steps", "num_envs", "batch_size", "eval_every", "eval_episodes", "eval_workers", "checkpoint_every", "log_every"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(cfg, name)}")
        if cfg.sampling not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling mode {cfg.sampling!r}; available: {', '.join(SAMPLING_MODES)}")
        if not 0.0 <= cfg.mixing_ratio <= 1.0:
            raise ValueError(f"mixing_ratio must be in [0, 1], got {cfg.mixing_ratio}")
        if cfg.utd <= 0:
            raise ValueError(f"utd must be positive, got {cfg.utd}")
        if not 0 <= cfg.warmup_env_steps < cfg.env_steps:
            raise ValueError(f"warmup_env_steps must be in [0, env_steps={cfg.env_steps}), got {cfg.warmup_env_steps}: "
                             f"the warm-up's episodes earn no updates, so it must leave env steps that do")
        if cfg.checkpoint is None:  # from scratch, the observations are dataset.obs_keys
            cfg.dataset.check()
        if cfg.freeze_encoder and cfg.checkpoint is None:
            raise ValueError("freeze_encoder=true keeps a pretrained encoder fixed, but this run trains from scratch "
                             "(no checkpoint=): its random encoder would never learn; drop freeze_encoder or give a checkpoint")
        if cfg.sampling == "offline" and not cfg.offline_data:
            raise ValueError("sampling=offline (the offline-only control) trains on the offline data only, but "
                             "offline_data=false; set offline_data=true or choose sampling=mixed|uniform")
        # offline_data alone says whether offline data is used; mixing_ratio only sizes its share
        if cfg.sampling == "mixed" and not cfg.offline_data:
            raise ValueError("sampling=mixed draws mixing_ratio of every batch from the offline data, but "
                             "offline_data=false; choose sampling=uniform for online data only")
        if cfg.sampling == "mixed" and cfg.mixing_ratio == 0:
            raise ValueError("sampling=mixed mixing_ratio=0 draws no offline rows; for online data only set "
                             "offline_data=false (and sampling=uniform)")
        if not cfg.exploration_scale >= 0:
            raise ValueError(f"exploration_scale must be >= 0, got {cfg.exploration_scale}")

    def _build_agent(self, source: Checkpoint | None, resuming: bool) -> str | None:
        """The agent from ``source`` (a checkpoint) or a new one, its env and observation spec,
        checked against the env; returns the offline data the checkpoint names (None: the
        dataset setting's)."""
        cfg = self.cfg
        offline_path = None
        if source is not None:
            self._check_no_algorithm_override(source, resuming)
            self.agent: Agent = restore_agent(source, self.device)
            if cfg.env.name is not None and cfg.env.name != source.env["name"]:
                raise ValueError(f"env={cfg.env.name} cannot be combined with a checkpoint made for env "
                                 f"{source.env['name']!r}: fine-tuning runs in the checkpoint's env; change "
                                 f"its settings with env.kwargs.NAME=VALUE")
            self.env_name = source.env["name"]
            self.env_kwargs = {**source.env["kwargs"], **cfg.env.overrides()}
            self.obs_spec, self.algo = source.obs_spec, source.algo
            offline_path = cfg.dataset.path or source.dataset
            self.pretrain_config = source.config
        else:
            if not isinstance(cfg.algo, AlgoConfig):  # no algo=NAME: SAC, with the algo.* settings given
                cfg.algo = algo_config({"name": "sac", **(cfg.algo or {})})
            cfg.encoder = cfg.encoder if cfg.encoder is not None else EncoderConfig()
            check_config(cfg.algo)
            self.env_name, self.env_kwargs = cfg.env.name or "pickplace", cfg.env.overrides()
            self.algo, self.pretrain_config = cfg.algo.name, None
        probe = sim.make_env(self.env_name, **self.env_kwargs)
        try:
            action_dim = probe.action_space.shape[0]
            if source is None:
                keys = loaded_obs_keys(cfg.dataset.obs_keys, cfg.algo)
                self.obs_spec = {k: {"shape": list(probe.observation_space[k].shape), "dtype": str(probe.observation_space[k].dtype)}
                                 for k in keys if k in probe.observation_space.spaces}
                missing = sorted(set(keys) - set(self.obs_spec))
                if missing:
                    raise ValueError(f"observation key(s) {missing} are not produced by env {self.env_name!r}")
                self.agent = make_agent(cfg.algo, self.obs_spec, action_dim, cfg.encoder, self.device)
            sim.check_obs_spec(self.obs_spec, probe.observation_space, self.env_name, "checkpoint")
        finally:
            probe.close()
        if action_dim != self.agent.action_dim:
            raise ValueError(f"action dimension mismatch: checkpoint {self.agent.action_dim}, env {self.env_name!r} {action_dim}")
        self.obs_keys = sorted(self.obs_spec)  # the order observations are batched and stored in
        return offline_path

    def _apply_online_settings(self) -> None:
        """Fine-tuning's own settings on the agent: the online values of algorithm settings,
        the actor's learning rate, a frozen encoder, exploration, speed options."""
        cfg = self.cfg
        online = cfg.algo if isinstance(cfg.algo, dict) else {}  # beside a checkpoint: its online settings
        changed = sorted(name for name in online if name not in ONLINE_SETTINGS)
        if changed:
            raise ValueError(f"algo.{changed[0]} cannot change online: the checkpoint's critic and actor were trained "
                             f"with it; fine-tuning may change algo.{', algo.'.join(ONLINE_SETTINGS)}")
        for name, value in online.items():
            if value is None:  # the checkpoint's
                continue
            if name == "actor_lr":
                if not value > 0:
                    raise ValueError(f"algo.actor_lr must be > 0, got {value}")
                self.agent.set_actor_lr(float(value))
            else:
                self.agent.change_setting(name, value)
        if cfg.freeze_encoder:
            self.agent.freeze_encoders()
        self.agent.exploration_scale = cfg.exploration_scale
        self.agent.set_encoder_bf16(cfg.encoder_bf16)
        if cfg.compile:
            self.agent.compile_networks(cfg.cuda_graphs)

    def _reward_config(self, source: Checkpoint | None) -> RewardConfig:
        """The reward transform of online episodes: the checkpoint's (the critic's values are in
        the units of the rewards it was trained on), else the dataset setting's."""
        reward = self.cfg.dataset.reward
        if source is not None and "dataset" in source.config:
            reward = RewardConfig(**source.config["dataset"]["reward"])
            if reward != self.cfg.dataset.reward:
                log.warning("rewards transformed as in the checkpoint (%s), not as in dataset.reward (%s)", reward, self.cfg.dataset.reward)
        return reward

    def _load_offline_data(self, offline_path: str | None, new_agent: bool) -> None:
        """The offline replay (frames at the policy's input size, whatever the file holds) and
        its held-out calibration states; a new agent standardises inputs like the data."""
        cfg = self.cfg
        gamma = self.agent.config.gamma
        image_size = input_image_size(self.obs_spec)
        if cfg.dataset.image_size is not None and cfg.dataset.image_size != image_size:
            raise ValueError(f"dataset.image_size={cfg.dataset.image_size}, but the policy's input size is "
                             f"{image_size or 'none (no images)'}: fine-tuning resizes offline frames to the "
                             f"policy's input size, set by env.kwargs.image_size; drop dataset.image_size")
        self.offline_path = str(offline_path if offline_path is not None else cfg.dataset.file())
        with DemoFile(self.offline_path) as data:
            self.offline, _ = data.load_replay(self.obs_keys, gamma, self.reward, cfg.dataset.filter_key,
                                               cfg.dataset.terminals, image_size, self.device)
            if self.offline.obs_spec != self.obs_spec:
                raise ValueError(f"offline data {self.offline_path} has observations {self.offline.obs_spec}, "
                                 f"the agent expects {self.obs_spec}")
            self.calibration = calibration_batch(
                data, self.obs_keys, gamma, self.reward, cfg.dataset.terminals, cfg.dataset.eval_filter_key,
                cfg.calibration_states, cfg.seed + 1, self.offline, image_size)
        if new_agent:
            self.agent.set_lowdim_normalization(self.offline.lowdim_stats())

    def _restore(self, resumed: Checkpoint) -> None:
        """Continue a killed run from its checkpoint: online data, counters, RNG, clock."""
        state = resumed.stage_state
        self.online.load_state_dict(state["online_buffer"])
        self.env_steps, self.updates = resumed.env_steps, resumed.updates
        counters = state["counters"]
        self.episodes, self.faults = int(counters["episodes"]), int(counters["faults"])
        self.updates_due = float(counters.get("updates_due", 0.0))
        self.window.load_state_dict(state.get("metric_window", {}))
        self.eval_history = [list(row) for row in state["eval_history"]]
        self.session.continue_from(resumed)
        log.info("resumed from env step %d (%d updates)", self.env_steps, self.updates)
        print(f"resumed from env step {self.env_steps}", flush=True)

    def _check_no_algorithm_override(self, source: Checkpoint, resuming: bool) -> None:
        """A checkpoint brings its algorithm and encoder; ``algo``/``encoder`` given beside one
        would be silently ignored. On resume they may repeat the checkpoint's own values."""
        saved = {"algo": algo_config(source.config["algo"]), "encoder": EncoderConfig(**source.config["encoder"])}
        for group in ("algo", "encoder"):
            given = getattr(self.cfg, group)
            if isinstance(given, dict):  # algo.* online settings, applied to the checkpoint's algorithm
                continue
            if given is not None and not (resuming and given == saved[group]):
                raise ValueError(f"{group}=... cannot be combined with a checkpoint, which brings its own "
                                 f"({group} {getattr(saved[group], 'name', '')!r}); drop the {group} override "
                                 f"(its online settings are algo.{', algo.'.join(ONLINE_SETTINGS)})")

    # ------------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        config = {**(self.pretrain_config or {}),
                  "algo": dataclasses.asdict(self.agent.config), "encoder": dataclasses.asdict(self.agent.encoder.config)}
        config.setdefault("dataset", OmegaConf.to_container(OmegaConf.structured(self.cfg.dataset)))
        save_checkpoint(self.run_dir / "checkpoint.pt", Checkpoint(
            stage="finetune",
            algo=self.algo,
            config=config,
            obs_spec=self.obs_spec,
            action_dim=self.agent.action_dim,
            env={"name": self.env_name, "kwargs": self.env_kwargs},
            dataset=self.offline_path,
            agent=self.agent.training_state(),
            updates=self.updates,
            env_steps=self.env_steps,
            **self.session.checkpoint_fields(),
            stage_state={
                "counters": {"episodes": self.episodes, "faults": self.faults, "updates_due": self.updates_due},
                "finetune_config": OmegaConf.to_container(OmegaConf.structured(self.cfg)),
                "metric_window": self.window.state_dict(),
                "eval_history": self.eval_history,
                "online_buffer": self.online.state_dict(),
            },
        ))

    # ------------------------------------------------------------------------- evaluation
    def evaluate(self, before_training: bool = False) -> dict[str, float]:
        """The evaluation at the current env step; ``before_training`` measures the policy the
        run starts from, which stays out of the cumulative regret (a figure of fine-tuning)."""
        # the calibration picture on the offline states pretraining tracked, and on the most
        # recent online transitions
        calibration = {"": self.calibration} if self.calibration is not None else {}
        if len(self.online):
            recent = np.arange(max(0, len(self.online) - self.cfg.calibration_states), len(self.online))
            calibration["online_"] = self.online.gather(recent, self.agent.config.gamma)
        metrics = self.session.evaluate(self.agent, self.cfg.eval_episodes, self.cfg.eval_trained_policy, calibration)
        if not before_training:
            self.eval_history.append([float(self.env_steps), metrics["success_rate"]])
            metrics["cumulative_regret"] = float(np.mean([1.0 - s for _, s in self.eval_history]))
        if self.cfg.video:
            self.record_video(self.run_dir / "videos" / f"eval_{self.env_steps:08d}.mp4")
        return metrics

    def record_video(self, path: Path) -> None:
        import imageio

        env = sim.make_env(self.env_name, **self.env_kwargs)
        try:
            _, frames = play_episode(env, lambda obs: self.agent.act({k: obs[k][None] for k in self.obs_spec})[0],
                                     self.cfg.eval_seed, frames=True)
        finally:
            env.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        fps = float(self.env_kwargs.get("control_hz", env.metadata.get("render_fps", 10)))
        imageio.mimwrite(path, frames, fps=fps, macro_block_size=1)

    # ------------------------------------------------------------------------------- loop
    def train(self, loop_only: bool = False) -> dict[str, float]:
        """Collect -> store -> update -> evaluate -> checkpoint, until ``env_steps``;
        ``loop_only``: collect, store and update only (no evaluation, no checkpoint: what
        ``bench.finetune`` times).

        A checkpoint is taken only at an episode boundary of every env, so that it holds exactly
        the data and updates that its counters say and a resumed run goes on as the uninterrupted
        one would: once one is due, each env finishes its episode and then idles (its steps are
        neither kept nor counted) until the last one has finished; the checkpoint is written and
        every env starts a new episode. The budget's end stops at once (its episodes in progress
        are dropped)."""
        cfg = self.cfg
        envs = sim.make_vector_env(self.env_name, cfg.num_envs, fault_tolerant=True, autoreset_mode="SameStep", **self.env_kwargs)
        collector = EpisodeCollector(envs, self.obs_keys)
        explore = partial(self.agent.act, deterministic=False)
        next_eval = (self.env_steps // cfg.eval_every + 1) * cfg.eval_every
        next_checkpoint = (self.env_steps // cfg.checkpoint_every + 1) * cfg.checkpoint_every
        checkpoint_due, last_eval = False, {}
        self.bar = self.session.progress(cfg.env_steps, self.env_steps, f"finetune {self.algo}")
        sim_seconds_before = self.sim_seconds
        try:
            collector.start(self._episode_seeds())
            if cfg.eval_at_start and self.env_steps == 0 and not loop_only:
                # the starting point of the curve, measured exactly like every later point
                self._log_evaluation(self.evaluate(before_training=True))
            while self.env_steps < cfg.env_steps:
                kept, finished = collector.step(explore, pause=checkpoint_due)
                self.sim_seconds = sim_seconds_before + collector.sim_seconds
                # counted before the episodes this step ends are stored and logged: a checkpoint
                # at env step E holds exactly the episodes logged at steps <= E
                self.env_steps += kept
                self.bar.update(kept)
                for episode in finished:
                    self.updates_due += self._store(episode)
                self._update()
                if not loop_only and (self.env_steps >= next_eval or self.env_steps >= cfg.env_steps):
                    next_eval += cfg.eval_every
                    last_eval = self._log_evaluation(self.evaluate())
                checkpoint_due = not loop_only and (checkpoint_due or self.env_steps >= next_checkpoint)
                if checkpoint_due and collector.idle:
                    next_checkpoint = (self.env_steps // cfg.checkpoint_every + 1) * cfg.checkpoint_every
                    self.save()
                    collector.start(self._episode_seeds())
                    checkpoint_due = False
            if not loop_only:
                self.save()
        finally:
            self.bar.close()
            envs.close()
        total = self.sim_seconds + self.learn_seconds
        log.info("time: simulation %.1f s, learning %.1f s (%.0f%% learning)", self.sim_seconds, self.learn_seconds,
                 100 * self.learn_seconds / max(total, 1e-9))
        return {**last_eval, "sim_seconds": self.sim_seconds, "learn_seconds": self.learn_seconds,
                "wall_seconds": self.session.clock.seconds()}

    def _episode_seeds(self) -> list[int]:
        """Seeds of a new episode in every env, drawn from the run's generator."""
        return [int(seed) for seed in self.session.rng.integers(2**31, size=self.cfg.num_envs)]

    def _update(self) -> None:
        """The gradient updates the finished episodes have earned, logged every ``log_every``."""
        cfg = self.cfg
        start = time.perf_counter()
        while self.updates_due >= 1.0:
            batch = sample_offline_online(self.offline, self.online, cfg.batch_size, self.session.sampler,
                                          self.agent.config.gamma, self.agent.config.n_step, cfg.sampling, cfg.mixing_ratio)
            self.window.add({**self.agent.update(batch), "online_share": batch.online.mean()})
            self.updates += 1
            self.updates_due -= 1.0
            if self.updates % cfg.log_every == 0:
                self.agent.raise_if_nonfinite()
                averaged = self.window.averages()
                averaged.update(env_steps=self.env_steps, episodes=self.episodes, sim_faults=self.faults,
                                sim_seconds=self.sim_seconds,
                                learn_seconds=self.learn_seconds + time.perf_counter() - start)
                self.session.logger.log("train", self.updates, averaged)
        # the next actions come from these weights: they must be finite
        self.agent.raise_if_nonfinite()
        self.learn_seconds += time.perf_counter() - start

    def _log_evaluation(self, metrics: dict[str, float]) -> dict[str, float]:
        self.session.logger.log("eval", self.env_steps, {**metrics, "updates": self.updates, "sim_faults": self.faults,
                                                         "wall_seconds": self.session.clock.seconds()})
        if "cumulative_regret" in metrics:
            self.bar.set_postfix(success=f"{metrics['success_rate']:.2f}", regret=f"{metrics['cumulative_regret']:.2f}")
            tqdm.write(f"env step {self.env_steps}: success {metrics['success_rate']:.2f}, "
                       f"cumulative regret {metrics['cumulative_regret']:.2f}")
        else:
            tqdm.write(f"env step {self.env_steps} (before fine-tuning): success {metrics['success_rate']:.2f}")
        return metrics

    def _store(self, episode: Episode) -> float:
        """MC returns, then into the online buffer; returns the gradient updates it earns (none
        for an episode that ends within the warm-up)."""
        self.online.add_episode(episode.obs, episode.next_obs, **episode.transitions(self.agent.config.gamma, self.reward))
        fault = episode.attrs["sim_fault"]
        self.episodes += 1
        self.faults += int(fault)
        self.session.logger.log("episodes", self.env_steps, {"return": float(episode.rewards.sum()), "length": len(episode),
                                                             "success": float(episode.attrs["success"]), "sim_fault": float(fault)})
        in_warmup = self.cfg.warmup_env_steps > 0 and self.env_steps <= self.cfg.warmup_env_steps
        return 0.0 if in_warmup else len(episode) * self.cfg.utd

    def close(self) -> None:
        self.session.close()


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "configs"), config_name="finetune")
def main(cfg) -> None:
    config: FinetuneConfig = OmegaConf.to_object(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    final = run_workspace(lambda: Workspace(config, run_dir), run_dir)
    print(f"done: {run_dir / 'checkpoint.pt'}; final success rate {final.get('success_rate', float('nan')):.2f}, "
          f"simulation {final['sim_seconds']:.0f} s, learning {final['learn_seconds']:.0f} s")


def online_setting_overrides(overrides: list[str]) -> list[str]:
    """Without ``algo=NAME`` the ``algo`` mapping holds only the settings given (a checkpoint
    brings its algorithm; from scratch it is SAC's), so ``algo.KEY=VALUE`` is written
    ``++algo.KEY=VALUE`` for hydra to add it; which keys may be given is checked by the run."""
    if any(arg.partition("=")[0] in ("algo", "algo.name") for arg in overrides):
        return overrides
    return [f"++{arg}" if arg.startswith("algo.") and "=" in arg else arg for arg in overrides]


if __name__ == "__main__":
    sys.argv[1:] = online_setting_overrides(sys.argv[1:])
    check_command_line(sys.argv[1:], "finetune")
    main()
