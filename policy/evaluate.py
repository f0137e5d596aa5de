"""Score a policy in the simulator on start states of your choosing:
``python -m policy.evaluate policy=policy.pt`` (an exported TorchScript file or ONNX model, what a
robot controller loads) or ``python -m policy.evaluate checkpoint=RUN/checkpoint.pt [trained=true]``.

The env is the one the policy was trained in (an exported file's metadata, a checkpoint's own
record). Episode i starts from env seed ``seed + i``; the default, 1,000,000, is far from the
start states the training runs evaluate on (``eval_seed`` 100000 and up), so the figure is on
states no checkpoint was selected by. Prints the success rate with its Wilson 95% interval and,
with ``out=``, writes it and the per-episode outcomes as JSON.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import hydra
import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from datasets.atomic import write_bytes_atomically
from datasets.command_line import check_overrides
from policy.checkpoint import load_checkpoint, restore_agent
from policy.evaluation import Evaluator
from policy.export import SUFFIXES, read_metadata
from policy.results import wilson_interval
from policy.run import PROJECT_ROOT, exit_on_error

Policy = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass
class EvaluateConfig:
    policy: Optional[str] = None  # an exported policy: TorchScript (.pt) or ONNX (.onnx), from policy.export
    checkpoint: Optional[str] = None  # or a training checkpoint: its evaluated policy (the average where there is one)
    trained: bool = False  # with checkpoint=: the trained weights instead of the policy average
    episodes: int = 100
    seed: int = 1_000_000  # episode i starts from env seed seed + i
    workers: int = 2  # sim processes
    threads: int = 1  # torch CPU threads for the policy
    out: Optional[str] = None  # also write the figures and per-episode outcomes to this JSON file


ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


def exported_policy(path: Path) -> tuple[Policy, dict[str, Any]]:
    """The deterministic policy of an exported file, fed as a robot would feed it: each input
    cast to the dtype its metadata names, in the order of its ``obs_keys``."""
    metadata = read_metadata(path)
    keys = metadata["obs_keys"]
    dtypes = {entry["key"]: np.dtype(entry["dtype"]) for entry in metadata["inputs"]}
    if path.suffix == SUFFIXES["onnx"]:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def act(obs: dict[str, np.ndarray]) -> np.ndarray:
            return session.run(None, {key: np.asarray(obs[key], dtype=dtypes[key]) for key in keys})[0]
    else:
        module = torch.jit.load(str(path)).eval()

        @torch.no_grad()
        def act(obs: dict[str, np.ndarray]) -> np.ndarray:
            return module([torch.from_numpy(np.asarray(obs[key], dtype=dtypes[key])) for key in keys]).numpy()
    return act, metadata


def resolve_policy(config: EvaluateConfig) -> tuple[Policy, str, dict[str, Any], dict[str, Any]]:
    """The policy to score, what it is (for the report), its env name and kwargs."""
    if (config.policy is None) == (config.checkpoint is None):
        raise ValueError("give exactly one of policy=EXPORTED_FILE (policy.pt or policy.onnx) and checkpoint=RUN/checkpoint.pt")
    if config.policy is not None:
        path = Path(config.policy)
        if not path.is_file():
            raise FileNotFoundError(f"exported policy not found: {path} (write one with python -m policy.export checkpoint=... out={path})")
        if config.trained:
            raise ValueError("trained=true needs checkpoint=: an exported file holds one policy")
        if path.suffix not in (SUFFIXES["torchscript"], SUFFIXES["onnx"]):
            raise ValueError(f"policy={path}: an exported policy ends in .pt (TorchScript) or .onnx")
        try:
            act, metadata = exported_policy(path)
        except (RuntimeError, KeyError, json.JSONDecodeError) as error:
            raise ValueError(f"policy={path}: not a policy written by python -m policy.export ({type(error).__name__})") from None
        described = {"kind": "exported", "file": str(path), "stage": metadata.get("stage"),
                     "updates": metadata.get("updates"), "env_steps": metadata.get("env_steps"),
                     "source_checkpoint": metadata.get("source_checkpoint")}
        return act, "exported policy", described, metadata["env"]
    checkpoint = load_checkpoint(config.checkpoint)
    agent = restore_agent(checkpoint).eval()
    if config.trained and agent.policy_average is None:
        raise ValueError(f"trained=true: {config.checkpoint} has no policy average, so its evaluated policy already is the trained weights")
    which = "trained weights" if config.trained or agent.policy_average is None else "policy average"
    described = {"kind": which, "file": str(config.checkpoint), "stage": checkpoint.stage,
                 "updates": checkpoint.updates, "env_steps": checkpoint.env_steps}
    return (lambda obs: agent.act(obs, trained=config.trained)), which, described, checkpoint.env


def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Success rate, its Wilson 95% interval, mean return and length over ``config.episodes``."""
    if config.episodes < 1 or config.workers < 1 or config.threads < 1:
        raise ValueError(f"episodes, workers and threads must be positive, got {config.episodes}, {config.workers}, {config.threads}")
    torch.set_num_threads(config.threads)
    act, which, described, env = resolve_policy(config)
    evaluator = Evaluator(env["name"], dict(env["kwargs"]), config.workers, config.seed)
    try:
        metrics = evaluator.run(act, config.episodes, per_episode=True)
    finally:
        evaluator.close()
    successes = metrics.pop("successes")
    low, high = wilson_interval(sum(successes), config.episodes)
    return {"policy": which, **described, "env": env["name"], "episodes": config.episodes,
            "env_seeds": [config.seed, config.seed + config.episodes - 1], **metrics,
            "success_interval": [low, high], "successes": successes}


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "configs"), config_name="evaluate")
def main(cfg) -> None:
    config: EvaluateConfig = OmegaConf.to_object(cfg)
    figures = exit_on_error(lambda: evaluate(config), Path(HydraConfig.get().runtime.output_dir))
    low, high = figures["success_interval"]
    print(f"{figures['policy']} of {figures['file']}: success {figures['success_rate']:.3f} [{low:.3f}, {high:.3f}] "
          f"over {figures['episodes']} episodes (env seeds {figures['env_seeds'][0]}-{figures['env_seeds'][1]}), "
          f"mean return {figures['return']:.2f}, mean length {figures['episode_length']:.1f}")
    if config.out:
        write_bytes_atomically(config.out, (json.dumps(figures, indent=2) + "\n").encode())


if __name__ == "__main__":
    check_overrides(sys.argv[1:], PROJECT_ROOT / "configs", "evaluate")
    main()
