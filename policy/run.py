"""What the training entry points share: running a Workspace and turning failures into
one-line errors with an exit status."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from policy.agent import NonFiniteLossError
from policy.algorithms import REGISTRY, registered


def reject_unknown_algorithm(argv: list[str]) -> None:
    """An ``algo=NAME`` (or ``algo.name=NAME``, or a multirun list of names) on the command
    line that names no registered algorithm: one line and exit 2, before hydra composes."""
    for arg in argv:
        key, assigned, value = arg.partition("=")
        if not assigned or key.lstrip("+~") not in ("algo", "algo.name") or "(" in value:
            continue
        unknown = [name for name in value.split(",") if name not in REGISTRY]
        if unknown:
            print(f"error: unknown algorithm {unknown[0]!r}; registered: {registered()}", file=sys.stderr)
            sys.exit(2)


def run_workspace(make_workspace: Callable[[], Any], run_dir: Path) -> dict[str, float]:
    """Build and train a Workspace; exit 1 on a non-finite loss (the last checkpoint is kept
    as it was), exit 2 on bad input. Returns the final evaluation."""
    workspace = None
    try:
        workspace = make_workspace()
        return workspace.train()
    except NonFiniteLossError as error:
        kept = run_dir / "checkpoint.pt"
        print(f"error: training stopped: {error}; last good checkpoint: {kept if kept.exists() else 'none yet'}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        if workspace is not None:
            workspace.close()
