"""``python -m datasets.inspect`` on small files like ours and like robomimic's, through the CLI."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import imageio.v3 as iio
import numpy as np
import pytest

from datasets.episode import Episode
from datasets.robomimic_hdf5 import write_dataset

ROOT = Path(__file__).resolve().parent.parent
SIZE = 12  # image side: small files, and a contact-sheet scale above 1


def _inspect(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # runs from other folders too (the default `out`)
    return subprocess.run([sys.executable, "-m", "datasets.inspect", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _frames(demo: int, steps: int, camera: int) -> np.ndarray:
    """Flat frames whose colour tells demo, step and camera apart (and survives H.264)."""
    values = (40 * demo + 10 * np.arange(steps) + 120 * camera) % 256
    return np.broadcast_to(values[:, None, None, None], (steps, SIZE, SIZE, 3)).astype(np.uint8).copy()


def _table_row(stdout: str, key: str) -> list[str]:
    match = re.search(rf"^  {re.escape(key)}\s+(\d+)\s+(\d+)\s+(\S+)$", stdout, re.M)
    assert match, stdout
    return list(match.groups())


@pytest.fixture
def ours(tmp_path) -> Path:
    """Written by the project's writer: lengths 3-7, demos 1 and 3 succeed, demo_0 is `valid`."""
    episodes = []
    for index, steps in enumerate([3, 4, 5, 6, 7]):
        success = index in (1, 3)
        rewards = np.zeros(steps, np.float32)
        rewards[-1] = float(success)
        obs = {"agentview_image": _frames(index, steps, 0), "robot0_eef_pos": np.zeros((steps, 3), np.float32)}
        episodes.append(Episode(obs=obs, next_obs={k: v.copy() for k, v in obs.items()},
                                actions=np.tile(np.linspace(-0.5, 0.5, steps, dtype=np.float32)[:, None], (1, 4)),
                                rewards=rewards, terminals=rewards > 0, states=np.zeros((steps, 2))))
    path = tmp_path / "ours.hdf5"
    write_dataset(path, episodes, {"env_name": "pickplace", "env_kwargs": {"image_size": SIZE, "control_hz": 10.0}},
                  valid_fraction=0.2)
    return path


def _write_robomimic(path: Path, next_obs: bool = True) -> Path:
    """Laid out as robomimic's dataset_states_to_obs.py writes it (done_mode 2: done at success
    steps and at every demo's last step, failed demos included). Lengths 10, 6, 8, 5; demos 0
    and 2 succeed."""
    lengths, success_from = [10, 6, 8, 5], {0: 7, 2: 4}
    env_args = {"env_name": "Lift", "type": 1, "env_kwargs": {
        "has_renderer": False, "camera_names": ["agentview", "robot0_eye_in_hand"], "camera_heights": SIZE,
        "camera_widths": SIZE, "control_freq": 20, "reward_shaping": False,
        "controller_configs": {"type": "OSC_POSE", "kp": 150}}}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for index, steps in enumerate(lengths):
            demo = data.create_group(f"demo_{index}")
            demo.attrs["num_samples"] = steps
            rewards = np.zeros(steps)
            if index in success_from:
                rewards[success_from[index]:] = 1.0
            dones = (rewards > 0).astype(np.int64)
            dones[-1] = 1
            obs = {"agentview_image": _frames(index, steps, 0), "robot0_eye_in_hand_image": _frames(index, steps, 1),
                   "robot0_eef_pos": np.random.default_rng(index).normal(size=(steps, 3))}
            for key, value in obs.items():
                demo.create_dataset(f"obs/{key}", data=value)
                if next_obs:
                    demo.create_dataset(f"next_obs/{key}", data=np.concatenate([value[1:], value[-1:]]))
            demo.create_dataset("actions", data=np.full((steps, 7), 0.25 * (index - 1)))
            demo.create_dataset("rewards", data=rewards)
            demo.create_dataset("dones", data=dones)
            demo.create_dataset("states", data=np.zeros((steps, 5)))
        data.attrs["total"] = sum(lengths)
        data.attrs["env_args"] = json.dumps(env_args)
        for key, names in {"train": ["demo_0", "demo_1", "demo_3"], "valid": ["demo_2"], "20_percent": ["demo_1"]}.items():
            f.create_dataset(f"mask/{key}", data=np.array(names, dtype="S"))
    return path


