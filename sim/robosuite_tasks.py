"""robosuite's Lift and PickPlaceCan behind the same gymnasium interface as ``pickplace``.

Observations use robomimic's key names and upright images, and actions are robosuite's 7-d
OSC_POSE commands in [-1, 1] at 20 Hz, so that robomimic's lift and can image datasets can be
pretrained on and fine-tuned in the matching env. The robosuite env itself (and with it the GL
context) is created on the first ``reset``, so that vector-env workers each own theirs.

:func:`task_from_robosuite_args` turns the ``env_args`` that robomimic writes into its files
(robosuite's env name and ``robosuite.make`` keyword arguments) into the task and keyword
arguments of the matching env here.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from sim.actions import checked_action

ROBOSUITE_NAMES = {"lift": "Lift", "can": "PickPlaceCan"}
TASKS_BY_ROBOSUITE_NAME = {robosuite_name: task for task, robosuite_name in ROBOSUITE_NAMES.items()}
# What each of the 7 action dimensions commands (exported with the policy for its controller)
ACTION_MEANING = ["OSC_POSE dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
DEFAULT_CONTROL_HZ = 20.0
# Length of robosuite's "object-state" observation for each task.
OBJECT_STATE_DIMS = {"lift": 10, "can": 14}
DEFAULT_HORIZONS = {"lift": 200, "can": 400}
# robosuite 1.5 renamed these arm-controller settings; files made with robosuite <= 1.4 (all of
# robomimic's) use the old names, which 1.5 silently ignores.
RENAMED_CONTROLLER_SETTINGS = {"damping": "damping_ratio", "damping_limits": "damping_ratio_limits"}
ROBOSUITE_DEFAULT_IMAGE_SIZE = 256  # robosuite's camera_heights and camera_widths when not given


class RobosuiteTaskEnv(gym.Env):
    """A robosuite single-arm Panda task with robomimic-style observations."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: str,
        image_size: int = 84,
        cameras: tuple[str, ...] = ("agentview", "robot0_eye_in_hand"),
        horizon: int | None = None,
        controller: dict[str, Any] | None = None,
        control_hz: float = DEFAULT_CONTROL_HZ,
        render_size: int = 256,
        render_mode: str | None = "rgb_array",
    ) -> None:
        """``controller``: settings of robosuite's OSC_POSE arm controller over its defaults
        (robosuite 1.4 names accepted), e.g. a robomimic file's ``controller_configs``."""
        if task not in ROBOSUITE_NAMES:
            raise ValueError(f"unknown robosuite task {task!r}; available: {', '.join(ROBOSUITE_NAMES)}")
        if not 16 <= image_size <= 256:
            raise ValueError(f"image_size must be in [16, 256], got {image_size}")
        if controller and controller.get("type", "OSC_POSE") != "OSC_POSE":
            raise ValueError(f"controller type {controller['type']!r}: env {task!r} runs robosuite's OSC_POSE arm "
                             f"controller (7-d actions) only")
        self.task = task
        self.image_size = image_size
        self.cameras = tuple(cameras)
        self.horizon = horizon or DEFAULT_HORIZONS[task]
        self.controller = dict(controller or {})
        self.control_hz = control_hz
        self.render_size = render_size
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": control_hz}
        self._env: Any = None
        self._steps = 0
        spaces: dict[str, gym.Space] = {
            f"{camera}_image": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8) for camera in self.cameras
        }
        spaces["robot0_eef_pos"] = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        spaces["robot0_gripper_qpos"] = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        spaces["object"] = gym.spaces.Box(-np.inf, np.inf, (OBJECT_STATE_DIMS[task],), np.float32)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float32)

    def _controller_config(self) -> dict[str, Any]:
        from robosuite.controllers import load_composite_controller_config

        config = load_composite_controller_config(controller="BASIC", robot="Panda")
        arm = config["body_parts"]["right"]
        for key, value in self.controller.items():
            if key == "control_delta":  # robosuite 1.4's name for 1.5's input_type
                arm["input_type"] = "delta" if value else "absolute"
            else:
                arm[RENAMED_CONTROLLER_SETTINGS.get(key, key)] = value
        return config

    def _make(self) -> Any:
        import robosuite

        return robosuite.make(
            ROBOSUITE_NAMES[self.task],
            robots="Panda",
            controller_configs=self._controller_config(),
            has_renderer=False,
            has_offscreen_renderer=True,
            use_camera_obs=True,
            use_object_obs=True,
            camera_names=list(self.cameras),
            camera_heights=self.image_size,
            camera_widths=self.image_size,
            reward_shaping=False,
            control_freq=self.control_hz,
            horizon=self.horizon,
            ignore_done=True,
            hard_reset=False,  # a hard reset rebuilds the GL context: 1-2 s instead of 0.05 s
        )

    def _convert(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        obs = {f"{camera}_image": np.ascontiguousarray(raw[f"{camera}_image"][::-1]) for camera in self.cameras}
        obs["robot0_eef_pos"] = raw["robot0_eef_pos"].astype(np.float32)
        obs["robot0_gripper_qpos"] = raw["robot0_gripper_qpos"].astype(np.float32)
        obs["object"] = raw["object-state"].astype(np.float32)
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self._env is None:
            self._env = self._make()
        # robosuite's placement samplers share the env's generator: reseed it in place.
        seeded = np.random.default_rng(int(self.np_random.integers(2**63)))
        self._env.rng.bit_generator.state = seeded.bit_generator.state
        self._steps = 0
        return self._convert(self._env.reset()), {"is_success": False}

    def step(self, action):
        if self._env is None:
            raise RuntimeError("step() called before reset(): call env.reset() first")
        action = checked_action(action, 7)
        raw, reward, _, _ = self._env.step(action)
        self._steps += 1
        success = bool(self._env._check_success())
        truncated = self._steps >= self.horizon and not success
        return self._convert(raw), float(success), success, truncated, {"is_success": success}

    def render(self) -> np.ndarray:
        frame = self._env.sim.render(camera_name=self.cameras[0], width=self.render_size, height=self.render_size)
        return np.ascontiguousarray(frame[::-1])

    def get_state(self) -> np.ndarray:
        return np.asarray(self._env.sim.get_state().flatten())

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


def _arm_controller(config: dict[str, Any]) -> dict[str, Any]:
    """The right arm's settings in a robosuite controller config: robosuite <= 1.4 stores the arm
    controller itself, 1.5 a composite config with ``body_parts`` (``right`` or ``arms/right``)."""
    if "body_parts" not in config:
        return dict(config)
    parts = config["body_parts"]
    arm = parts.get("right", parts.get("arms", {}).get("right", {}))
    return {key: value for key, value in arm.items() if key != "gripper"}


def _per_camera(value: Any, cameras: int) -> list[int]:
    """robosuite takes one camera size for all cameras or a list with one per camera."""
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * cameras


def task_from_robosuite_args(name: str, env_kwargs: dict[str, Any], source: str) -> tuple[str, dict[str, Any]]:
    """The task and keyword arguments here that reproduce robosuite env ``name`` (one of
    :data:`TASKS_BY_ROBOSUITE_NAME`) made with ``env_kwargs`` (a file's ``env_args``, as
    robomimic writes them): its cameras and their size, its arm controller, horizon and
    control frequency. Settings the env here fixes (offscreen rendering, object observations,
    sparse rewards) are not carried over. Cameras that are not square, or not all of one size,
    are left to the observation check, which names ``dataset.image_size``. ``source`` names
    the file in errors."""
    task = TASKS_BY_ROBOSUITE_NAME[name]
    robots = env_kwargs.get("robots", ["Panda"])
    robots = [robots] if isinstance(robots, str) else list(robots)
    if robots != ["Panda"]:
        raise ValueError(f"{source} was made with robot(s) {robots}; env {task!r} runs robosuite's {name} with one Panda only")
    kwargs: dict[str, Any] = {}
    if "camera_names" in env_kwargs:
        cameras = env_kwargs["camera_names"]
        cameras = [cameras] if isinstance(cameras, str) else list(cameras)
        kwargs["cameras"] = cameras
        heights = _per_camera(env_kwargs.get("camera_heights", ROBOSUITE_DEFAULT_IMAGE_SIZE), len(cameras))
        widths = _per_camera(env_kwargs.get("camera_widths", ROBOSUITE_DEFAULT_IMAGE_SIZE), len(cameras))
        if len(set(heights) | set(widths)) == 1:
            kwargs["image_size"] = heights[0]
    if env_kwargs.get("controller_configs"):
        kwargs["controller"] = _arm_controller(env_kwargs["controller_configs"])
    if env_kwargs.get("horizon"):
        kwargs["horizon"] = int(env_kwargs["horizon"])
    if env_kwargs.get("control_freq"):
        kwargs["control_hz"] = float(env_kwargs["control_freq"])
    return task, kwargs
