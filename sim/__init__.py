"""Simulated manipulation tasks with robomimic observation keys, behind one entry point.

``make_env(name, **kwargs)`` builds a gymnasium env; ``make_vector_env`` runs N of them in
worker processes; ``env_from_args`` reads the env a dataset file was made in from its
``env_args``. Offscreen rendering uses EGL unless ``MUJOCO_GL`` says otherwise; it has to
be decided before MuJoCo is first imported, which is why this package sets it on import.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import logging  # noqa: E402
from typing import Any, Callable  # noqa: E402

import gymnasium as gym  # noqa: E402

# robosuite warns on import about optional packages (robosuite_models, mink, a private macro
# file) and on construction about controller parts a single-arm Panda does not have; none of
# it concerns the tasks here. Its errors still come through.
logging.getLogger("robosuite_logs").addFilter(lambda record: record.levelno >= logging.ERROR)


def _make_pickplace(**kwargs: Any) -> gym.Env:
    from sim.pickplace import PickPlaceEnv

    return PickPlaceEnv(**kwargs)


def _make_robosuite(task: str) -> Callable[..., gym.Env]:
    def make(**kwargs: Any) -> gym.Env:
        from sim.robosuite_tasks import RobosuiteTaskEnv

        return RobosuiteTaskEnv(task, **kwargs)

    return make


TASKS: dict[str, Callable[..., gym.Env]] = {
    "pickplace": _make_pickplace,
    "lift": _make_robosuite("lift"),
    "can": _make_robosuite("can"),
}


def make_env(name: str, **kwargs: Any) -> gym.Env:
    """Build the task ``name`` (one of :data:`TASKS`) with task-specific keyword arguments."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](**kwargs)


def task_facts(name: str) -> tuple[list[str], float]:
    """What each action dimension of task ``name`` commands, and its default control rate (Hz)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available tasks: {', '.join(sorted(TASKS))}")
    if name == "pickplace":
        from sim.pickplace import ACTION_MEANING, PickPlaceConfig

        return ACTION_MEANING, PickPlaceConfig.control_hz
    from sim.robosuite_tasks import ACTION_MEANING, DEFAULT_CONTROL_HZ

    return ACTION_MEANING, DEFAULT_CONTROL_HZ


def env_from_args(env_args: dict[str, Any], source: str) -> tuple[str, dict[str, Any]]:
    """The task and keyword arguments of the env a dataset file was made in, from its
    ``env_args``: this project's files name a task here and its kwargs; robomimic's name a
    robosuite env and its ``robosuite.make`` arguments, which are translated. An env that no
    task here serves is a ``ValueError`` naming ``source`` (the file)."""
    name, env_kwargs = env_args.get("env_name"), dict(env_args.get("env_kwargs") or {})
    if name in TASKS:
        return name, env_kwargs
    from sim.robosuite_tasks import TASKS_BY_ROBOSUITE_NAME, task_from_robosuite_args

    if name not in TASKS_BY_ROBOSUITE_NAME:
        robosuite = ", ".join(f"{robosuite_name} (env={task})" for robosuite_name, task in TASKS_BY_ROBOSUITE_NAME.items())
        raise ValueError(f"{source} was made in env {name!r}, which no env here serves (envs: {', '.join(TASKS)}; "
                         f"robosuite's: {robosuite})")
    return task_from_robosuite_args(name, env_kwargs, source)


def check_obs_spec(obs_spec: dict[str, dict[str, Any]], observation_space: gym.spaces.Dict, env_name: str,
                   source: str = "dataset") -> None:
    """Every key of ``obs_spec`` (from the dataset or a checkpoint) must exist in the env with
    the same shape; a mismatch names the override that fixes it."""
    from datasets.replay import is_image
    from sim.robosuite_tasks import ROBOSUITE_NAMES

    for key, spec in obs_spec.items():
        if key not in observation_space.spaces:
            fix = ""
            if is_image(spec) and env_name in ROBOSUITE_NAMES:
                cameras = [name.removesuffix("_image") for name, other in obs_spec.items() if is_image(other)]
                fix = f"; render its camera with env.kwargs.cameras=[{','.join(cameras)}]"
            raise ValueError(f"observation key {key!r} is not produced by env {env_name!r} (it has "
                             f"{sorted(observation_space.spaces)}){fix}")
        env_shape = list(observation_space[key].shape)
        if env_shape != list(spec["shape"]):
            if not is_image(spec):
                raise ValueError(f"shape mismatch for {key!r}: {source} {spec['shape']}, env {env_name!r} {env_shape}")
            height, width = spec["shape"][:2]
            fixes = [f"env.kwargs.image_size={height} (the env renders at the {source}'s size)"] if height == width else []
            if source == "dataset":
                fixes.append(f"dataset.image_size={env_shape[0]} (the frames are resized on load)")
            raise ValueError(f"image size mismatch for {key!r}: {source} {spec['shape']}, env {env_name!r} {env_shape}; "
                             f"set {' or '.join(fixes)}")


def make_vector_env(
    name: str, num_envs: int, *, fault_tolerant: bool = False, autoreset_mode: str = "NextStep", **kwargs: Any
) -> gym.vector.VectorEnv:
    """``num_envs`` copies of a task in worker processes; ``fault_tolerant`` wraps each in
    :class:`sim.faults.FaultTolerantEnv`.

    Workers are spawned, not forked: a forked child inherits the parent's GL state, which
    deadlocks EGL once the parent has rendered. Each worker creates its own context lazily.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be positive, got {num_envs}")
    make_env(name, **kwargs).close()  # fail here, in the caller, on a bad name or argument
    def make() -> gym.Env:
        env = make_env(name, **kwargs)
        if fault_tolerant:
            from sim.faults import FaultTolerantEnv

            env = FaultTolerantEnv(env)
        return env

    return gym.vector.AsyncVectorEnv([make] * num_envs, context="spawn", autoreset_mode=autoreset_mode)


for _name in TASKS:
    gym.register(id=f"sim/{_name}-v0", entry_point=make_env, kwargs={"name": _name}, disable_env_checker=True)
