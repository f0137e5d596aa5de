"""robosuite's Lift and PickPlaceCan behind the same gymnasium interface as ``pickplace``.

Observations use robomimic's key names and upright images, and actions are robosuite's 7-d
OSC_POSE commands in [-1, 1] at 20 Hz, so that robomimic's lift and can image datasets can be
pretrained on and fine-tuned in the matching env. The robosuite env itself (and with it the GL
context) is created on the first ``reset``, so that vector-env workers each own theirs.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from sim.actions import checked_action

ROBOSUITE_NAMES = {"lift": "Lift", "can": "PickPlaceCan"}
# Length of robosuite's "object-state" observation for each task.
OBJECT_STATE_DIMS = {"lift": 10, "can": 14}
DEFAULT_HORIZONS = {"lift": 200, "can": 400}


class RobosuiteTaskEnv(gym.Env):
    """A robosuite single-arm Panda task with robomimic-style observations."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: str,
        image_size: int = 84,
        cameras: tuple[str, ...] = ("agentview", "robot0_eye_in_hand"),
        horizon: int | None = None,
        render_size: int = 256,
        render_mode: str | None = "rgb_array",
    ) -> None:
        if task not in ROBOSUITE_NAMES:
            raise ValueError(f"unknown robosuite task {task!r}; available: {', '.join(ROBOSUITE_NAMES)}")
        if not 16 <= image_size <= 256:
            raise ValueError(f"image_size must be in [16, 256], got {image_size}")
        self.task = task
        self.image_size = image_size
        self.cameras = tuple(cameras)
        self.horizon = horizon or DEFAULT_HORIZONS[task]
        self.render_size = render_size
        self.render_mode = render_mode
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

    def _make(self) -> Any:
        import robosuite
        from robosuite.controllers import load_composite_controller_config

        return robosuite.make(
            ROBOSUITE_NAMES[self.task],
            robots="Panda",
            controller_configs=load_composite_controller_config(controller="BASIC", robot="Panda"),
            has_renderer=False,
            has_offscreen_renderer=True,
            use_camera_obs=True,
            use_object_obs=True,
            camera_names=list(self.cameras),
            camera_heights=self.image_size,
            camera_widths=self.image_size,
            reward_shaping=False,
            control_freq=20,
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
