"""Scripted pick-and-place expert that reads the privileged ``object`` observation.

The expert walks through approach, descend, grasp, lift, carry and release phases with a
proportional controller on the end-effector position. Its ``mode`` selects what it attempts,
which is how the mixed-quality default dataset is made:

- ``pick_place``: the full task;
- ``grasp_only``: grasp and lift, then wander above the table without going to the tray;
- ``failed_grasp``: close the gripper beside the cube (a few centimetres off), then carry on.

Gaussian ``noise`` (standard deviation, in action units) is added to every action.
"""

from __future__ import annotations

import numpy as np

from sim.pickplace import TABLE_TOP_Z

MODES = ("pick_place", "grasp_only", "failed_grasp")
APPROACH_HEIGHT = 0.07  # above the cube before descending
CARRY_Z = TABLE_TOP_Z + 0.14
RELEASE_HEIGHT = 0.04  # grip-site height above the tray centre when opening
GRASP_STEPS = 3
POSITION_TOLERANCE = 0.01


class ScriptedExpert:
    """Stateful policy: call :meth:`reset` at the start of every episode, then :meth:`act`."""

    def __init__(self, max_delta: float, mode: str = "pick_place", noise: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown expert mode {mode!r}; available: {', '.join(MODES)}")
        if noise < 0:
            raise ValueError(f"noise must be non-negative, got {noise}")
        self.max_delta = max_delta
        self.mode = mode
        self.noise = noise
        self.rng = np.random.default_rng()
        self.reset()

    def reset(self, rng: np.random.Generator | None = None) -> None:
        if rng is not None:
            self.rng = rng
        self.phase = "approach"
        self._phase_steps = 0
        self._grasp_offset = np.zeros(3)
        if self.mode == "failed_grasp":
            angle = self.rng.uniform(0, 2 * np.pi)
            self._grasp_offset[:2] = self.rng.uniform(0.035, 0.06) * np.array([np.cos(angle), np.sin(angle)])
        self._wander_goal: np.ndarray | None = None

    def _move_towards(self, eef: np.ndarray, goal: np.ndarray) -> np.ndarray:
        return np.clip((goal - eef) / self.max_delta, -1.0, 1.0)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        eef = obs["robot0_eef_pos"].astype(np.float64)
        state = obs["object"].astype(np.float64)
        cube, tray = state[:3], state[10:13]
        grasp_point = cube + self._grasp_offset
        above = grasp_point + [0.0, 0.0, APPROACH_HEIGHT]
        gripper = -1.0
        self._phase_steps += 1

        if self.phase == "approach":
            move = self._move_towards(eef, above)
            if np.linalg.norm(above - eef) < 2 * POSITION_TOLERANCE:
                self._enter("descend")
        elif self.phase == "descend":
            move = self._move_towards(eef, grasp_point)
            if np.linalg.norm(grasp_point - eef) < POSITION_TOLERANCE:
                self._enter("grasp")
        elif self.phase == "grasp":
            move, gripper = np.zeros(3), 1.0
            if self._phase_steps >= GRASP_STEPS:
                self._enter("lift")
        elif self.phase == "lift":
            gripper = 1.0
            goal = np.array([eef[0], eef[1], CARRY_Z])
            move = self._move_towards(eef, goal)
            if abs(CARRY_Z - eef[2]) < 2 * POSITION_TOLERANCE:
                self._enter("wander" if self.mode == "grasp_only" else "carry")
        elif self.phase == "wander":
            gripper = 1.0
            if self._wander_goal is None or np.linalg.norm(self._wander_goal - eef) < 2 * POSITION_TOLERANCE:
                self._wander_goal = np.array(
                    [self.rng.uniform(-0.2, 0.1), self.rng.uniform(-0.25, 0.05), self.rng.uniform(CARRY_Z - 0.05, CARRY_Z + 0.05)]
                )
            move = self._move_towards(eef, self._wander_goal)
        elif self.phase == "carry":
            gripper = 1.0
            goal = np.array([tray[0], tray[1], CARRY_Z])
            move = self._move_towards(eef, goal)
            if np.linalg.norm(goal[:2] - eef[:2]) < 2 * POSITION_TOLERANCE:
                self._enter("lower")
        elif self.phase == "lower":
            gripper = 1.0
            goal = np.array([tray[0], tray[1], tray[2] + RELEASE_HEIGHT])
            move = self._move_towards(eef, goal)
            if np.linalg.norm(goal - eef) < 2 * POSITION_TOLERANCE:
                self._enter("release")
        else:  # release: open and back off upwards
            move = self._move_towards(eef, np.array([tray[0], tray[1], CARRY_Z]))

        action = np.append(move, gripper)
        if self.noise > 0:
            action = action + self.rng.normal(0.0, self.noise, size=4)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _enter(self, phase: str) -> None:
        self.phase = phase
        self._phase_steps = 0
