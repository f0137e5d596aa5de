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
        carry_goal = np.array([tray[0], tray[1], CARRY_Z])
        release_goal = np.array([tray[0], tray[1], tray[2] + RELEASE_HEIGHT])
        # Phase changes are decided on the current observation before acting, so the action
        # taken in a state is the new phase's: the same state never carries two labels (the
        # last step of one phase and the first of the next), which a learned policy could not
        # tell apart.
        self._phase_steps += 1
        if self.phase == "approach" and np.linalg.norm(above - eef) < 2 * POSITION_TOLERANCE:
            self._enter("descend")
        if self.phase == "descend" and np.linalg.norm(grasp_point - eef) < POSITION_TOLERANCE:
            self._enter("grasp")
        if self.phase == "grasp" and self._phase_steps >= GRASP_STEPS:
            self._enter("lift")
        if self.phase == "lift" and abs(CARRY_Z - eef[2]) < 2 * POSITION_TOLERANCE:
            self._enter("wander" if self.mode == "grasp_only" else "carry")
        if self.phase == "carry" and np.linalg.norm(carry_goal[:2] - eef[:2]) < 2 * POSITION_TOLERANCE:
            self._enter("lower")
        if self.phase == "lower" and np.linalg.norm(release_goal - eef) < 2 * POSITION_TOLERANCE:
            self._enter("release")

        gripper = 1.0
        if self.phase == "approach":
            move, gripper = self._move_towards(eef, above), -1.0
        elif self.phase == "descend":
            move, gripper = self._move_towards(eef, grasp_point), -1.0
        elif self.phase == "grasp":
            move = np.zeros(3)
        elif self.phase == "lift":
            move = self._move_towards(eef, np.array([eef[0], eef[1], CARRY_Z]))
        elif self.phase == "wander":
            if self._wander_goal is None or np.linalg.norm(self._wander_goal - eef) < 2 * POSITION_TOLERANCE:
                self._wander_goal = np.array(
                    [self.rng.uniform(-0.2, 0.1), self.rng.uniform(-0.25, 0.05), self.rng.uniform(CARRY_Z - 0.05, CARRY_Z + 0.05)]
                )
            move = self._move_towards(eef, self._wander_goal)
        elif self.phase == "carry":
            move = self._move_towards(eef, carry_goal)
        elif self.phase == "lower":
            move = self._move_towards(eef, release_goal)
        else:  # release: open and back off upwards
            move, gripper = self._move_towards(eef, carry_goal), -1.0

        action = np.append(move, gripper)
        if self.noise > 0:
            action = action + self.rng.normal(0.0, self.noise, size=4)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _enter(self, phase: str) -> None:
        self.phase = phase
        self._phase_steps = 0
