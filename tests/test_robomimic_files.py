"""robomimic's own files as they come: a file laid out the way robomimic 0.3.0's
dataset_states_to_obs.py writes it (robosuite Lift, two cameras, done_mode 2) pretrains in the
matching env, and dataset.image_size resizes its frames."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

import sim
from datasets.offline import DemoFile, LoaderStats, file_obs_spec, iter_episodes, load_replay
from datasets.returns import RewardConfig
from datasets.frames import resize_frames
from policy.calql import CalQLConfig
from policy.checkpoint import load_checkpoint
from policy.config import DatasetConfig, EnvConfig, PretrainConfig
from policy.pretrain import Workspace, env_for_dataset
from sim import check_obs_spec

ROOT = Path(__file__).resolve().parent.parent
CAMERAS = ("agentview", "robot0_eye_in_hand")
KEYS = ["agentview_image", "robot0_eye_in_hand_image", "robot0_eef_pos", "robot0_gripper_qpos"]
# robosuite 1.4's OSC_POSE settings under its own names, as robomimic's Lift and Can files hold them
OSC_POSE_1_4 = {
    "type": "OSC_POSE", "input_max": 1, "input_min": -1, "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
    "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5], "kp": 150, "damping": 1, "impedance_mode": "fixed",
    "kp_limits": [0, 300], "damping_limits": [0, 10], "position_limits": None, "orientation_limits": None,
    "uncouple_pos_ori": True, "control_delta": True, "interpolation": None, "ramp_ratio": 0.2,
}
LOWDIM = {"object": 10, "robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2, "robot0_joint_pos": 7}
# (steps, steps in success states at the end; 0: a failed demo)
DEMOS = {"demo_0": (9, 3), "demo_1": (7, 0), "demo_2": (8, 2)}
MASKS = {"train": ["demo_0", "demo_1"], "valid": ["demo_2"]}


def robomimic_env_args(env_name: str = "Lift", image_size: int = 48, **env_kwargs) -> dict:
    """env_args as dataset_states_to_obs.py writes them: the robosuite.make arguments of the demo
    file it read (robomimic's own), the extraction's camera settings over them."""
    kwargs = {
        "has_renderer": False, "has_offscreen_renderer": True, "ignore_done": True, "use_object_obs": True,
        "use_camera_obs": True, "control_freq": 20, "controller_configs": dict(OSC_POSE_1_4), "robots": ["Panda"],
        "camera_depths": False, "camera_heights": image_size, "camera_widths": image_size, "reward_shaping": False,
        "camera_names": list(CAMERAS), "render_gpu_device_id": 0,
    }
    kwargs.update(env_kwargs)
    return {"env_name": env_name, "type": 1, "env_kwargs": kwargs}


def write_robomimic_file(path: Path, image_size: int, env_args: dict | None = None, seed: int = 0) -> Path:
    """A file laid out as robomimic writes it: ``data`` attrs ``total`` and ``env_args`` (JSON,
    indented), per demo ``obs``/``next_obs`` (next_obs[t] == obs[t + 1]), float64 ``actions``,
    ``states`` and sparse ``rewards`` (1 in success states), ``dones`` by done_mode 2 (1 in
    success states and at the last step), attrs ``num_samples`` and ``model_file``, and
    ``mask/train``, ``mask/valid`` as byte strings."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for name, (steps, success_steps) in DEMOS.items():
            group = data.create_group(name)
            observations = {f"{camera}_image": rng.integers(0, 256, (steps + 1, image_size, image_size, 3), dtype=np.uint8)
                            for camera in CAMERAS}
            observations.update({key: rng.normal(size=(steps + 1, dim)) for key, dim in LOWDIM.items()})
            for prefix, part in (("obs", slice(0, steps)), ("next_obs", slice(1, steps + 1))):
                for key, value in observations.items():
                    group.create_dataset(f"{prefix}/{key}", data=value[part])
            success = np.arange(steps) >= steps - success_steps
            group.create_dataset("actions", data=rng.uniform(-1, 1, (steps, 7)))
            group.create_dataset("states", data=rng.normal(size=(steps, 32)))
            group.create_dataset("rewards", data=success.astype(np.float64))
            group.create_dataset("dones", data=(success | (np.arange(steps) == steps - 1)).astype(np.int64))
            group.attrs["num_samples"] = steps
            group.attrs["model_file"] = "<mujoco model='base'></mujoco>"
        data.attrs["total"] = sum(steps for steps, _ in DEMOS.values())
        data.attrs["env_args"] = json.dumps(env_args or robomimic_env_args(image_size=image_size), indent=4)
        for key, names in MASKS.items():
            f.create_dataset(f"mask/{key}", data=np.array(names, dtype="S"))
    return path


@pytest.fixture(scope="module")
def lift_48(tmp_path_factory) -> Path:
    return write_robomimic_file(tmp_path_factory.mktemp("robomimic") / "lift_image_48.hdf5", 48)


@pytest.fixture(scope="module")
def lift_84(tmp_path_factory) -> Path:
    return write_robomimic_file(tmp_path_factory.mktemp("robomimic") / "lift_image_84.hdf5", 84)


# ------------------------------------------------------------------------- the file itself
def test_done_mode_2_file_loads_with_success_terminals(lift_48):
    stats = LoaderStats()
    first, second = iter_episodes(lift_48, KEYS, "train", "success", stats)
    # demo_0 enters its success states 3 steps before its end: it ends at the first of them
    assert len(first) == 7 and first.terminals.tolist() == [False] * 6 + [True] and not first.timeouts.any()
    assert stats.dropped_after_terminal == 2
    # demo_1 failed: the done at its last step (done_mode 2 marks trajectory ends) is a timeout
    assert len(second) == 7 and not second.terminals.any() and second.timeouts[-1]
    assert stats.split_episodes == 0 and stats.successes == 1


# --------------------------------------------------------------------------------- resizing
def test_resize_frames_is_opencv_area_interpolation():
    frames = np.random.default_rng(0).integers(0, 256, (2, 3, 84, 84, 3), dtype=np.uint8)
    resized = resize_frames(frames, 48)
    assert resized.shape == (2, 3, 48, 48, 3) and resized.dtype == np.uint8
    np.testing.assert_array_equal(resized[1, 2], cv2.resize(frames[1, 2], (48, 48), interpolation=cv2.INTER_AREA))
    assert resize_frames(frames[0, 0], 32).shape == (32, 32, 3)
    assert resize_frames(frames, 84) is frames


def test_image_size_resizes_every_camera_on_load(lift_84):
    replay, stats = load_replay(lift_84, KEYS, 0.99, RewardConfig(), image_size=48)
    assert replay.obs_spec["agentview_image"] == replay.obs_spec["robot0_eye_in_hand_image"] == {"shape": [48, 48, 3], "dtype": "uint8"}
    assert replay.obs_spec["robot0_eef_pos"]["shape"] == [3]
    assert file_obs_spec(lift_84, KEYS, 48) == replay.obs_spec
    batch = replay.gather(np.arange(len(replay)), 0.99)
    with h5py.File(lift_84) as f:
        for key in ("agentview_image", "robot0_eye_in_hand_image"):
            raw = f[f"data/demo_0/obs/{key}"][()]
            expected = cv2.resize(raw[4], (48, 48), interpolation=cv2.INTER_AREA)
            np.testing.assert_array_equal(batch.obs[key][4], expected)
            # the next observation of the last kept step is the stored next_obs frame, resized
            last = stats.episode_lengths[0] - 1
            np.testing.assert_array_equal(
                batch.next_obs[key][last],
                cv2.resize(f[f"data/demo_0/next_obs/{key}"][last], (48, 48), interpolation=cv2.INTER_AREA))


# --------------------------------------------------------------------------- env mapping
def test_robosuite_env_args_map_to_the_matching_env():
    name, kwargs = sim.env_from_args(robomimic_env_args(image_size=48, horizon=300), "lift.hdf5")
    assert name == "lift"
    assert kwargs == {"cameras": list(CAMERAS), "image_size": 48, "controller": OSC_POSE_1_4, "horizon": 300, "control_hz": 20.0}
    env = sim.make_env(name, **kwargs)
    assert env.observation_space["agentview_image"].shape == env.observation_space["robot0_eye_in_hand_image"].shape == (48, 48, 3)
    assert env.horizon == 300 and env.metadata["render_fps"] == 20.0
    arm = env._controller_config()["body_parts"]["right"]  # robosuite 1.4's names in 1.5's terms
    assert arm["type"] == "OSC_POSE" and arm["damping_ratio"] == 1 and arm["input_type"] == "delta" and arm["kp"] == 150
    assert sim.env_from_args(robomimic_env_args("PickPlaceCan", 84), "can.hdf5")[0] == "can"
    # robosuite 1.5's composite layout (what robomimic writes with it) gives the same arm settings
    composite = {"type": "BASIC", "body_parts": {"right": {**OSC_POSE_1_4, "gripper": {"type": "GRIP"}}}}
    assert sim.env_from_args(robomimic_env_args(controller_configs=composite), "f")[1]["controller"] == OSC_POSE_1_4
    # this project's own files name the env and its kwargs directly
    assert sim.env_from_args({"env_name": "pickplace", "env_kwargs": {"image_size": 32}}, "f") == ("pickplace", {"image_size": 32})


def test_the_files_controller_runs_in_robosuite():
    controller = {**OSC_POSE_1_4, "kp": 100, "damping": 0.5}
    _, kwargs = sim.env_from_args(robomimic_env_args(image_size=32, control_freq=10, controller_configs=controller), "f")
    env = sim.make_env("lift", **kwargs)
    try:
        env.reset(seed=0)
        arm = env._env.robots[0].part_controllers["right"]
        np.testing.assert_allclose(arm.kp, 100)
        np.testing.assert_allclose(arm.kd, 2 * np.sqrt(100) * 0.5)  # damping ratio 0.5
        assert env._env.control_freq == 10
    finally:
        env.close()


@pytest.mark.parametrize(
    "env_args, message",
    [
        (robomimic_env_args("NutAssemblySquare"), "f.hdf5 was made in env 'NutAssemblySquare', which no env here serves "
                                                  "(envs: pickplace, lift, can; robosuite's: Lift (env=lift), PickPlaceCan (env=can))"),
        (robomimic_env_args(robots=["Sawyer"]), "f.hdf5 was made with robot(s) ['Sawyer']; env 'lift' runs robosuite's Lift "
                                                "with one Panda only"),
    ],
)
def test_envs_that_cannot_be_matched_are_named(env_args, message):
    with pytest.raises(ValueError) as error:
        sim.env_from_args(env_args, "f.hdf5")
    assert str(error.value) == message


def test_controllers_other_than_osc_pose_are_refused():
    _, kwargs = sim.env_from_args(robomimic_env_args(controller_configs={"type": "JOINT_VELOCITY"}), "f")
    with pytest.raises(ValueError, match="controller type 'JOINT_VELOCITY': env 'lift' runs robosuite's OSC_POSE arm controller"):
        sim.make_env("lift", **kwargs)


def test_evaluation_env_follows_the_file_and_the_overrides(lift_48, lift_84):
    with DemoFile(lift_48) as small, DemoFile(lift_84) as large:
        assert env_for_dataset(small, DatasetConfig(), EnvConfig(name="lift"))["image_size"] == 48
        resized = env_for_dataset(large, DatasetConfig(image_size=48), EnvConfig(name="lift"))
        assert resized["image_size"] == 48 and resized["cameras"] == list(CAMERAS)
        overridden = env_for_dataset(large, DatasetConfig(), EnvConfig(name="lift", kwargs={"image_size": None, "horizon": 7}))
        assert overridden["image_size"] == 84 and overridden["horizon"] == 7
        with pytest.raises(ValueError) as error:
            env_for_dataset(small, DatasetConfig(), EnvConfig(name="pickplace"))
    assert str(error.value) == f"{lift_48} was made in robosuite's 'Lift', the evaluation env is 'pickplace': add env=lift"


def test_mismatches_name_the_override_that_fixes_them(lift_84):
    spec = file_obs_spec(lift_84, KEYS)
    env = sim.make_env("lift", image_size=48)
    with pytest.raises(ValueError) as error:
        check_obs_spec(spec, env.observation_space, "lift")
    assert str(error.value) == ("image size mismatch for 'agentview_image': dataset [84, 84, 3], env 'lift' [48, 48, 3]; "
                                "set env.kwargs.image_size=84 (the env renders at the dataset's size) or "
                                "dataset.image_size=48 (the frames are resized on load)")
    one_camera = sim.make_env("lift", image_size=84, cameras=("agentview",))
    with pytest.raises(ValueError, match=r"render its camera with env.kwargs.cameras=\[agentview,robot0_eye_in_hand\]$"):
        check_obs_spec(spec, one_camera.observation_space, "lift")
    wide = {"agentview_image": {"shape": [84, 128, 3], "dtype": "uint8"}}
    with pytest.raises(ValueError, match=r"env 'lift' \[48, 48, 3\]; set dataset.image_size=48 \(the frames are resized on load\)$"):
        check_obs_spec(wide, env.observation_space, "lift")


def test_image_size_trains_a_smaller_policy_evaluated_at_that_size(lift_84, tmp_path):
    config = PretrainConfig(dataset=DatasetConfig(name="robomimic", path=str(lift_84), obs_keys=KEYS, image_size=48),
                            algo=CalQLConfig(cql_num_actions=2, backup_num_actions=2), env=EnvConfig(name="lift"),
                            batch_size=8, calibration_states=8)
    workspace = Workspace(config, tmp_path)
    try:
        assert workspace.replay.obs_spec["robot0_eye_in_hand_image"]["shape"] == [48, 48, 3]
        assert workspace.calibration_batch.obs["agentview_image"].shape[1:] == (48, 48, 3)
        assert workspace.env_kwargs["image_size"] == 48 and workspace.session.evaluator.env_kwargs["image_size"] == 48
    finally:
        workspace.close()


# ---------------------------------------------------------------------------- through the CLI
def _pretrain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "policy.pretrain", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_readme_command_pretrains_on_a_robomimic_file_in_the_matching_env(lift_48, tmp_path):
    run_dir = tmp_path / "run"
    result = _pretrain("dataset=robomimic", f"dataset.path={lift_48}", "env=lift", f"hydra.run.dir={run_dir}",
                       # kept fast: a few updates and one short evaluation episode
                       "steps=2", "eval_every=2", "eval_episodes=1", "eval_workers=1", "checkpoint_every=2", "batch_size=8",
                       "log_every=1", "calibration_states=8", "algo.cql_num_actions=2", "algo.backup_num_actions=2",
                       "env.kwargs.horizon=5")
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    assert checkpoint.env == {"name": "lift", "kwargs": {"cameras": list(CAMERAS), "image_size": 48, "controller": OSC_POSE_1_4,
                                                           "control_hz": 20.0, "horizon": 5}}
    assert {key: spec["shape"] for key, spec in checkpoint.obs_spec.items()} == {
        "agentview_image": [48, 48, 3], "robot0_eye_in_hand_image": [48, 48, 3], "robot0_eef_pos": [3], "robot0_gripper_qpos": [2]}
    assert checkpoint.updates == 2 and checkpoint.stage_state["last_eval"]["success_rate"] in (0.0, 1.0)  # one episode


def test_cli_image_size_mismatch_is_one_line_naming_the_fix(lift_84, tmp_path):
    result = _pretrain("dataset=robomimic", f"dataset.path={lift_84}", "env=lift", "env.kwargs.image_size=48",
                       f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.endswith("set env.kwargs.image_size=84 (the env renders at the dataset's size) or "
                                  "dataset.image_size=48 (the frames are resized on load)\n")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
