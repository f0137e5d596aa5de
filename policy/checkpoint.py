"""Self-describing checkpoints, written atomically, loadable with ``weights_only=True``.

A checkpoint holds the agent's weights and optimiser states, the resolved run config, the
observation spec and action dimension, the env it acts in, step counters and RNG states:
everything needed to rebuild the agent and continue, and nothing but tensors and plain
Python values.
"""

from __future__ import annotations

import io
import random
import zipfile
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from datasets.atomic import write_bytes_atomically
from datasets.replay import ObsSpec

# 2: optimiser states by name, algorithm configs without the calibrated/conservative switches.
# 3: one schema for both stages (Checkpoint): `updates` and `env_steps` instead of `step`, which
#    meant this stage's updates; each stage's resume state under `stage_state`.
FORMAT_VERSION = 3
STAGES = ("pretrain", "finetune")


@dataclass
class Checkpoint:
    """What a checkpoint of either stage holds; each counter has one meaning in both."""

    stage: str  # the entry point that wrote it: pretrain | finetune
    algo: str  # the registered algorithm of the agent
    # The resolved config of the trained agent: its `algo`, `encoder` and `dataset` (rewards,
    # terminals) groups, and the pretraining run's other settings
    config: dict[str, Any]
    obs_spec: ObsSpec  # every observation the agent reads (the critic's privileged keys too)
    action_dim: int
    env: dict[str, Any]  # {"name": ..., "kwargs": {...}}: the env it acts in
    dataset: Optional[str]  # the offline data file it was trained on (None: none)
    agent: dict[str, Any]  # Agent.training_state(): weights, optimiser states, num_updates
    updates: int  # gradient updates this stage has made
    env_steps: int  # env steps this stage has collected (0 in pretraining)
    wall_seconds: float  # this stage's wall time so far
    rng: dict[str, Any]  # random states to continue from (rng_state)
    stage_state: dict[str, Any] = field(default_factory=dict)  # what only this stage's resume needs
    eval: Optional[dict[str, float]] = None  # best.pt: the evaluation that made it the best

    def payload(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_payload(cls, payload: dict[str, Any], path: Path) -> "Checkpoint":
        """The checkpoint in ``payload`` (format 2 converted), every field checked for its type."""
        if payload.get("format_version") == 2:
            payload = _from_format_2(payload)
        elif payload.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: checkpoint format {payload.get('format_version')}, this version reads "
                             f"{FORMAT_VERSION} (and 2); train it again with this version")
        missing = [f.name for f in fields(cls) if f.name not in payload and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise ValueError(f"{path}: not a checkpoint of this project (missing {missing})")
        checkpoint = cls(**{f.name: payload[f.name] for f in fields(cls) if f.name in payload})
        problem = checkpoint._problem()
        if problem:
            raise ValueError(f"{path}: damaged checkpoint: {problem}; use another checkpoint or train again")
        return checkpoint

    def _problem(self) -> str | None:
        """What is wrong with the fields, or None."""
        if self.stage not in STAGES:
            return f"stage {self.stage!r} is not one of {', '.join(STAGES)}"
        if not isinstance(self.config, dict) or not all(isinstance(self.config.get(key), dict) for key in ("algo", "encoder")):
            return "config lacks its algo and encoder settings"
        if not isinstance(self.obs_spec, dict) or not self.obs_spec or not all(
                isinstance(spec, dict) and isinstance(spec.get("shape"), list) and isinstance(spec.get("dtype"), str)
                for spec in self.obs_spec.values()):
            return "obs_spec is not a mapping of observation keys to shape and dtype"
        if not isinstance(self.env, dict) or not isinstance(self.env.get("name"), str) or not isinstance(self.env.get("kwargs"), dict):
            return "env lacks its name or kwargs"
        if not isinstance(self.agent, dict) or not {"model", "optimizers", "num_updates"} <= set(self.agent):
            return "agent lacks its weights, optimiser states or update count"
        for name in ("action_dim", "updates", "env_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == "action_dim" else 0):
                return f"{name} is {value!r}"
        if not isinstance(self.algo, str) or not (self.dataset is None or isinstance(self.dataset, str)):
            return "algo or dataset is not a name"
        if not isinstance(self.wall_seconds, (int, float)) or not isinstance(self.rng, dict) or not isinstance(self.stage_state, dict):
            return "wall_seconds, rng or stage_state has the wrong type"
        return None


def agent_checkpoint(agent, obs_spec: ObsSpec, env: dict[str, Any]) -> Checkpoint:
    """A checkpoint of an agent made outside a training run (benchmarks, tools): its algorithm
    and encoder settings, no data, counters at its own update count."""
    return Checkpoint(stage="pretrain", algo=agent.config.name,
                      config={"algo": asdict(agent.config), "encoder": asdict(agent.encoder.config)},
                      obs_spec=obs_spec, action_dim=agent.action_dim, env=env, dataset=None,
                      agent=agent.training_state(), updates=agent.num_updates, env_steps=0, wall_seconds=0.0,
                      rng={})


def _from_format_2(payload: dict[str, Any]) -> dict[str, Any]:
    """A format-2 checkpoint in format 3: its `step` was the writing stage's update count; a
    fine-tuning one held its counters and resume state at the top level."""
    converted = {key: payload[key] for key in ("algo", "config", "obs_spec", "action_dim", "env", "agent") if key in payload}
    converted.update(dataset=payload.get("dataset"), wall_seconds=float(payload.get("wall_seconds", 0.0)),
                     rng=payload.get("rng", {}), eval=payload.get("eval"), format_version=FORMAT_VERSION)
    if "counters" in payload:
        counters = dict(payload["counters"])
        converted.update(stage="finetune", updates=int(counters.pop("updates")), env_steps=int(counters.pop("env_steps")))
        converted["stage_state"] = {"counters": counters, **{key: payload[key] for key in (
            "finetune_config", "metric_window", "eval_history", "online_buffer") if key in payload}}
    else:
        converted.update(stage="pretrain", updates=int(payload.get("step", 0)), env_steps=0,
                         stage_state={key: payload[key] for key in ("best_success", "last_eval") if key in payload})
    return converted


def rng_state(numpy_rng: np.random.Generator, sampler: torch.Generator | None = None) -> dict[str, Any]:
    """The random states a run continues from; ``sampler`` draws its replay batches."""
    state = {"torch": torch.get_rng_state(), "numpy": numpy_rng.bit_generator.state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if sampler is not None:
        state["sampler"] = sampler.get_state()
    return state


def restore_rng_state(state: dict[str, Any], numpy_rng: np.random.Generator, sampler: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    numpy_rng.bit_generator.state = state["numpy"]
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if sampler is not None and "sampler" in state:  # older checkpoints drew batches with numpy
        sampler.set_state(state["sampler"])


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` through a temporary file and an atomic rename, so an
    interrupted write never damages the previous checkpoint. It is serialised in memory
    first: a full disk then fails in a plain file write, as :class:`OutOfSpaceError`."""
    buffer = io.BytesIO()
    torch.save(checkpoint.payload(), buffer)
    write_bytes_atomically(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load and sanity-check a checkpoint; a clear ``ValueError`` for anything else."""
    path = Path(path)
    if path.is_dir():
        inside = [name for name in ("checkpoint.pt", "best.pt") if (path / name).is_file()]
        raise ValueError(f"{path} is a directory, not a checkpoint file; give the file"
                         + (f": {path / inside[0]}" if inside else " (a run directory holds checkpoint.pt and best.pt)"))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    exported = _exported_kind(path)
    if exported:
        raise ValueError(f"{path} is an exported policy ({exported}), not a training checkpoint; pass the "
                         f"checkpoint.pt or best.pt it was exported from (its metadata names it: source_checkpoint)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise ValueError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise ValueError(f"{path}: not a checkpoint of this project (no format_version)")
    return Checkpoint.from_payload(checkpoint, path)


def _exported_kind(path: Path) -> str | None:
    """'TorchScript', 'torch.export program' or 'ONNX model' when ``path`` is one of those."""
    if path.suffix == ".onnx":  # a protobuf without a signature to recognise it by
        return "ONNX model"
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any("/code/" in name or name.endswith("constants.pkl") for name in names):
        return "TorchScript"
    if any(name.endswith("archive_format") or "/models/" in name for name in names):
        return "torch.export program"
    return None


def restore_agent(checkpoint: Checkpoint, device: str | torch.device = "cpu"):
    """The agent a checkpoint describes, with its weights and optimiser states loaded."""
    from perception.encoders import EncoderConfig
    from policy.algorithms import algo_config, make_agent

    config = checkpoint.config
    agent = make_agent(algo_config(config["algo"]), checkpoint.obs_spec, checkpoint.action_dim,
                       EncoderConfig(**config["encoder"]), device)
    agent.load_training_state(checkpoint.agent)
    return agent
