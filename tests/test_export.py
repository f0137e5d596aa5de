import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import onnxruntime
import pytest
import torch

import sim
from conftest import export_checkpoint
from policy.checkpoint import load_checkpoint, restore_agent
from policy.export import export_policy, output_paths, read_metadata

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "policy.pt"
    export_checkpoint(trained, out, "torch_export")
    return out


def _inputs(policy, obs: dict, rows=slice(None)) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(obs[k][rows])) for k in policy.obs_keys()]


def test_metadata_is_stored_in_the_file(exported, trained):
    metadata = read_metadata(exported)
    assert metadata["obs_keys"] == ["agentview_image", "robot0_eef_pos", "robot0_gripper_qpos"]
    assert metadata["inputs"][0] == {"key": "agentview_image", "shape": ["B", 48, 48, 3], "dtype": "uint8"}
    assert metadata["action_dim"] == 4 and len(metadata["action_meaning"]) == 4 and metadata["control_hz"] == 10.0
    assert metadata["source_checkpoint"] == str(trained.resolve()) and metadata["config"]["algo"]["name"] == "calql"
    policy = torch.jit.load(str(exported))
    assert policy.input_shapes() == [[48, 48, 3], [3], [2]] and policy.input_dtypes() == ["uint8", "float32", "float32"]


def test_exported_matches_eager_on_recorded_observations(exported, trained, small_dataset):
    agent = restore_agent(load_checkpoint(trained)).eval()
    policy = torch.jit.load(str(exported))
    program = torch.export.load(str(exported.with_suffix(".pt2"))).module()
    with h5py.File(small_dataset) as f:
        obs = {k: f[f"data/demo_0/obs/{k}"][()] for k in policy.obs_keys()}
    eager = agent.act(obs)
    for batch in (slice(0, 1), slice(0, 7), slice(None)):  # the batch dimension is free
        np.testing.assert_allclose(policy(_inputs(policy, obs, batch)).numpy(), eager[batch], atol=1e-5)
    named = dict(zip(policy.obs_keys(), _inputs(policy, obs)))
    np.testing.assert_allclose(program(named).detach().numpy(), eager, atol=1e-5)
    small = {**named, "agentview_image": named["agentview_image"][:, :32, :32]}
    with pytest.raises(Exception, match=r"observations\['agentview_image'\]"):  # a failed guard names the input
        program(small)


def test_onnx_model_matches_eager_on_recorded_observations(exported_onnx, trained, small_dataset):
    agent = restore_agent(load_checkpoint(trained)).eval()
    session = onnxruntime.InferenceSession(str(exported_onnx), providers=["CPUExecutionProvider"])
    keys = ["agentview_image", "robot0_eef_pos", "robot0_gripper_qpos"]
    assert [i.name for i in session.get_inputs()] == keys and [o.name for o in session.get_outputs()] == ["action"]
    assert session.get_inputs()[0].shape == ["batch", 48, 48, 3] and session.get_inputs()[0].type == "tensor(uint8)"
    with h5py.File(small_dataset) as f:
        obs = {k: f[f"data/demo_0/obs/{k}"][()] for k in keys}
    eager = agent.act(obs)
    assert len(eager) > 7
    for batch in (slice(0, 1), slice(0, 7), slice(None)):  # the batch dimension is free
        (actions,) = session.run(["action"], {k: obs[k][batch] for k in keys})
        np.testing.assert_allclose(actions, eager[batch], atol=1e-5)
    with pytest.raises(Exception, match="agentview_image"):  # a wrong shape names the input
        session.run(None, {**{k: obs[k][:1] for k in keys}, "agentview_image": obs["agentview_image"][:1, :32, :32]})


def test_onnx_model_carries_the_metadata(exported_onnx, trained):
    metadata = read_metadata(exported_onnx)
    assert metadata == read_metadata(exported_onnx.with_suffix(".pt"))
    assert metadata["obs_keys"] == ["agentview_image", "robot0_eef_pos", "robot0_gripper_qpos"]
    assert metadata["source_checkpoint"] == str(trained.resolve())
    session = onnxruntime.InferenceSession(str(exported_onnx), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["metadata.json"]) == metadata  # as a runtime reads it


