"""Image-based pick-and-place: a Panda arm puts a cube into a tray, seen by one RGB camera.

The scene is assembled with robosuite's models (Panda arm, Panda gripper, table arena, box
object, bin) and compiled once into a plain MuJoCo model that this module drives directly:
robosuite's own environment loop runs a Python controller at every physics substep and
renders through a large multisampled buffer, which caps it far below what this task needs.

Control: at ``control_hz`` (10 Hz) the 4-d action ``[dx, dy, dz, grip]`` in [-1, 1] moves the
end-effector target by ``action[:3] * max_delta`` metres (0.04 m per step, 0.4 m/s at full
speed) with the gripper held pointing down; ``grip`` maps linearly from fully open (-1) to
fully closed (+1). Inverse kinematics turns the target into joint targets once per control
step, and MuJoCo's position servos (with gravity compensation) track them for all physics
substeps in C. Grasping is physical: the cube is held only by finger contact and friction.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

import mujoco  # the package's __init__ has set MUJOCO_GL before this first import

from sim.actions import checked_action  # noqa: E402
from sim.lifetime import close_at_exit  # noqa: E402

TABLE_TOP_Z = 0.8
CUBE_HALF_SIZE = 0.025
TRAY_POS = np.array([0.0, 0.2, TABLE_TOP_Z + 0.025])  # bin centre: its base rests on the table
TRAY_SIZE = (0.18, 0.18, 0.05)  # outer x, y, height
TRAY_WALL = 0.01
ROBOT_BASE_POS = (-0.56, 0.0, 0.0)
CUBE_REGION_LOW = np.array([-0.15, -0.25])
CUBE_REGION_HIGH = np.array([0.08, -0.02])
# End-effector (grip site) workspace: over the table, from just above its surface.
WORKSPACE_LOW = np.array([-0.3, -0.35, TABLE_TOP_Z + 0.018])
WORKSPACE_HIGH = np.array([0.25, 0.35, TABLE_TOP_Z + 0.3])
HOME_EEF_POS = np.array([-0.1, 0.0, TABLE_TOP_Z + 0.2])
# Rotation of the grip site that points the fingers straight down (closing along world y).
GRIP_DOWN_MAT = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
# Joint servos are tuned per joint from the arm's inertia at the neutral posture: natural
# frequency SERVO_OMEGA (rad/s), critically damped.
SERVO_OMEGA = 40.0
ARM_ARMATURE = 0.1
PANDA_NEUTRAL_QPOS = np.array([0.0, np.pi / 16.0, 0.0, -np.pi / 2.0 - np.pi / 3.0, 0.0, np.pi - 0.2, np.pi / 4])
CAMERA_POS = np.array([0.2, 0.02, 1.4])
CAMERA_LOOKAT = np.array([-0.07, 0.02, 0.82])
CAMERA_FOVY = 48.0
FINGER_OPEN = 0.04


# What each of the 4 action dimensions commands (exported with the policy for its controller)
ACTION_MEANING = ["dx (x 0.04 m)", "dy (x 0.04 m)", "dz (x 0.04 m)", "gripper: -1 open, +1 closed"]


@dataclass(frozen=True)
class PickPlaceConfig:
    """Everything that defines the task; stored in dataset files to rebuild the env."""

    image_size: int = 48
    horizon: int = 45
    control_hz: float = 10.0
    max_delta: float = 0.04
    render_size: int = 256
    physics_timestep: float = 0.002

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 128:
            raise ValueError(f"image_size must be in [16, 128], got {self.image_size}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be positive, got {self.horizon}")
        substeps = 1.0 / (self.control_hz * self.physics_timestep)
        if abs(substeps - round(substeps)) > 1e-6 or substeps < 1:
            raise ValueError(
                f"1 / (control_hz * physics_timestep) must be a positive integer, got {substeps:g}"
            )


@functools.lru_cache(maxsize=1)
def _scene_xml() -> str:
    """MJCF of the scene, assembled with robosuite's modelling API (cached: it takes ~1 s)."""
    from robosuite.models import MujocoWorldBase
    from robosuite.models.arenas import TableArena
    from robosuite.models.bases import RethinkMount
    from robosuite.models.grippers import gripper_factory
    from robosuite.models.objects import BoxObject
    from robosuite.models.objects.composite import Bin
    from robosuite.models.robots import Panda

    world = MujocoWorldBase()
    robot = Panda()
    robot.add_gripper(gripper_factory("PandaGripper"))
    robot.add_base(RethinkMount())
    robot.set_base_xpos(np.array(ROBOT_BASE_POS))
    world.merge(robot)
    world.merge(TableArena(table_full_size=(0.8, 0.8, 0.05), table_offset=(0, 0, TABLE_TOP_Z)))

    cube = BoxObject(
        name="cube",
        size=[CUBE_HALF_SIZE] * 3,
        rgba=[0.85, 0.1, 0.1, 1.0],
        friction=[1.0, 0.005, 0.0001],
        density=500.0,
    )
    tray = Bin(
        name="tray",
        bin_size=TRAY_SIZE,
        wall_thickness=TRAY_WALL,
        transparent_walls=False,
        rgba=(0.15, 0.3, 0.6, 1.0),
    )
    for obj, pos in ((cube, (0.0, -0.1, TABLE_TOP_Z + CUBE_HALF_SIZE)), (tray, TRAY_POS)):
        world.merge_assets(obj)
        body = obj.get_obj()
        body.set("pos", " ".join(str(v) for v in pos))
        if obj is tray:  # the tray is fixed to the table
            for joint in body.findall("joint") + body.findall("freejoint"):
                body.remove(joint)
        world.worldbody.append(body)
    # Gravity-compensated arm (set before compiling: MuJoCo sizes gravcomp at compile time).
    for body in world.worldbody.iter("body"):
        if body.get("name", "").startswith(("robot0_", "gripper0_")):
            body.set("gravcomp", "1")
    return world.get_xml()


