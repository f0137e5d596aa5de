import os

# One torch thread in the tests and the CLIs they start (threads=0 follows it): their networks
# are tiny, and a two-thread learner beside its own sim workers on a 2-core machine runs
# several times slower than a one-thread one.
os.environ.setdefault("OMP_NUM_THREADS", "1")  # before anything imports torch

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import sim  # noqa: E402,F401  (importing it chooses the rendering backend before MuJoCo loads)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def pickplace_env():
    env = sim.make_env("pickplace")
    yield env
    env.close()


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """A collector-made pickplace file of 6 episodes (3 workers' worth of data, 1 worker)."""
    from sim.collect import CollectConfig, collect

    path = tmp_path_factory.mktemp("dataset") / "pickplace_small.hdf5"
    collect(CollectConfig(episodes=6, workers=1, seed=11, out=str(path)))
    return path


@pytest.fixture(scope="session")
def trained(small_dataset, tmp_path_factory):
    """A real checkpoint: a few Cal-QL updates on the collector-made dataset."""
    from policy.calql import CalQLConfig
    from policy.config import DatasetConfig, PretrainConfig
    from policy.pretrain import Workspace

    run_dir = tmp_path_factory.mktemp("run")
    config = PretrainConfig(dataset=DatasetConfig(path=str(small_dataset)), algo=CalQLConfig(cql_num_actions=2, backup_num_actions=2),
                            steps=3, eval_every=3, eval_episodes=1, eval_workers=1, checkpoint_every=3, batch_size=16,
                            log_every=1, calibration_states=8)
    workspace = Workspace(config, run_dir)
    try:
        workspace.train()
    finally:
        workspace.close()
    return run_dir / "checkpoint.pt"


def tiny_checkpoint(updates: int, weights: "torch.Tensor") -> "Checkpoint":  # noqa: F821
    """A valid checkpoint of no real agent, for tests of how checkpoints are written."""
    from policy.checkpoint import Checkpoint

    return Checkpoint(stage="pretrain", algo="calql", config={"algo": {}, "encoder": {}},
                      obs_spec={"robot0_eef_pos": {"shape": [3], "dtype": "float32"}}, action_dim=4,
                      env={"name": "pickplace", "kwargs": {}}, dataset=None,
                      agent={"model": {"weights": weights}, "optimizers": {}, "num_updates": 0},
                      updates=updates, env_steps=0, wall_seconds=0.0, rng={})


def export_checkpoint(checkpoint: Path, out: Path, export_format: str) -> str:
    """``python -m policy.export`` of ``checkpoint`` to ``out``; its stdout (the files it wrote)."""
    result = subprocess.run([sys.executable, "-m", "policy.export", f"checkpoint={checkpoint}", f"out={out}",
                             f"format={export_format}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="session")
def exported_onnx(trained, tmp_path_factory) -> Path:
    """The test checkpoint exported: policy.onnx and policy.pt beside it."""
    out = tmp_path_factory.mktemp("export_onnx") / "policy.onnx"
    written = export_checkpoint(trained, out, "onnx")
    assert f"wrote onnx: {out}" in written and f"wrote torchscript: {out.with_suffix('.pt')}" in written
    return out
