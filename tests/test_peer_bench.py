"""The d3rlpy comparison runs where d3rlpy 2.8.1 is installed and says what it needs where not."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# d3rlpy made unimportable, whether installed or not; then the benchmark runs as ``python -m``
WITHOUT_D3RLPY = """
import runpy, sys

class BlockD3rlpy:
    def find_spec(self, name, path=None, target=None):
        if name == "d3rlpy" or name.startswith("d3rlpy."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, BlockD3rlpy())
runpy.run_module("bench.peer", run_name="__main__")
"""


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_peer_benchmark_prints_both_implementations_and_their_ratio():
    pytest.importorskip("d3rlpy")
    result = _run("-m", "bench.peer", "--seconds", "0.3", "--threads", "1", "--batch-size", "16", "--shapes", "lowdim")
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^1 CPU threads on .+; torch \S+, d3rlpy 2\.8\.1$", result.stdout, re.MULTILINE), result.stdout
    rows = {match[1]: tuple(map(float, match.groups()[1:]))
            for match in re.finditer(r"^(ours|d3rlpy 2\.8\.1)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", result.stdout, re.MULTILINE)}
    assert set(rows) == {"ours", "d3rlpy 2.8.1"}, result.stdout
    for rate, flops, achieved in rows.values():
        assert rate > 0 and flops > 0
        assert achieved == pytest.approx(rate * flops, rel=0.02, abs=0.1)
    ratio = re.search(r"^ours / d3rlpy updates/s: ([\d.]+)$", result.stdout, re.MULTILINE)
    assert ratio, result.stdout
    assert float(ratio[1]) == pytest.approx(rows["ours"][0] / rows["d3rlpy 2.8.1"][0], rel=0.02, abs=0.01)


def test_peer_benchmark_without_d3rlpy_exits_with_one_line():
    result = _run("-c", WITHOUT_D3RLPY)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr == "error: bench.peer needs d3rlpy 2.8.1 (pip install d3rlpy==2.8.1)\n"
    assert result.stdout == ""
