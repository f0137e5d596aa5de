"""The typed config tree of the training entry points (hydra structured configs).

Each algorithm's config class is the schema of its file in the ``algo`` group
(``configs/algo/<name>.yaml`` starts from ``<name>_schema``), so ``algo=iql algo.expectile=0.9``
is type-checked and a field of another algorithm is rejected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from datasets.returns import RewardConfig
from perception.encoders import EncoderConfig
from policy.algorithms import REGISTRY

log = logging.getLogger(__name__)


@dataclass
class DatasetConfig:
    name: str = "pickplace"
    path: Optional[str] = None  # null: the project's default file for `name`, made if missing
    obs_keys: list[str] = field(default_factory=lambda: ["agentview_image", "robot0_eef_pos", "robot0_gripper_qpos"])
    filter_key: Optional[str] = "train"
    eval_filter_key: Optional[str] = "valid"  # states for the calibration summary
    terminals: str = "success"  # how `dones` become terminals: success | dones | none
    reward: RewardConfig = field(default_factory=RewardConfig)
    # Resize every camera's frames to NxN on load (OpenCV area interpolation); pretraining's
    # evaluation env then renders at N. null: the file's size.
    image_size: Optional[int] = None

    def check(self) -> None:
        """What no file can satisfy, refused before any file is opened."""
        if not self.obs_keys:
            raise ValueError("dataset.obs_keys is empty: name the observations the policy reads, e.g. "
                             "dataset.obs_keys=[agentview_image,robot0_eef_pos,robot0_gripper_qpos]")

    def file(self) -> Path:
        """The dataset file: ``path``, or the default file of ``name``, collected on first use."""
        from sim.collect import DEFAULT_DATASETS, CollectConfig, collect

        if self.path:
            path = Path(self.path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"dataset file not found: {path}")
            return path
        if self.name not in DEFAULT_DATASETS:
            raise ValueError(f"dataset {self.name!r} has no default file; set dataset.path")
        path = DEFAULT_DATASETS[self.name]
        if not path.is_file():
            log.info("default dataset %s is missing: generating it", path)
            collect(CollectConfig(task=self.name))
        return path


@dataclass
class EnvConfig:
    name: Optional[str] = "pickplace"
    # Merged over the env the dataset was made in (its env_args). The settings every env takes
    # are declared so that `env.kwargs.image_size=48` needs no `+`; null means not set.
    kwargs: dict[str, Any] = field(default_factory=lambda: {"image_size": None, "horizon": None})

    def overrides(self) -> dict[str, Any]:
        """The kwargs that are set."""
        return {key: value for key, value in self.kwargs.items() if value is not None}


@dataclass
class RunConfig:
    """A training run's machine, randomness and directory: the same settings in every training
    entry point, set up by ``policy.session.RunSession``."""

    seed: int = 0
    device: str = "auto"  # auto: CUDA when present, else CPU
    threads: int = 0  # torch CPU threads; 0: one per core
    compile: bool = False  # the networks through torch.compile (a minute or more of compiling first)
    cuda_graphs: bool = False  # with compile on CUDA: the compiled networks replay as CUDA graphs
    encoder_bf16: bool = False  # image trunks under bfloat16 autocast (CUDA; CPUs with AVX512-BF16 or AMX)
    resume: bool = False  # continue the run in the run directory from its checkpoint.pt
    overwrite: bool = False  # start over in a run directory that already holds a run (deletes it)


@dataclass
class PretrainConfig(RunConfig):
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    algo: Any = MISSING  # one of the registered algorithms' configs (configs/algo)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    steps: int = 10000
    batch_size: int = 256
    eval_every: int = 2000
    eval_episodes: int = 25
    eval_workers: int = 2
    eval_seed: int = 100000  # evaluation episode i uses env seed eval_seed + i
    # With a policy average (algo.policy_average_tau > 0), also score the trained weights on the
    # same episodes (eval.csv's trained_success_rate beside success_rate, the average's).
    eval_trained_policy: bool = True
    calibration_states: int = 1024
    log_every: int = 100
    checkpoint_every: int = 2000


ConfigStore.instance().store(name="pretrain_schema", node=PretrainConfig)
for _name, _algorithm in REGISTRY.items():
    ConfigStore.instance().store(group="algo", name=f"{_name}_schema", node=_algorithm.config)


@dataclass
class FinetuneConfig(RunConfig):
    checkpoint: Optional[str] = None  # pretrained checkpoint; null: train `algo` from scratch
    # From scratch: the algorithm (algo=NAME; SAC when not given) and its settings. With a
    # checkpoint, which brings its algorithm: only its online settings (ONLINE_SETTINGS:
    # algo.policy_average_tau, algo.actor_lr, algo.actor_bc_weight, algo.actor_bc_source,
    # algo.cql_alpha, algo.alpha_lr, algo.target_entropy; null keeps the checkpoint's value).
    # configs/finetune.yaml sets algo.policy_average_tau=0.001: a moving average of the policy
    # is evaluated and exported (about the last 1/tau updates; a new one starts from the
    # pretrained policy; 0 turns it off), what keeps image fine-tuning with sampling=uniform
    # from unlearning (docs/results/finetune_average).
    # The run's config.yaml records the algorithm and encoder actually trained.
    algo: Any = None
    encoder: Optional[EncoderConfig] = None
    # A checkpoint brings its env (kwargs override its settings); from scratch null is pickplace.
    env: EnvConfig = field(default_factory=lambda: EnvConfig(name=None))
    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # offline data for mixed batches
    offline_data: bool = True  # the one switch for offline data in the batches (false: online data only)
    # Exploration noise online relative to the policy's own (the SAC family's sampled standard
    # deviation, TD3+BC's Gaussian noise): 1 explores as trained, 0 acts deterministically.
    exploration_scale: float = 1.0
    # Keep the pretrained encoder(s) fixed online: the critic's and actor's heads still learn,
    # but online images cannot move the features the offline data's values were fit on.
    freeze_encoder: bool = False
    env_steps: int = 10000
    num_envs: int = 0  # parallel sim workers collecting episodes; 0: one per CPU core but one, at least 2
    utd: float = 1.0  # gradient updates per env step, applied when an episode ends
    # WSRL's warm-up: the episodes of the first warmup_env_steps env steps are collected by the
    # pretrained policy and enter the online buffer, but earn no updates (0: updates from the start).
    warmup_env_steps: int = 0
    # mixed: mixing_ratio per batch (Cal-QL's protocol); uniform: one buffer of both (AWAC's), so
    # the online share grows with the online data (docs/results/finetune_average); offline: the
    # offline-only control: episodes are collected and schedule the same updates, but every
    # batch comes from the offline data, so no online data is learned from.
    sampling: str = "uniform"
    mixing_ratio: float = 0.5  # share of each batch drawn from the offline data (sampling=mixed)
    batch_size: int = 256
    eval_every: int = 2000  # env steps
    eval_episodes: int = 10
    eval_workers: int = 2
    eval_seed: int = 100000
    # Evaluate once before the first online step (eval.csv row at env step 0): the curve's
    # starting point, with the same episodes as every later evaluation.
    eval_at_start: bool = True
    # With a policy average, also score the trained weights on the same episodes (eval.csv's
    # trained_success_rate beside success_rate, the average's): what the average changes.
    eval_trained_policy: bool = True
    calibration_states: int = 1024  # held-out offline states and recent online ones for Q vs MC
    video: bool = True  # an mp4 of one evaluation episode at each evaluation
    checkpoint_every: int = 2000  # env steps
    log_every: int = 100  # updates


ConfigStore.instance().store(name="finetune_schema", node=FinetuneConfig)


@dataclass
class ProtocolConfig:
    """An offline-to-online protocol (``configs/protocol/<name>.yaml``): the settings of each
    stage, written as that stage's command-line keys (``steps``, ``dataset``, ``algo.hidden_dim``;
    a mapping is a group of keys: ``{dataset: {obs_keys: [...]}}`` is ``dataset.obs_keys=[...]``).
    Everything a protocol does not set is the stage entry point's default."""

    name: str = MISSING
    pretrain: dict[str, Any] = field(default_factory=dict)  # python -m policy.pretrain settings
    finetune: dict[str, Any] = field(default_factory=dict)  # python -m policy.finetune settings
    # Settings of one algorithm only, over the stages' own: {ALGO: {pretrain: {...}, finetune: {...}}}
    by_algo: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExperimentConfig:
    # A registered algorithm's config (configs/algo), run through both stages; fields set here
    # (algo.cql_alpha=10) are given to pretraining over the protocol's settings.
    algo: Any = MISSING
    seed: int = 0
    protocol: ProtocolConfig = MISSING
    device: str = "auto"
    # torch CPU threads of each stage. 0: torch's default (one per core) for a single run; in a
    # sweep whose launcher runs jobs side by side on this machine, the cores shared among them.
    threads: int = 0
    resume: bool = False  # continue the experiment in the run directory (re-running the same command does too)
    overwrite: bool = False  # start over in a run directory that already holds an experiment (deletes it)
    # none: the protocol as written. offline_only: the control of the same stages and budgets
    # with no online data in the updates (fine-tuning's sampling=offline); the online gain is
    # the run's figures minus its control's, seed by seed (policy.report).
    control: str = "none"


CONTROLS = ("none", "offline_only")
# Evaluation start states differ between seeds and are shared by every algorithm of a seed:
# episode i of seed s starts from env seed EVAL_SEED_BASE + EVAL_SEED_STRIDE * s + i.
EVAL_SEED_BASE, EVAL_SEED_STRIDE = 100000, 10000


def run_name(algo: str, seed: int, control: str) -> str:
    """An experiment run's directory name: ``calql_s0``; its control's ``calql_offline_only_s0``."""
    return f"{algo}_s{seed}" if control == "none" else f"{algo}_{control}_s{seed}"


OmegaConf.register_new_resolver("run_name", run_name, replace=True)
ConfigStore.instance().store(name="experiment_schema", node=ExperimentConfig)
ConfigStore.instance().store(group="protocol", name="protocol_schema", node=ProtocolConfig)
