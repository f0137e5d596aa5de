"""The packages depend on each other in one direction: no package imports one that imports it back."""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("datasets", "perception", "sim", "policy", "bench", "examples")


def package_imports() -> dict[str, set[str]]:
    """For each package, the other packages of this project its modules import (at any depth)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                else:
                    continue
                graph[package].update(name.split(".")[0] for name in names if name.split(".")[0] in PACKAGES)
        graph[package].discard(package)
    return graph


def test_no_import_cycle_between_packages():
    graph = package_imports()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(after == goal or (after not in seen and reaches(after, goal, seen | {after})) for after in graph[start])

    cycles = sorted(package for package in PACKAGES if reaches(package, package, {package}))
    assert not cycles, f"packages on an import cycle: {cycles}; imports: {dict(graph)}"
    # the data schema is the bottom layer: it imports none of the others
    assert graph["datasets"] == set()
