"""policy.evaluate: an exported policy, or a checkpoint's, scored in the simulator on chosen start states."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from policy.evaluate import EvaluateConfig, evaluate
from policy.results import wilson_interval

ROOT = Path(__file__).resolve().parent.parent


def _evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "policy.evaluate", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_scores_the_exported_file_as_its_checkpoint(trained, exported_onnx, tmp_path):
    out = tmp_path / "scores.json"
    result = _evaluate(f"policy={exported_onnx.with_suffix('.pt')}", "episodes=3", "seed=777", "workers=1", f"out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["policy"] == "exported policy" and figures["env_seeds"] == [777, 779] and len(figures["successes"]) == 3
    assert figures["success_rate"] == sum(figures["successes"]) / 3
    assert figures["success_interval"] == list(wilson_interval(sum(figures["successes"]), 3))
    assert figures["source_checkpoint"] == str(trained.resolve()) and figures["stage"] == "pretrain"
    low, high = figures["success_interval"]
    assert f"success {figures['success_rate']:.3f} [{low:.3f}, {high:.3f}] over 3 episodes (env seeds 777-779)" in result.stdout

    # the same episodes through the eager checkpoint and the ONNX model: the same outcomes and returns
    eager = evaluate(EvaluateConfig(checkpoint=str(trained), episodes=3, seed=777, workers=1))
    onnx = evaluate(EvaluateConfig(policy=str(exported_onnx), episodes=3, seed=777, workers=1))
    assert eager["policy"] == "trained weights"  # the test checkpoint has no policy average
    for other in (eager, onnx):
        assert other["successes"] == figures["successes"]
        assert other["return"] == pytest.approx(figures["return"], abs=1e-4)
        assert other["episode_length"] == figures["episode_length"]


@pytest.mark.parametrize("args, message", [
    ((), "give exactly one of policy=EXPORTED_FILE"),
    (("policy=missing.pt",), "exported policy not found: missing.pt"),
    (("episodes=0", "policy=x.pt"), "episodes, workers and threads must be positive"),
])
def test_cli_refuses_bad_requests_in_one_line(args, message):
    result = _evaluate(*args)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_refusals_that_need_a_file(trained, exported_onnx, tmp_path):
    with pytest.raises(ValueError, match="trained=true needs checkpoint="):
        evaluate(EvaluateConfig(policy=str(exported_onnx.with_suffix(".pt")), trained=True))
    with pytest.raises(ValueError, match="has no policy average"):
        evaluate(EvaluateConfig(checkpoint=str(trained), trained=True))
    with pytest.raises(ValueError, match="is an exported policy"):
        evaluate(EvaluateConfig(checkpoint=str(exported_onnx.with_suffix(".pt"))))
    not_a_policy = tmp_path / "notes.pt"
    not_a_policy.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a policy written by python -m policy.export"):
        evaluate(EvaluateConfig(policy=str(not_a_policy)))
