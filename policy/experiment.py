"""One offline-to-online run: ``python -m policy.experiment algo=calql seed=0 protocol=lowdim``.

Pretraining (policy.pretrain's Workspace, in ``<run dir>/pretrain``) with periodic
evaluation, then fine-tuning from its final checkpoint (policy.finetune's Workspace, in
``<run dir>/finetune``), then ``result.json`` with the run's figures (policy/results.py).
Each stage's config is composed from its entry point's own config with the protocol's
settings as overrides, so a stage is exactly the command recorded for it, and what a protocol
does not set is that entry point's default.

``experiment.json`` records what defines the run (algorithm, seed, protocol) and each finished
stage. The same command in the same directory (or ``resume=true``) continues a killed run: a
finished stage is not run again, an unfinished one continues from its last checkpoint. A
directory that holds a run of another definition is refused before any work.

A sweep is hydra's multirun (``-m algo=calql,cql seed=0,1``) on any launcher; a run that fails
in a sweep is reported by hydra at the end and does not stop the others.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from datasets.atomic import write_bytes_atomically
from policy import finetune, pretrain
from policy.agent import ONLINE_SETTINGS
from policy.algorithms import REGISTRY, check_config, lookup, with_defaults
from policy.config import CONTROLS, EVAL_SEED_BASE, EVAL_SEED_STRIDE, ExperimentConfig, FinetuneConfig, PretrainConfig
from policy.results import DECIMALS, FIGURES, POLICY_NAMES, run_dir_figures, stage_averaged
from policy.run import (
    PROJECT_ROOT, check_command_line, check_name, check_writable, exit_on_error, reject_unknown_choice, resolve_device, run_dir_lock,
    run_workspace,
)

STAGES = ("pretrain", "finetune")
WORKSPACES = {"pretrain": pretrain.Workspace, "finetune": finetune.Workspace}
STATE, RESULT = "experiment.json", "result.json"
# Stage settings the experiment itself gives; a protocol setting one of them is refused.
EXPERIMENT_KEYS = ("algo", "checkpoint", "seed", "eval_seed", "device", "threads", "resume", "overwrite")
# What the fine-tuning stage ran with, recorded in result.json beside the figures.
FINETUNE_SETTINGS = ("env_steps", "utd", "sampling", "mixing_ratio", "num_envs", "batch_size", "offline_data", "freeze_encoder")


class RunFailed(Exception):
    """A run of a sweep stopped with an error (already printed); hydra reports it at the end."""


# ------------------------------------------------------------------------ stage configs
def override_value(value: Any) -> str:
    """``value`` in hydra's override syntax: strings that could read as anything else are quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        bare = re.fullmatch(r"[A-Za-z_/][\w./-]*", value) and value.lower() not in ("true", "false", "null", "nan", "inf")
        return value if bare else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(override_value(item) for item in value) + "]"
    raise ValueError(f"cannot write {value!r} as a command-line value")


def flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{dataset: {obs_keys: [...]}}`` -> ``{"dataset.obs_keys": [...]}``."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def stage_overrides(cfg: ExperimentConfig, stage: str, run_dir: Path, threads: int) -> list[str]:
    """The command-line overrides of ``stage``: the experiment's own keys, then the protocol's
    settings with those of ``by_algo.<algo>.<stage>`` over them."""
    protocol = cfg.protocol
    unknown = sorted(set(protocol.by_algo) - set(REGISTRY))
    if unknown:
        raise ValueError(f"protocol {protocol.name!r}: by_algo names unknown algorithm(s) {unknown}; registered: "
                         f"{', '.join(sorted(REGISTRY))}")
    own = protocol.by_algo.get(cfg.algo.name) or {}
    if set(own) - set(STAGES):
        raise ValueError(f"protocol {protocol.name!r}: by_algo.{cfg.algo.name} has {sorted(set(own) - set(STAGES))}; "
                         f"its keys are the stages {', '.join(STAGES)}")
    settings = flatten(OmegaConf.to_container(OmegaConf.merge(getattr(protocol, stage), own.get(stage) or {})))
    reserved = sorted(key for key in settings if key in EXPERIMENT_KEYS or key.split(".")[0] == "hydra")
    if reserved:
        raise ValueError(f"protocol {protocol.name!r} sets {', '.join(reserved)} for the {stage} stage: the experiment "
                         f"sets those itself (algo=, seed=, device=, threads= on its command line)")
    brought = sorted(key for key in settings if stage == "finetune" and key.split(".")[0] in ("algo", "encoder")
                     and key.removeprefix("algo.") not in ONLINE_SETTINGS)
    if brought:
        raise ValueError(f"protocol {protocol.name!r} sets {', '.join(brought)} for the finetune stage, which continues "
                         f"the pretrained checkpoint with its algorithm and encoder: set them for pretrain (fine-tuning "
                         f"may change algo.{', algo.'.join(ONLINE_SETTINGS)})")
    given = {"algo": cfg.algo.name} if stage == "pretrain" else {"checkpoint": str(run_dir / "pretrain" / "checkpoint.pt")}
    given.update(seed=cfg.seed, eval_seed=EVAL_SEED_BASE + EVAL_SEED_STRIDE * cfg.seed, device=cfg.device, threads=threads)
    # the algorithm's settings from the experiment's command line, over the protocol's
    chosen = {f"algo.{name}": value for name, value in changed_fields(asdict(cfg.algo)).items()} if stage == "pretrain" else {}
    if stage == "finetune" and cfg.control == "offline_only":
        chosen["sampling"] = "offline"  # the control: the same budget, no online data in the updates
    return [f"{key}={override_value(value)}" for key, value in {**given, **settings, **chosen}.items()]


def changed_fields(algo: dict[str, Any]) -> dict[str, Any]:
    """The fields of an algorithm's config that differ from its reference values (its config
    class's defaults)."""
    reference = asdict(lookup(algo["name"]).config())
    return {name: value for name, value in algo.items() if value != reference[name]}