def _lookat_quat(pos: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Quaternion of a MuJoCo camera at ``pos`` looking at ``target`` with world z up."""
    forward = (target - pos) / np.linalg.norm(target - pos)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    mat = np.stack([right, up, -forward], axis=1)  # camera looks along its -z
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, mat.flatten())
    return quat


MAX_RENDER_FACES = 1000  # meshes with more faces are drawn as their convex hull


def _convex_hull_mesh(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and outward-wound triangles of the convex hull of ``vertices``."""
    from scipy.spatial import ConvexHull

    hull = ConvexHull(vertices)
    remap = np.full(len(vertices), -1)
    remap[hull.vertices] = np.arange(len(hull.vertices))
    faces = remap[hull.simplices]
    points = vertices[hull.vertices]
    a, b, c = points[faces[:, 0]], points[faces[:, 1]], points[faces[:, 2]]
    inward = np.einsum("ij,ij->i", np.cross(b - a, c - a), a - points.mean(axis=0)) < 0
    faces[inward] = faces[inward][:, ::-1]
    return points, faces


def _scene_spec() -> mujoco.MjSpec:
    """The scene with cheap render geometry and only the contacts that matter.

    The arm is drawn through its collision meshes instead of its ~180k-triangle visual
    meshes, and any drawn mesh that is still large is replaced by its convex hull: at
    48-128 px the difference is invisible and rendering is several times faster. Arm links
    and the mount never touch anything the task cares about, so their contacts are off.
    """
    spec = mujoco.MjSpec.from_string(_scene_xml())
    reference = spec.compile()
    for geom in list(spec.geoms):
        if geom.name.startswith("robot0_g") or geom.name == "gripper0_hand_visual":
            spec.delete(geom)
        elif geom.name.startswith(("robot0_link", "gripper0_hand_collision")):
            geom.group = 1
            geom.rgba = [0.92, 0.92, 0.92, 1.0]
        if geom.name.startswith(("robot0_", "fixed_mount0_")):
            geom.contype = geom.conaffinity = 0
    for geom in list(spec.geoms):
        if geom.type != mujoco.mjtGeom.mjGEOM_MESH or geom.group != 1:
            continue
        compiled = reference.geom(geom.name)
        mesh_id = compiled.dataid[0]
        if reference.mesh_facenum[mesh_id] <= MAX_RENDER_FACES:
            continue
        start = reference.mesh_vertadr[mesh_id]
        points, faces = _convex_hull_mesh(reference.mesh_vert[start : start + reference.mesh_vertnum[mesh_id]])
        hull = spec.add_mesh(name=f"{geom.name}_hull", uservert=points.ravel(), userface=faces.ravel())
        # The compiled geom frame matches the compiled (re-centred) vertices.
        geom.meshname, geom.pos, geom.quat = hull.name, compiled.pos, compiled.quat
    used = {geom.meshname for geom in spec.geoms}
    for mesh in list(spec.meshes):
        if mesh.name not in used:
            spec.delete(mesh)
    return spec


def build_model(config: PickPlaceConfig) -> mujoco.MjModel:
    """Compile the scene and turn it into a fast, C-controlled, cheaply rendered model."""
    model = _scene_spec().compile()
    model.opt.timestep = config.physics_timestep
    model.opt.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST

    # Arm torque motors -> position servos with the motors' torque limits.
    arm_joints = [model.joint(f"robot0_joint{i}").id for i in range(1, 8)]
    arm_dofs = model.jnt_dofadr[arm_joints]
    model.dof_armature[arm_dofs] = ARM_ARMATURE
    data = mujoco.MjData(model)
    data.qpos[model.jnt_qposadr[arm_joints]] = PANDA_NEUTRAL_QPOS
    mujoco.mj_forward(model, data)
    mass_matrix = np.zeros((model.nv, model.nv))
    mujoco.mj_fullM(model, mass_matrix, data.qM)
    for k, joint_id in enumerate(arm_joints):
        act = model.actuator(f"robot0_torq_j{k + 1}").id
        inertia = mass_matrix[arm_dofs[k], arm_dofs[k]]
        kp, kv = inertia * SERVO_OMEGA**2, 2.0 * inertia * SERVO_OMEGA
        torque_limit = model.actuator_ctrlrange[act].copy()
        model.actuator_gaintype[act] = mujoco.mjtGain.mjGAIN_FIXED
        model.actuator_gainprm[act, :3] = [kp, 0.0, 0.0]
        model.actuator_biastype[act] = mujoco.mjtBias.mjBIAS_AFFINE
        model.actuator_biasprm[act, :3] = [0.0, -kp, -kv]
        model.actuator_ctrlrange[act] = model.jnt_range[joint_id]
        model.actuator_forcerange[act] = torque_limit
        model.actuator_forcelimited[act] = 1

    camera = model.camera("agentview").id
    model.cam_pos[camera] = CAMERA_POS
    model.cam_quat[camera] = _lookat_quat(CAMERA_POS, CAMERA_LOOKAT)
    model.cam_fovy[camera] = CAMERA_FOVY
    model.vis.quality.offsamples = 0
    model.vis.global_.offwidth = max(config.image_size, config.render_size)
    model.vis.global_.offheight = max(config.image_size, config.render_size)
    return model


class PickPlaceEnv(gym.Env):
    """Gymnasium env of the pick-and-place task; see the module docstring for the dynamics.

    Observations use robomimic's key names: ``agentview_image`` (uint8 HxWx3, upright),
    ``robot0_eef_pos`` (3), ``robot0_gripper_qpos`` (2) and ``object`` (13: cube position,
    cube quaternion wxyz, cube position relative to the end-effector, tray position), the
    last one privileged state for scripted experts and diagnostics.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = "rgb_array", **kwargs) -> None:
        self.config = PickPlaceConfig(**kwargs)
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.config.control_hz}
        self.model = build_model(self.config)
        self.data = mujoco.MjData(self.model)
        self._ik_data = mujoco.MjData(self.model)
        self._substeps = round(1.0 / (self.config.control_hz * self.config.physics_timestep))
        m = self.model
        self._arm_qadr = np.array([m.jnt_qposadr[m.joint(f"robot0_joint{i}").id] for i in range(1, 8)])
        self._arm_dofadr = np.array([m.jnt_dofadr[m.joint(f"robot0_joint{i}").id] for i in range(1, 8)])
        self._arm_range = m.jnt_range[[m.joint(f"robot0_joint{i}").id for i in range(1, 8)]]
        self._arm_act = np.array([m.actuator(f"robot0_torq_j{i}").id for i in range(1, 8)])
        self._finger_qadr = np.array(
            [m.jnt_qposadr[m.joint(f"gripper0_finger_joint{i}").id] for i in (1, 2)]
        )
        self._finger_act = np.array([m.actuator(f"gripper0_gripper_finger_joint{i}").id for i in (1, 2)])
        cube_joint = m.joint("cube_joint0").id
        self._cube_qadr = m.jnt_qposadr[cube_joint]
        self._cube_dofadr = m.jnt_dofadr[cube_joint]
        self._cube_geoms = {i for i in range(m.ngeom) if m.geom(i).name == "cube_g0"}
        self._finger_geoms = {
            i for i in range(m.ngeom) if m.geom(i).name.startswith("gripper0_") and m.geom_contype[i] + m.geom_conaffinity[i] > 0
        }
        self._grip_site = m.site("gripper0_grip_site").id
        self._camera = m.camera("agentview").id
        mujoco.mj_forward(m, self.data)
        tray_base = m.geom("tray_base").id
        self._tray_floor_z = self.data.geom_xpos[tray_base, 2] + m.geom_size[tray_base, 2]
        self._tray_inner_half = TRAY_SIZE[0] / 2 - TRAY_WALL
        self._home_qpos = self._solve_ik(HOME_EEF_POS, PANDA_NEUTRAL_QPOS, iterations=200)

        size = self.config.image_size
        self.observation_space = gym.spaces.Dict(
            {
                "agentview_image": gym.spaces.Box(0, 255, (size, size, 3), np.uint8),
                "robot0_eef_pos": gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
                "robot0_gripper_qpos": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
                "object": gym.spaces.Box(-np.inf, np.inf, (13,), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self._obs_renderer: mujoco.Renderer | None = None
        self._video_renderer: mujoco.Renderer | None = None
        self._scene_option = mujoco.MjvOption()
        self._scene_option.geomgroup[:] = [0, 1, 0, 0, 0, 0]
        self._scene_option.sitegroup[:] = 0
        self._target = HOME_EEF_POS.copy()
        self._steps = 0
        self._was_reset = False

    # ----------------------------------------------------------------------------- control
    def _solve_ik(self, target: np.ndarray, arm_qpos: np.ndarray, iterations: int = 2) -> np.ndarray:
        """Damped least-squares IK for grip-site position with the fingers pointing down."""
        m, ik = self.model, self._ik_data
        ik.qpos[:] = self.data.qpos
        q = arm_qpos.copy()
        jacp = np.zeros((3, m.nv))
        jacr = np.zeros((3, m.nv))
        for _ in range(iterations):
            ik.qpos[self._arm_qadr] = q
            mujoco.mj_kinematics(m, ik)
            mujoco.mj_comPos(m, ik)
            rot = ik.site_xmat[self._grip_site].reshape(3, 3)
            rot_err = 0.5 * np.cross(rot, GRIP_DOWN_MAT, axis=0).sum(axis=1)
            err = np.concatenate([target - ik.site_xpos[self._grip_site], rot_err])
            mujoco.mj_jacSite(m, ik, jacp, jacr, self._grip_site)
            jac = np.concatenate([jacp[:, self._arm_dofadr], jacr[:, self._arm_dofadr]])
            jjt = jac @ jac.T + 1e-4 * np.eye(6)
            dq = jac.T @ np.linalg.solve(jjt, err)
            # Pull the redundant joint towards the neutral posture without disturbing the task.
            posture = 0.05 * (PANDA_NEUTRAL_QPOS - q)
            dq += posture - jac.T @ np.linalg.solve(jjt, jac @ posture)
            q = np.clip(q + dq, self._arm_range[:, 0], self._arm_range[:, 1])
        return q

    def _grip_pos(self) -> np.ndarray:
        return self.data.site_xpos[self._grip_site].copy()

    # ------------------------------------------------------------------------------- API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        d.qpos[self._arm_qadr] = self._home_qpos
        d.ctrl[self._arm_act] = self._home_qpos
        d.qpos[self._finger_qadr] = [FINGER_OPEN, -FINGER_OPEN]
        d.ctrl[self._finger_act] = [FINGER_OPEN, -FINGER_OPEN]
        cube_xy = self.np_random.uniform(CUBE_REGION_LOW, CUBE_REGION_HIGH)
        if options and "cube_xy" in options:
            cube_xy = np.asarray(options["cube_xy"], dtype=float)
        yaw = self.np_random.uniform(-np.pi / 4, np.pi / 4)
        d.qpos[self._cube_qadr : self._cube_qadr + 7] = [
            cube_xy[0], cube_xy[1], TABLE_TOP_Z + CUBE_HALF_SIZE, np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)
        ]
        mujoco.mj_forward(m, d)
        self._target = self._grip_pos()
        self._steps = 0
        self._was_reset = True
        return self._observation(), {"is_success": False}

    def step(self, action):
        if not self._was_reset:
            raise RuntimeError("step() called before reset(): call env.reset() first")
        action = checked_action(action, 4)
        m, d = self.model, self.data
        grip = self._grip_pos()
        # The target leads the gripper by at most two steps so that pushing against the
        # table or an object does not wind it up.
        leash = 2.0 * self.config.max_delta
        target = np.clip(self._target + action[:3] * self.config.max_delta, WORKSPACE_LOW, WORKSPACE_HIGH)
        self._target = grip + np.clip(target - grip, -leash, leash)
        d.ctrl[self._arm_act] = self._solve_ik(self._target, d.qpos[self._arm_qadr])
        finger = FINGER_OPEN * (1.0 - action[3]) / 2.0
        d.ctrl[self._finger_act] = [finger, -finger]
        mujoco.mj_step(m, d, nstep=self._substeps)
        if not (np.all(np.isfinite(d.qpos)) and np.all(np.isfinite(d.qvel))):
            raise RuntimeError(f"physics diverged at step {self._steps}")
        self._steps += 1
        success = self._is_success()
        truncated = self._steps >= self.config.horizon and not success
        return self._observation(), float(success), success, truncated, {"is_success": success}

    def _is_success(self) -> bool:
        d = self.data
        cube = d.qpos[self._cube_qadr : self._cube_qadr + 3]
        inside = np.all(np.abs(cube[:2] - TRAY_POS[:2]) < self._tray_inner_half - 0.5 * CUBE_HALF_SIZE)
        low = cube[2] < self._tray_floor_z + CUBE_HALF_SIZE + 0.01
        at_rest = np.linalg.norm(d.qvel[self._cube_dofadr : self._cube_dofadr + 3]) < 0.05
        if not (inside and low and at_rest):
            return False
        geom1, geom2 = d.contact.geom1, d.contact.geom2
        for a, b in zip(geom1, geom2):
            if (a in self._cube_geoms and b in self._finger_geoms) or (b in self._cube_geoms and a in self._finger_geoms):
                return False
        return True

    def _observation(self) -> dict[str, np.ndarray]:
        d = self.data
        if self._obs_renderer is None:  # created lazily so that vector-env workers own their GL context
            self._obs_renderer = self._make_renderer(self.config.image_size)
        grip = self._grip_pos()
        cube_pos = d.qpos[self._cube_qadr : self._cube_qadr + 3]
        cube_quat = d.qpos[self._cube_qadr + 3 : self._cube_qadr + 7]
        return {
            "agentview_image": self._render_with(self._obs_renderer),
            "robot0_eef_pos": grip.astype(np.float32),
            "robot0_gripper_qpos": d.qpos[self._finger_qadr].astype(np.float32),
            "object": np.concatenate([cube_pos, cube_quat, cube_pos - grip, TRAY_POS]).astype(np.float32),
        }

    def _make_renderer(self, size: int) -> mujoco.Renderer:
        renderer = mujoco.Renderer(self.model, size, size)
        close_at_exit(self)
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX):
            renderer.scene.flags[flag] = 0
        return renderer

    def _render_with(self, renderer: mujoco.Renderer) -> np.ndarray:
        renderer.update_scene(self.data, camera=self._camera, scene_option=self._scene_option)
        return renderer.render()

    def render(self) -> np.ndarray:
        """A ``render_size`` RGB frame from the observation camera, for videos."""
        if self._video_renderer is None:
            self._video_renderer = self._make_renderer(self.config.render_size)
        return self._render_with(self._video_renderer)

    def get_state(self) -> np.ndarray:
        """Flattened MuJoCo state ``[time, qpos, qvel]`` (robosuite's layout)."""
        d = self.data
        return np.concatenate([[d.time], d.qpos, d.qvel])

    def close(self) -> None:
        for renderer in (self._obs_renderer, self._video_renderer):
            if renderer is not None:
                renderer.close()
        self._obs_renderer = self._video_renderer = None
