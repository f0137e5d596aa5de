"""The benchmarks run and print their figures (tiny sizes; the figures themselves are not tested)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from policy.run import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_update_benchmark_prints_a_row_per_configuration():
    result = _run("-m", "bench.update", "--algos", "td3bc,iql", "--modes", "eager,cudagraphs", "--batch-sizes", "8,16",
                  "--image-sizes", "32", "--seconds", "0.3", "--threads", "1", "--devices", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if re.match(r"(td3bc|iql)\s+cpu\s", line)]
    # CUDA graphs do not exist on the CPU: no row for them; bf16 rows only where the CPU has it
    precisions = ("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",)
    assert [(row[0], row[2], row[3], int(row[4])) for row in rows] == [
        (name, "eager", precision, batch) for name in ("td3bc", "iql") for batch in (8, 16) for precision in precisions]
    for row in rows:
        rate, flops, achieved, roofline, share = map(float, (*row[6:10], row[10].rstrip("%")))
        assert rate > 0 and flops > 0 and roofline > 0
        assert achieved == pytest.approx(rate * flops, rel=0.1)  # of the printed, rounded figures
        assert share == pytest.approx(100 * achieved / roofline, abs=1)
    assert re.search(r"^1 CPU threads on .+", result.stdout, re.MULTILINE)
    bad = _run("-m", "bench.update", "--modes", "fast")
    assert bad.returncode == 2 and "--modes takes eager, compiled, cudagraphs" in bad.stderr
    if not cpu_has_native_bf16():
        bad = _run("-m", "bench.update", "--precisions", "bf16", "--devices", "cpu")
        assert bad.returncode == 2 and "this CPU has no bfloat16 instructions" in bad.stderr


def test_update_benchmark_help_explains_its_columns():
    result = _run("-m", "bench.update", "--help")
    assert result.returncode == 0
    for column in ("updates/s", "GFLOP/update", "GFLOP/s", "roofline", "%roof"):
        assert f"``{column}``" in result.stdout, column


def test_finetune_benchmark_reports_rate_and_split(trained, small_dataset):
    bf16 = ("--encoder-bf16",) if cpu_has_native_bf16() else ()
    result = _run("-m", "bench.finetune", "--checkpoint", str(trained), "--dataset", str(small_dataset),
                  "--env-steps", "100", "--warmup-steps", "10", "--num-envs", "2", "--batch-size", "16", "--threads", "1",
                  *bf16)
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"(\d+) env steps, (\d+) updates in [\d.]+ s: ([\d.]+) env steps/s.*simulation [\d.]+ s \((\d+)%\), "
                      r"learning [\d.]+ s \((\d+)%\)", result.stdout)
    assert match, result.stdout
    steps, updates, rate = int(match[1]), int(match[2]), float(match[3])
    assert steps >= 100 and updates > 0 and rate > 0 and int(match[4]) + int(match[5]) <= 100
    assert re.search(r"2 sim workers rendering with \S+.*" + (", bf16 encoder;" if bf16 else ";"), result.stdout), result.stdout
    bad = _run("-m", "bench.finetune", "--device", "cpu", "--cuda-graphs")
    assert bad.returncode == 2 and "cuda_graphs=true replays the compiled networks; set compile=true" in bad.stderr