def compose_stage(stage: str, overrides: list[str], protocol: str) -> PretrainConfig | FinetuneConfig:
    """The stage's config as its entry point would compose it from these overrides."""
    try:
        if stage == "finetune":
            overrides = finetune.online_setting_overrides(overrides)
        return OmegaConf.to_object(hydra.compose(config_name=stage, overrides=overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        reason = " ".join(str(error).split())
        raise ValueError(f"protocol {protocol!r}: the {stage} settings do not compose: {reason}") from None


def command(stage: str, overrides: list[str], stage_dir: Path) -> str:
    return " ".join(["python -m policy." + stage, *map(shlex.quote, overrides), f"hydra.run.dir={shlex.quote(str(stage_dir))}"])


def job_threads(requested: int) -> int:
    """Torch threads of each stage: ``requested`` when positive; else torch's default (one per
    core) unless this run is a job of a sweep whose launcher runs jobs side by side on this
    machine: then the cores are shared among those jobs."""
    if requested > 0:
        return requested
    hydra_config = HydraConfig.get()
    if hydra_config.mode != RunMode.MULTIRUN:
        return 0
    launcher = hydra_config.runtime.choices.get("hydra/launcher")
    cores = os.cpu_count() or 1
    if launcher == "joblib":
        n_jobs = int(hydra_config.launcher.n_jobs)  # joblib's count: -1 is every core, -2 all but one
        at_once = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
        return max(1, cores // at_once)
    if launcher == "submitit_local":
        return 1  # submitit's local executor starts every job of the sweep at once
    return 0


# ---------------------------------------------------------------------------- the run
def write_json(path: Path, payload: dict[str, Any]) -> None:
    write_bytes_atomically(path, (json.dumps(payload, indent=2) + "\n").encode())


def open_run_dir(run_dir: Path, definition: dict[str, Any], resume: bool, overwrite: bool) -> dict[str, Any]:
    """The run's state: the one in ``run_dir`` when it holds this run, a new one when it holds
    none. Another run there is refused; ``overwrite`` deletes it first."""
    if resume and overwrite:
        raise ValueError("resume=true and overwrite=true contradict each other: choose one")
    check_writable(run_dir)
    path = run_dir / STATE
    if overwrite:
        for stage in STAGES:
            shutil.rmtree(run_dir / stage, ignore_errors=True)
        for name in (STATE, RESULT):
            (run_dir / name).unlink(missing_ok=True)
    if path.is_file():
        state = json.loads(path.read_text())
        # algorithm fields added since the run was recorded count at their defaults
        recorded, current = ({**d, "algo": with_defaults(d["algo"])} if "algo" in d else d for d in (state["definition"], definition))
        saved, current = flatten(recorded), flatten(current)
        differ = sorted(key for key in saved.keys() | current.keys() if saved.get(key) != current.get(key))
        if differ:
            raise ValueError(f"{run_dir} holds an experiment whose {', '.join(differ)} differ from this command's "
                             f"(its settings are in {path}): continue it with its own settings, start over with "
                             f"overwrite=true (which deletes it), or give this run another hydra.run.dir")
        return state
    if resume:
        raise FileNotFoundError(f"resume=true but {run_dir} holds no experiment to continue (no {STATE})")
    return {"definition": definition, "stages": {}}


def run_stage(stage: str, config: PretrainConfig | FinetuneConfig, stage_dir: Path) -> dict[str, Any]:
    """Train ``stage`` to its end, from its last checkpoint when it has one."""
    config.resume = (stage_dir / "checkpoint.pt").is_file()
    config.overwrite = not config.resume  # a stage killed before its first checkpoint starts over
    final = run_workspace(lambda: WORKSPACES[stage](config, stage_dir), stage_dir)
    return {"wall_seconds": final["wall_seconds"], "commit": code_version(), "machine": machine(config.device)}


def code_version() -> str:
    """The commit of the code that runs, ``-dirty`` when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
    try:
        return git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"


def machine(device: str) -> str:
    """The processor (or GPU), core count and platform, in words."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), model)
    described = f"{model}, {os.cpu_count()} cores, {platform.system()}"
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        import torch

        described += f", {torch.cuda.get_device_name(resolved)}"
    return described


def deviations(pretrained: dict[str, Any], finetuned: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The fields of the algorithm's config that differ from its reference values in either
    stage, with the value of each stage."""
    reference = asdict(lookup(pretrained["name"]).config())
    differ = changed_fields(pretrained) | changed_fields(finetuned)
    return {name: {"reference": reference[name], "pretrain": pretrained[name], "finetune": finetuned[name]}
            for name in reference if name in differ}


def distinct(values: list[str]) -> str:
    return ", ".join(dict.fromkeys(values))


def write_result(run_dir: Path, state: dict[str, Any], configs: dict[str, Any]) -> dict[str, Any]:
    stages = state["stages"]
    trained = OmegaConf.to_container(OmegaConf.load(run_dir / "finetune" / "config.yaml"))  # as fine-tuning recorded it
    env_steps = configs["finetune"].env_steps
    figures = run_dir_figures(run_dir, env_steps)
    wall = {stage: stages[stage]["wall_seconds"] for stage in STAGES}
    result = {
        "algo": state["definition"]["algo"]["name"],
        "seed": state["definition"]["seed"],
        "protocol": state["definition"]["protocol"]["name"],
        "control": state["definition"].get("control", "none"),
        # eval.csv's success_rate, the policy that is exported
        "evaluated_policy": "average" if stage_averaged(run_dir / "finetune") else "trained",
        "figures": figures,  # per policy: trained weights, and the policy average where there is one
        "wall_seconds": {**wall, "total": sum(wall.values())},
        "pretrain_updates": configs["pretrain"].steps,
        "obs_keys": list(configs["pretrain"].dataset.obs_keys),
        "finetune": {**{key: trained[key] for key in FINETUNE_SETTINGS},
                     **{f"algo.{key}": trained["algo"].get(key) for key in ONLINE_SETTINGS}},
        "deviations": deviations(asdict(configs["pretrain"].algo), trained["algo"]),
        "commands": state["commands"],
        "commit": distinct([stages[stage]["commit"] for stage in STAGES]),
        "machine": distinct([stages[stage]["machine"] for stage in STAGES]),
        "protocol_settings": state["definition"]["protocol"],
    }
    write_json(run_dir / RESULT, result)
    return result


def run_experiment(cfg: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
    """Both stages of the run in ``run_dir`` (those not finished yet), then its result."""
    check_config(cfg.algo)
    check_name(cfg.protocol.name, "protocol.name")
    if cfg.control not in CONTROLS:
        raise ValueError(f"unknown control {cfg.control!r}; available: {', '.join(CONTROLS)}")
    with run_dir_lock(run_dir):
        return run_stages(cfg, run_dir)


def run_stages(cfg: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
    threads = job_threads(cfg.threads)
    overrides = {stage: stage_overrides(cfg, stage, run_dir, threads) for stage in STAGES}
    configs = {stage: compose_stage(stage, overrides[stage], cfg.protocol.name) for stage in STAGES}
    definition = {"algo": asdict(cfg.algo), "seed": cfg.seed, "protocol": asdict(cfg.protocol)}
    if cfg.control != "none":  # runs recorded before controls existed have none
        definition["control"] = cfg.control
    definition = json.loads(json.dumps(definition))
    state = open_run_dir(run_dir, definition, cfg.resume, cfg.overwrite)
    if (run_dir / RESULT).is_file():
        print(f"{run_dir} has finished already ({run_dir / RESULT}); start over with overwrite=true")
        return json.loads((run_dir / RESULT).read_text())
    state["commands"] = {stage: command(stage, overrides[stage], run_dir / stage) for stage in STAGES}
    write_json(run_dir / STATE, state)
    for stage in STAGES:
        if stage in state["stages"]:
            print(f"{stage}: finished already", flush=True)
            continue
        state["stages"][stage] = run_stage(stage, configs[stage], run_dir / stage)
        write_json(run_dir / STATE, state)
    return write_result(run_dir, state, configs)


def summary_line(result: dict[str, Any]) -> str:
    parts = [f"{POLICY_NAMES[policy]}: " + ", ".join(f"{name} {figures[key]:.{DECIMALS[key]}f}" for key, name in FIGURES.items())
             for policy, figures in result["figures"].items()]
    return "; ".join(parts) + f"; wall time {result['wall_seconds']['total'] / 60:.1f} min"


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "configs"), config_name="experiment")
def main(cfg) -> None:
    config: ExperimentConfig = OmegaConf.to_object(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if multiprocessing.get_start_method(allow_none=True) == "loky":
        # A job in joblib's worker: a process it spawns (the sim workers) would be told to use
        # loky's start method, which it cannot find before loky is imported.
        multiprocessing.set_start_method("spawn", force=True)
    try:
        result = exit_on_error(lambda: run_experiment(config, run_dir), run_dir)
    except SystemExit as stop:
        if stop.code and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise RunFailed(f"the run in {run_dir} stopped with exit status {stop.code}") from None
        raise
    print(f"done: {run_dir / RESULT}: {summary_line(result)}")


def reject_unknown_protocol(argv: list[str]) -> None:
    """A ``protocol=NAME`` that names no file of configs/protocol: one line and exit 2. With
    ``hydra.searchpath`` on the command line, protocols may come from other folders: hydra finds them."""
    if not any(arg.lstrip("+").startswith("hydra.searchpath=") for arg in argv):
        known = sorted(path.stem for path in (PROJECT_ROOT / "configs" / "protocol").glob("*.yaml"))
        reject_unknown_choice(argv, ("protocol",), known, "protocol", f"available: {', '.join(known)}")


def reject_unsafe_protocol_name(argv: list[str]) -> None:
    """A ``protocol.name=`` on the command line that could not be a directory name (it becomes
    one before the run starts): one line and exit 2."""
    for arg in argv:
        key, assigned, value = arg.partition("=")
        if assigned and key.lstrip("+~") == "protocol.name":
            for name in value.split(","):
                try:
                    check_name(name.strip("'\""), "protocol.name")
                except ValueError as error:
                    print(f"error: {error}", file=sys.stderr)
                    sys.exit(2)


if __name__ == "__main__":
    reject_unknown_protocol(sys.argv[1:])
    reject_unsafe_protocol_name(sys.argv[1:])
    reject_unknown_choice(sys.argv[1:], ("control",), CONTROLS, "control", f"available: {', '.join(CONTROLS)}")
    check_command_line(sys.argv[1:], "experiment")
    main()