def test_each_format_gets_its_own_file():
    assert output_paths(Path("p.pt"), ("torchscript", "onnx")) == {"torchscript": Path("p.pt"), "onnx": Path("p.onnx")}
    assert output_paths(Path("p.onnx"), ("torchscript", "onnx")) == {"torchscript": Path("p.pt"), "onnx": Path("p.onnx")}
    assert output_paths(Path("p.pt2"), ("torchscript", "torch_export")) == {"torchscript": Path("p.pt"), "torch_export": Path("p.pt2")}
    assert output_paths(Path("p.bin"), ("torchscript",)) == {"torchscript": Path("p.bin")}


def test_exported_policy_reproduces_eager_episodes_in_the_sim(exported, trained):
    agent = restore_agent(load_checkpoint(trained)).eval()
    policy = torch.jit.load(str(exported))
    env = sim.make_env("pickplace", horizon=15)
    try:
        for seed in (0, 1):
            outcomes = []
            for act in (lambda o: agent.act({k: o[k][None] for k in o})[0],
                        lambda o: policy([torch.from_numpy(o[k])[None] for k in policy.obs_keys()])[0].numpy()):
                obs, _ = env.reset(seed=seed)
                actions, done = [], False
                while not done:
                    actions.append(act({k: obs[k] for k in policy.obs_keys()}))
                    obs, _, terminated, truncated, info = env.step(actions[-1])
                    done = terminated or truncated
                outcomes.append((np.array(actions), info["is_success"]))
            np.testing.assert_allclose(outcomes[0][0], outcomes[1][0], atol=1e-5)
            assert outcomes[0][1] == outcomes[1][1]
    finally:
        env.close()


