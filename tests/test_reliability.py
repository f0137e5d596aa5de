"""No lost or overwritten work, data checked when it is loaded, one-line errors for bad input."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import sim
from datasets.atomic import OutOfSpaceError
from datasets.offline import DemoFile, iter_episodes, load_replay
from datasets.returns import RewardConfig
from conftest import tiny_checkpoint
from policy.checkpoint import load_checkpoint, save_checkpoint
from policy.run import prepare_run_dir, resolve_device, run_workspace

ROOT = Path(__file__).resolve().parent.parent
LOWDIM = ["robot0_eef_pos"]


def _cli(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _steps(path: Path) -> list[int]:
    with open(path) as f:
        return [int(float(row["step"])) for row in csv.DictReader(f)]


# ------------------------------------------------------------------ resume and run dirs
def test_pretraining_resumes_after_sigkill_and_logs_each_step_once(small_dataset, tmp_path):
    run_dir = tmp_path / "run"
    args = ["dataset=pickplace_lowdim", f"dataset.path={small_dataset}", "algo=iql", "algo.hidden_dim=32", "steps=400",
            "batch_size=16", "log_every=1", "checkpoint_every=20", "eval_every=200", "eval_episodes=1", "eval_workers=1",
            "calibration_states=16", f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen([sys.executable, "-m", "policy.pretrain", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (run_dir / "checkpoint.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = load_checkpoint(run_dir / "checkpoint.pt").updates
    assert 0 < killed_at < 400 and max(_steps(run_dir / "train.csv")) >= killed_at

    refused = _cli("policy.pretrain", *args)  # the same command without resume=true
    assert refused.returncode == 2
    assert "already holds a run (checkpoint.pt, train.csv" in refused.stderr and "resume=true" in refused.stderr
    assert "overwrite=true" in refused.stderr

    different = _cli("policy.pretrain", *args, "seed=5", "resume=true")
    assert different.returncode == 2 and "this command's seed differ from the run" in different.stderr

    resumed = _cli("policy.pretrain", *args, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {killed_at}" in resumed.stdout
    final = load_checkpoint(run_dir / "checkpoint.pt")
    assert _steps(run_dir / "train.csv") == list(range(1, 401))  # every step once
    assert _steps(run_dir / "eval.csv") == [200, 400]
    with open(run_dir / "eval.csv") as f:
        rates = [float(row["success_rate"]) for row in csv.DictReader(f)]
    assert final.updates == 400 and final.stage_state["best_success"] == max(rates)
    assert load_checkpoint(run_dir / "best.pt").eval["success_rate"] == max(rates)

    fresh = _cli("policy.pretrain", *args, "steps=2", "eval_every=2", "overwrite=true")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert _steps(run_dir / "train.csv") == [1, 2] and load_checkpoint(run_dir / "checkpoint.pt").updates == 2


def test_run_dir_rules(tmp_path):
    assert prepare_run_dir(tmp_path / "new", resume=False, overwrite=False) is None
    used = tmp_path / "used"
    used.mkdir()
    (used / "train.csv").write_text("step\n1\n")
    with pytest.raises(ValueError, match="already holds a run \\(train.csv\\): continue it with resume=true, or start over with overwrite=true"):
        prepare_run_dir(used, resume=False, overwrite=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        prepare_run_dir(used, resume=True, overwrite=False)
    with pytest.raises(ValueError, match="contradict"):
        prepare_run_dir(used, resume=True, overwrite=True)
    (used / "tb").mkdir()
    assert prepare_run_dir(used, resume=False, overwrite=True) is None
    assert not (used / "train.csv").exists() and not (used / "tb").exists()


def test_unwritable_run_directory_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = _cli("policy.pretrain", f"hydra.run.dir={blocker / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: run directory {blocker / 'run'} is not writable")


def test_stale_temporaries_are_removed_by_the_next_writer(tmp_path):
    dead_pid = 2**22 + 12345  # above Linux's pid_max: no such process
    stale = tmp_path / f".checkpoint.pt.{dead_pid}.tmp"
    stale.write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / "checkpoint.pt", tiny_checkpoint(1, torch.zeros(1)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]

    from datasets.episode import Episode
    from datasets.robomimic_hdf5 import write_dataset

    stale = tmp_path / f".out.hdf5.{dead_pid}.tmp"
    stale.write_bytes(b"half a dataset")
    episode = Episode(obs={"x": np.zeros((2, 1), np.float32)}, next_obs={"x": np.zeros((2, 1), np.float32)},
                      actions=np.zeros((2, 1), np.float32), rewards=np.zeros(2, np.float32), terminals=np.zeros(2, bool),
                      states=np.zeros((2, 1)))
    write_dataset(tmp_path / "out.hdf5", [episode], {"env_name": "pickplace", "env_kwargs": {}}, valid_fraction=0.0)
    assert not stale.exists() and (tmp_path / "out.hdf5").is_file()


# ------------------------------------------------------------------------- full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (needs root and the right to mount, as in a container run as root)."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip() or 'mount failed'})")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_collect_on_a_full_disk_stops_cleanly(small_disk):
    destination = small_disk / "data.hdf5"
    destination.write_bytes(b"the previous file")
    result = _cli("sim.collect", "episodes=30", "workers=1", f"out={destination}", "overwrite=true")
    assert result.returncode == 3
    assert f"\nerror: no space left on device writing {destination}\n" in "\n" + result.stderr  # on its own line
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == ["data.hdf5"]  # no partial file left
    assert destination.read_bytes() == b"the previous file"


def test_checkpoint_on_a_full_disk_keeps_the_previous_one(small_disk):
    path = small_disk / "checkpoint.pt"
    save_checkpoint(path, tiny_checkpoint(1, torch.zeros(10)))
    with pytest.raises(OutOfSpaceError, match=f"no space left on device writing {path}"):
        save_checkpoint(path, tiny_checkpoint(2, torch.zeros(1_000_000)))  # 4 MB
    assert load_checkpoint_step(path) == 1 and sorted(p.name for p in small_disk.iterdir()) == ["checkpoint.pt"]


def load_checkpoint_step(path: Path) -> int:
    return load_checkpoint(path).updates


def test_out_of_space_has_its_own_exit_status(tmp_path, capsys):
    class Full:
        def train(self):
            raise OutOfSpaceError(tmp_path / "checkpoint.pt")

        def close(self):
            pass

    with pytest.raises(SystemExit) as exit_info:
        run_workspace(Full, tmp_path)
    assert exit_info.value.code == 3
    assert capsys.readouterr().err == f"error: no space left on device writing {tmp_path / 'checkpoint.pt'}\n"


# ----------------------------------------------------------------- data checked at load
def _write(path: Path, demos: dict, masks: dict | None = None, env_args: bool = True) -> Path:
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        if env_args:
            data.attrs["env_args"] = json.dumps({"env_name": "pickplace", "env_kwargs": {}})
        for name, arrays in demos.items():
            group = data.create_group(name)
            for key, value in arrays.items():
                group.create_dataset(key, data=value)
        for key, names in (masks or {"train": list(demos)}).items():
            f.create_dataset(f"mask/{key}", data=np.array(names, dtype="S"))
    return path


def _demo(steps: int = 3, **overrides) -> dict:
    arrays = {"obs/robot0_eef_pos": np.zeros((steps, 3), np.float32), "next_obs/robot0_eef_pos": np.zeros((steps, 3), np.float32),
              "actions": np.zeros((steps, 4), np.float32), "rewards": np.zeros(steps, np.float32), "dones": np.zeros(steps)}
    arrays.update(overrides)
    return arrays


@pytest.mark.parametrize("key", ["obs/robot0_eef_pos", "next_obs/robot0_eef_pos", "rewards"])
def test_non_finite_values_are_found_at_load_with_file_demo_and_key(tmp_path, key):
    bad = _demo()
    bad[key] = bad[key].copy()
    bad[key].flat[4 if key != "rewards" else 1] = np.nan
    path = _write(tmp_path / "nan.hdf5", {"demo_0": _demo(), "demo_1": bad})
    with pytest.raises(ValueError, match=f"{path}: data/demo_1/{key} contains non-finite values"):
        load_replay(path, LOWDIM, 0.99, RewardConfig())


def _image_demo(images: np.ndarray) -> dict:
    arrays = _demo(**{"obs/agentview_image": images})
    del arrays["next_obs/robot0_eef_pos"]  # a file without next_obs
    return arrays


def test_images_must_be_uint8_hwc(tmp_path):
    float_images = np.random.default_rng(0).random((3, 8, 8, 3)).astype(np.float32)
    path = _write(tmp_path / "float.hdf5", {"demo_0": _image_demo(float_images)})
    with pytest.raises(ValueError, match=r"data/demo_0/obs/agentview_image holds float32 images of shape \[8, 8, 3\]: images must be uint8 HxWx3"):
        load_replay(path, ["agentview_image"], 0.99, RewardConfig())
    # one demo of float images in [0, 1] among uint8 demos is not cast to black frames
    uint8_images = np.zeros((3, 8, 8, 3), np.uint8)
    path = _write(tmp_path / "mixed.hdf5", {"demo_0": _image_demo(uint8_images),
                                            "demo_1": _image_demo(float_images)})
    with pytest.raises(ValueError, match="data/demo_1/obs/agentview_image holds float32 images"):
        load_replay(path, ["agentview_image"], 0.99, RewardConfig())
    path = _write(tmp_path / "sizes.hdf5", {"demo_0": _image_demo(uint8_images),
                                            "demo_1": _image_demo(np.zeros((3, 9, 9, 3), np.uint8))})
    with pytest.raises(ValueError, match=r"demo_1/obs/agentview_image has shape \[9, 9, 3\], the first demo's is \[8, 8, 3\]"):
        load_replay(path, ["agentview_image"], 0.99, RewardConfig())


@pytest.mark.parametrize("demos, masks, message", [
    ({"demo_0": _demo()}, {"train": ["demo_0", "demo_7"]}, r"mask/train names \['demo_7'\], which are not in 'data'"),
    ({"demo_0": _demo(), "first": _demo()}, {"train": ["demo_0", "first"]}, "mask/train entry 'first' is not of the form demo_<n>"),
    ({}, {"train": []}, "the 'data' group holds no demos"),
])
def test_malformed_structure_is_one_line(tmp_path, demos, masks, message):
    path = _write(tmp_path / "bad.hdf5", demos, masks)
    with pytest.raises(ValueError, match=message):
        list(iter_episodes(path, LOWDIM))


def test_unreadable_object_names_the_demo(tmp_path):
    path = _write(tmp_path / "link.hdf5", {"demo_0": _demo()})
    with h5py.File(path, "r+") as f:
        del f["data/demo_0/actions"]
        f["data/demo_0/actions"] = h5py.ExternalLink("missing.hdf5", "/actions")
    with pytest.raises(ValueError, match=f"{path}: data/demo_0: cannot be read"):
        list(iter_episodes(path, LOWDIM))


def test_missing_env_args_is_found_before_the_replay_loads(tmp_path):
    path = _write(tmp_path / "no_env_args.hdf5", {"demo_0": _demo()}, env_args=False)
    with pytest.raises(ValueError, match="no 'env_args' attribute on the 'data' group"):
        DemoFile(path).env_args()
    result = _cli("policy.pretrain", "dataset=pickplace_lowdim", f"dataset.path={path}", "dataset.obs_keys=[robot0_eef_pos]",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "no 'env_args' attribute" in result.stderr and "replay:" not in result.stdout + result.stderr


# --------------------------------------------------------------- configs refused early
def test_finetune_refusals(trained, tmp_path):
    cases = [
        (["algo.name=foo"], "error: unknown algorithm 'foo'; registered: awac, calql, cql, iql, sac, td3bc"),
        ([f"checkpoint={trained}", "env=lift"], "error: env=lift cannot be combined with a checkpoint made for env 'pickplace'"),
    ]
    for args, message in cases:
        result = _cli("policy.finetune", *args, f"hydra.run.dir={tmp_path / 'run'}")
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_refused_before_work(tmp_path):
    with pytest.raises(ValueError, match="device=cuda but CUDA is not available on this machine; use device=cpu"):
        resolve_device("cuda")
    result = _cli("policy.pretrain", "device=cuda", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "CUDA is not available" in result.stderr and "replay:" not in result.stdout + result.stderr
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")


def test_exported_policy_is_not_taken_for_a_checkpoint(trained, tmp_path):
    from policy.export import export_policy

    exported = export_policy(trained, tmp_path / "policy.pt", ("torchscript", "torch_export", "onnx"))
    for path, kind in ((exported["torchscript"], "TorchScript"), (exported["torch_export"], "torch.export program"),
                       (exported["onnx"], "ONNX model")):
        with pytest.raises(ValueError, match=f"is an exported policy \\({kind}\\), not a training checkpoint"):
            load_checkpoint(path)
    load_checkpoint(trained)


def test_step_before_reset_raises():
    env = sim.make_env("pickplace")
    try:
        with pytest.raises(RuntimeError, match="before reset"):
            env.step(np.zeros(4, np.float32))
        env.reset(seed=0)
        env.step(np.zeros(4, np.float32))
    finally:
        env.close()


# ----------------------------------------------------------- entry points' reliability
def test_a_run_directory_is_owned_by_one_live_process(tmp_path):
    from policy.run import run_dir_lock

    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; from policy.run import run_dir_lock\n"
                               "with run_dir_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)", str(run_dir)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=f"is in use by another live run \\(process {holder.pid}\\)"):
            with run_dir_lock(run_dir):
                pass
        # the same through an entry point: one line, exit 2, the holder's run untouched
        refused = _cli("policy.pretrain", f"hydra.run.dir={run_dir}", "steps=2")
        assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith(f"error: {run_dir} is in use")
        assert not (run_dir / "train.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    with run_dir_lock(run_dir):  # the dead holder's lock file does not block
        pass


def test_names_that_become_paths_are_checked(tmp_path):
    from policy.run import check_name

    for bad in ("../x y/z", "a/b", ".hidden", "", "x y"):
        with pytest.raises(ValueError, match="becomes a directory or file name"):
            check_name(bad, "protocol.name")
    check_name("image_cpu-2.x", "protocol.name")
    result = _cli("policy.experiment", "protocol.name=../x y/z", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "protocol.name '../x y/z'" in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("module, args, message", [
    ("policy.pretrain", ["foo=bar"], "error: Could not override 'foo'. To append to your config use +foo=bar"),
    ("policy.pretrain", ["steps=abc"], "error: Error merging override steps=abc (Value 'abc' of type 'str' could not be converted to Integer)"),
    ("policy.experiment", ["+control=foo"], "error: unknown control 'foo'; available: none, offline_only"),
    ("policy.experiment", ["+seed=3"], "error: Could not append to config. An item is already at 'seed'"),
    ("policy.experiment", ["+foo=bar"], "error: unknown setting 'foo': ExperimentConfig has no field 'foo'"),
    ("policy.finetune", ["algo.tau=3"], "error: algo.tau must be in (0, 1], got 3"),  # SAC from scratch
    ("policy.pretrain", ["algo.tau=0"], "error: algo.tau must be in (0, 1], got 0.0"),
    ("policy.pretrain", ["dataset.obs_keys=[]"], "error: dataset.obs_keys is empty"),
    ("policy.finetune", ["checkpoint=."], "error: . is a directory, not a checkpoint file"),
    ("policy.export", ["checkpoint=x.pt", "out=policy.xyz"], "error: out=policy.xyz: a file of these formats ends in .pt"),
    ("sim.collect", ["seed=-1"], "error: seed must be a non-negative integer, got -1"),
    ("datasets.inspect", ["+foo=1"], "error: unknown setting 'foo': InspectConfig has no field 'foo'"),
])
def test_refusals_are_one_line_exit_2_and_leave_nothing(tmp_path, module, args, message):
    run_dir = tmp_path / "run"
    extra = [f"out={tmp_path / 'out.hdf5'}"] if module == "sim.collect" else []
    result = _cli(module, *args, *extra, f"hydra.run.dir={run_dir}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(message) and "Traceback" not in result.stderr, result.stderr
    assert not run_dir.exists()  # no empty run directory left behind


def test_dataset_that_is_not_hdf5_is_one_line(tmp_path):
    for name, text in (("data.csv", "a,b\n1,2\n"), ("data.json", "{}")):
        (tmp_path / name).write_text(text)
        result = _cli("policy.pretrain", f"dataset.path={tmp_path / name}", f"hydra.run.dir={tmp_path / 'run'}")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / name}: not a readable HDF5 file")


def test_collect_does_not_replace_an_existing_file_unasked(tmp_path):
    existing = tmp_path / "data.hdf5"
    existing.write_bytes(b"an earlier dataset")
    result = _cli("sim.collect", "episodes=2", "workers=1", f"out={existing}")
    assert result.returncode == 2 and f"{existing} already exists" in result.stderr and "overwrite=true" in result.stderr
    assert existing.read_bytes() == b"an earlier dataset"


def test_an_env_left_open_exits_without_egl_noise():
    for code in ("import sim; e = sim.make_env('pickplace'); e.reset(seed=0); e.render()",
                 "import gymnasium, sim; e = gymnasium.make('sim/pickplace-v0'); e.reset(seed=0)"):
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]


def test_finetune_names_its_own_settings_in_refusals(trained, tmp_path):
    result = _cli("policy.finetune", f"checkpoint={trained}", "algo.policy_average_tau=-0.1", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "error: algo.policy_average_tau must be in [0, 1], got -0.1" in result.stderr
