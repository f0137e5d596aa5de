"""Checks every hydra entry point makes of its command line before hydra runs it.

Hydra reports a bad override (an unknown key, a value of the wrong type, a group option that
does not exist) with several lines and exit status 1, after it has made the run directory; and
it accepts ``+key=value`` for a key the typed config does not declare, which the run then
silently ignores. :func:`check_overrides` composes the entry point's config from the command
line first: anything refused is one ``error:`` line and exit status 2, and nothing is written.
:func:`remove_empty_run_dir` takes back a run directory that a refused run left holding only
hydra's own records.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

# What a run directory holds before any work: hydra's records, the job's log file, the lock.
HYDRA_RECORDS = (".hydra", ".lock")


def first_of_sweeps(overrides: list) -> list[str] | None:
    """The overrides of the first job of a sweep (each sweep replaced by its first value);
    None when a sweep cannot be listed (a range of floats, an interval)."""
    lines = []
    for override in overrides:
        if override.is_sweep_override():
            try:
                first = next(iter(override.sweep_string_iterator()))
            except Exception:  # hydra raises several types for sweeps it cannot enumerate
                return None
            lines.append(f"{override.get_key_element()}={first}")
        else:
            lines.append(override.input_line)
    return lines


def undeclared_addition(config, key: str) -> str | None:
    """Why ``+key=...`` adds nothing the run reads: its parent is a typed config without that
    field (a free mapping such as a protocol's stage settings takes any key). None if fine."""
    from omegaconf import DictConfig, OmegaConf

    parent_path, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(config, parent_path) if parent_path else config
    if not isinstance(parent, DictConfig):
        return None
    schema = OmegaConf.get_type(parent)
    if schema is None or not dataclasses.is_dataclass(schema):
        return None
    fields = sorted(field.name for field in dataclasses.fields(schema))
    if leaf in fields:
        return None
    where = f"{parent_path} ({schema.__name__})" if parent_path else schema.__name__
    return f"unknown setting {key!r}: {where} has no field {leaf!r}; its fields: {', '.join(fields)}"


def check_overrides(argv: list[str], config_dir: Path, config_name: str) -> None:
    """Compose ``config_name`` from the overrides in ``argv`` (a sweep's first job); a refusal
    is one line and exit 2. Command lines with hydra's own flags (``--help``, ``--cfg``, ...)
    are left to hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if any(arg.startswith("-") and arg not in ("-m", "--multirun") for arg in argv):
        return
    try:
        overrides = OverridesParser.create().parse_overrides([arg for arg in argv if not arg.startswith("-")])
        lines = first_of_sweeps(overrides)
        if lines is None:
            return
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir)):
            config = compose(config_name, overrides=lines, return_hydra_config=True)
        for override in overrides:
            key = override.key_or_group
            if override.is_add() and not key.startswith("hydra") and "/" not in key:
                reason = undeclared_addition(config, key)
                if reason:
                    raise ValueError(reason)
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)


def one_line(error: BaseException) -> str:
    """An error and the first line of its cause (hydra wraps OmegaConf's reason), on one line."""
    reason = " ".join(str(error).split())
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        reason += f" ({str(cause).strip().splitlines()[0]})"
    return reason


def remove_empty_run_dir(run_dir: Path) -> None:
    """Delete ``run_dir`` if it holds nothing but what hydra wrote into it by itself (a run
    refused before any work leaves no directory behind)."""
    here = Path.cwd().resolve()
    if not run_dir.is_dir() or run_dir.resolve() in (here, *here.parents):
        return
    entries = list(run_dir.iterdir())
    if all(entry.name in HYDRA_RECORDS or (entry.suffix == ".log" and entry.is_file()) for entry in entries):
        shutil.rmtree(run_dir, ignore_errors=True)