def test_control_loop_example_runs_with_torch_jit_only(exported):
    result = subprocess.run([sys.executable, "examples/control_loop.py", str(exported), "--episodes", "1", "--no-realtime"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"episode 0: (success|failure) after \d+ steps", result.stdout)


def test_control_loop_resizes_camera_frames_of_another_size(exported):
    # the sim's camera renders 64x64 frames; the policy takes 48x48, resized like its training data
    result = subprocess.run([sys.executable, "examples/control_loop.py", str(exported), "--episodes", "1", "--no-realtime",
                             "--camera-size", "64"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"episode 0: (success|failure) after \d+ steps", result.stdout)


@pytest.mark.parametrize(
    "inputs, message",
    [
        ([torch.zeros(1, 48, 48, 3), torch.zeros(1, 3), torch.zeros(1, 2)], "input agentview_image: expected dtype uint8, got float32"),
        ([torch.zeros(1, 64, 64, 3, dtype=torch.uint8), torch.zeros(1, 3), torch.zeros(1, 2)],
         "input agentview_image: expected shape [B, 48, 48, 3], got [1, 64, 64, 3]"),
        ([torch.zeros(1, 48, 48, 3, dtype=torch.uint8), torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, 2)],
         "input robot0_eef_pos: expected dtype float32, got float64"),
        ([torch.zeros(2, 48, 48, 3, dtype=torch.uint8), torch.zeros(1, 3), torch.zeros(2, 2)], "input robot0_eef_pos: batch size 1 differs from 2"),
        ([torch.zeros(1, 3)], "expected 3 observation tensors"),
    ],
)
def test_bad_inputs_name_the_input(exported, inputs, message):
    policy = torch.jit.load(str(exported))
    with pytest.raises(Exception) as error:
        policy(inputs)
    assert message in str(error.value)


def test_missing_and_corrupt_checkpoints(tmp_path):
    for args, message in (
        ([f"checkpoint={tmp_path / 'none.pt'}"], "error: checkpoint not found"),
        ([f"checkpoint={tmp_path / 'corrupt.pt'}"], "not a readable checkpoint"),
    ):
        (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
        result = subprocess.run([sys.executable, "-m", "policy.export", *args, f"out={tmp_path / 'p.pt'}"],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / "p.pt").exists()
    with pytest.raises(ValueError, match="unknown format"):
        export_policy(tmp_path / "corrupt.pt", tmp_path / "p.pt", ("tflite",))


@pytest.mark.skipif(shutil.which("c++") is None or shutil.which("cmake") is None, reason="no C++ compiler or CMake")
def test_cpp_example_builds_and_matches_python(exported, tmp_path):
    build = tmp_path / "build"
    prefix = torch.utils.cmake_prefix_path
    subprocess.run(["cmake", "-S", str(ROOT / "examples/cpp"), "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix}"],
                   check=True, capture_output=True, timeout=300)
    subprocess.run(["cmake", "--build", str(build), "-j2"], check=True, capture_output=True, timeout=600)
    result = subprocess.run([str(build / "run_policy"), str(exported)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    cpp_action = np.array([float(v) for v in result.stdout.split("action")[1].split()])
    policy = torch.jit.load(str(exported))
    zeros = [torch.zeros(1, 48, 48, 3, dtype=torch.uint8), torch.zeros(1, 3), torch.zeros(1, 2)]
    np.testing.assert_allclose(cpp_action, policy(zeros)[0].numpy(), atol=1e-5)


def test_traced_core_uses_the_actor_encoder_when_it_is_separate():
    from datasets.replay import obs_spec_of
    from perception.encoders import EncoderConfig
    from policy.algorithms import make_agent
    from policy.calql import CalQLConfig
    from policy.export import PolicyCore

    rng = np.random.default_rng(0)
    obs = {"agentview_image": rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8),
           "robot0_eef_pos": rng.normal(size=(3, 3)).astype(np.float32)}
    torch.manual_seed(0)
    agent = make_agent(CalQLConfig(separate_actor_encoder=True, hidden_dim=16), obs_spec_of(obs), 4,
                       EncoderConfig(channels=[4], feature_dim=8)).eval()
    keys = sorted(obs)
    core = torch.jit.trace(PolicyCore(agent, keys), ([torch.from_numpy(obs[k]) for k in keys],))
    with torch.no_grad():
        exported = core([torch.from_numpy(obs[k]) for k in keys]).numpy()
        critic_encoder_actions = agent.actor.deterministic(agent.encoder({k: torch.from_numpy(v) for k, v in obs.items()}))
    np.testing.assert_allclose(exported, agent.act(obs), atol=1e-6)
    assert not torch.allclose(critic_encoder_actions, torch.from_numpy(agent.act(obs)))  # it is not the critic's encoder


def test_traced_core_is_the_policy_average_when_there_is_one():
    from datasets.replay import Batch, obs_spec_of
    from perception.encoders import EncoderConfig
    from policy.algorithms import make_agent
    from policy.calql import CalQLConfig
    from policy.export import PolicyCore

    rng = np.random.default_rng(0)
    obs = {"agentview_image": rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8),
           "robot0_eef_pos": rng.normal(size=(8, 3)).astype(np.float32)}
    batch = Batch(obs=obs, next_obs={k: v.copy() for k, v in obs.items()},
                  actions=rng.uniform(-1, 1, (8, 4)).astype(np.float32), rewards=np.zeros(8, np.float32),
                  terminals=np.zeros(8, np.float32), timeouts=np.zeros(8, np.float32),
                  mc_returns=np.zeros(8, np.float32), discounts=np.full(8, 0.99, np.float32),
                  online=np.zeros(8, np.float32))
    torch.manual_seed(0)
    agent = make_agent(CalQLConfig(hidden_dim=16, cql_num_actions=2, backup_num_actions=2, policy_average_tau=0.5),
                       obs_spec_of(obs), 4, EncoderConfig(channels=[4], feature_dim=8))
    agent.update(batch)
    agent.eval()
    keys = sorted(obs)
    core = torch.jit.trace(PolicyCore(agent, keys), ([torch.from_numpy(obs[k]) for k in keys],))
    with torch.no_grad():
        exported = core([torch.from_numpy(obs[k]) for k in keys]).numpy()
    np.testing.assert_allclose(exported, agent.act(obs), atol=1e-6)
    assert not np.allclose(exported, agent.act(obs, trained=True), atol=1e-4)