def test_our_file(ours, tmp_path):
    out = tmp_path / "out"
    result = _inspect(f"file={ours}", f"out={out}", "columns=4")
    assert result.returncode == 0, result.stderr[-3000:]
    stdout = result.stdout
    assert f"{ours}: 5 demos, 25 transitions" in stdout
    assert _table_row(stdout, "(all)") == ["5", "25", "0.400"]
    assert _table_row(stdout, "train") == ["4", "22", "0.500"]
    assert _table_row(stdout, "valid") == ["1", "3", "0.000"]
    assert "success rate: 0.400 (2 of 5 demos" in stdout
    assert "episode lengths: min 3, mean 5.0, max 7" in stdout
    assert "dones: 2 steps; 2 demos end with done, 0 have one before their last step" in stdout
    assert re.search(r"^  agentview_image\s+uint8\s+\[12, 12, 3\]\s+camera$", stdout, re.M)
    assert re.search(r"^  robot0_eef_pos\s+float32\s+\[3\]$", stdout, re.M)
    assert re.search(r"^  0\s+-0\.500\s+0\.500\s+", stdout, re.M)  # action dim 0: min, max
    assert "env: 'pickplace'" in stdout and "problems: none" in stdout

    summary = json.loads((out / "summary.json").read_text())
    assert summary["transitions"] == 25 and summary["success"]["rate"] == pytest.approx(0.4)
    assert summary["shown_demos"] == ["demo_0", "demo_1", "demo_3", "demo_4"]  # 4 spread over 5 demos
    sheet = iio.imread(out / "contact_sheet.png")
    assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
    video = iio.imread(out / "demos.mp4", plugin="FFMPEG")
    assert len(video) == 3 + 4 + 6 + 7 == summary["video_frames"]


@pytest.mark.parametrize("next_obs", [True, False])
def test_robomimic_file(tmp_path, next_obs):
    path = _write_robomimic(tmp_path / "lift_image.hdf5", next_obs)
    # without `out`: a folder under outputs/ where the command runs
    result = _inspect(f"file={path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    stdout = result.stdout
    assert "4 demos, 29 transitions" in stdout
    assert _table_row(stdout, "(all)") == ["4", "29", "0.500"]
    assert _table_row(stdout, "train") == ["3", "21", "0.333"]
    assert _table_row(stdout, "valid") == ["1", "8", "1.000"]
    assert _table_row(stdout, "20_percent") == ["1", "6", "0.000"]
    # done_mode 2 marks every last step, failed demos too: success comes from the rewards
    assert "success rate: 0.500 (2 of 4 demos" in stdout
    assert "dones: 9 steps; 4 demos end with done, 2 have one before their last step" in stdout
    assert "episode lengths: min 5, mean 7.2, max 10" in stdout
    assert "env: 'Lift'" in stdout and '"control_freq": 20' in stdout
    assert ("next_obs stored:" if next_obs else "next_obs not stored") in stdout
    assert re.search(r"^  robot0_eye_in_hand_image\s+uint8\s+\[12, 12, 3\]\s+camera$", stdout, re.M)
    assert re.search(r"^  robot0_eef_pos\s+float64\s+\[3\]$", stdout, re.M)
    assert re.search(r"^  6\s+-0\.250\s+0\.500\s+0\.069$", stdout, re.M)  # the 7th action dim: min, max, mean

    out = tmp_path / "outputs" / "inspect" / "lift_image"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["demos_with_next_obs"] == (4 if next_obs else 0) and summary["video_fps"] == 20
    video = iio.imread(out / "demos.mp4", plugin="FFMPEG")
    assert len(video) == 29  # every step of the 4 demos
    # the first frame is demo_0's stored step 0, cameras side by side (flat colours 0 and 120)
    frame = video[0]
    height, width = frame.shape[:2]
    assert abs(int(frame[height * 2 // 3, width // 4, 0]) - 0) < 8
    assert abs(int(frame[height * 2 // 3, width * 3 // 4, 0]) - 120) < 8
    sheet = iio.imread(out / "contact_sheet.png")
    assert sheet.shape[0] > 4 * SIZE and sheet.shape[1] > 8 * 2 * SIZE


def _not_hdf5(tmp_path: Path) -> Path:
    path = tmp_path / "notes.hdf5"
    path.write_text("not an HDF5 file")
    return path


def _not_a_dataset(tmp_path: Path) -> Path:
    path = tmp_path / "weights.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("layer0/weight", data=np.zeros(3))
    return path


@pytest.mark.parametrize("make, message", [
    (lambda tmp_path: tmp_path / "missing.hdf5", "dataset file not found: "),
    (_not_hdf5, "not a readable HDF5 file"),
    (_not_a_dataset, "no 'data' group; not a robomimic-format file"),
    (None, "no dataset given: python -m datasets.inspect file=PATH"),
])
def test_refusals_are_one_line(tmp_path, make, message):
    out = tmp_path / "out"
    result = _inspect(*([f"file={make(tmp_path)}"] if make else []), f"out={out}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not out.exists()  # refused before any work
