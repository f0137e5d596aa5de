"""Writing and reading demonstration files in robomimic's HDF5 layout.

Layout: group ``data`` with attrs ``total`` (number of transitions) and ``env_args`` (JSON:
``env_name`` and ``env_kwargs``, enough to rebuild the env with ``sim.make_env``; robomimic's
files name a robosuite env, which ``sim.env_from_args`` maps to the matching one); one group
``data/demo_<i>`` per episode holding ``obs/<key>``, ``next_obs/<key>``, ``actions``,
``rewards``, ``dones`` and (where recorded) ``states``, with attr ``num_samples``; and ``mask/<filter>``
arrays of demo names (``train`` and ``valid``). Images are uint8 HWC, chunked per episode
and gzip-compressed.

Files written here set ``dones[t] = 1`` exactly where the episode terminated (task success);
an episode that ends without success ran into its time limit.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np

from datasets.atomic import atomic_path, check_free_space
from datasets.episode import Episode

def _write_array(group: h5py.Group, name: str, array: np.ndarray) -> None:
    if array.dtype == np.uint8 and array.ndim == 4:  # image sequence: one frame per chunk row
        group.create_dataset(name, data=array, chunks=(min(len(array), 64), *array.shape[1:]), compression="gzip", compression_opts=4)
    else:
        group.create_dataset(name, data=array)


def write_dataset(
    path: str | os.PathLike,
    episodes: Iterable[Episode],
    env_args: dict[str, Any],
    valid_fraction: float = 0.1,
    attrs: dict[str, Any] | None = None,
) -> int:
    """Stream ``episodes`` into a robomimic-format file at ``path``; returns the episode count.

    The file is written next to its destination under a temporary name and renamed only once
    complete, so an interrupted run never leaves a truncated file behind. Before each episode
    the free space is checked against its uncompressed size: on a full disk the write stops
    with :class:`OutOfSpaceError` at the first episode that might not fit, and the temporary
    file is removed (the previous file at ``path``, if any, is untouched).
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    path = Path(path)
    with atomic_path(path) as tmp_path:
        with h5py.File(tmp_path, "w") as f:
            data = f.create_group("data")
            total = 0
            names = []
            for index, episode in enumerate(episodes):
                episode.validate()
                check_free_space(path, episode.nbytes)
                name = f"demo_{index}"
                group = data.create_group(name)
                for prefix, observations in (("obs", episode.obs), ("next_obs", episode.next_obs)):
                    for key, array in observations.items():
                        _write_array(group, f"{prefix}/{key}", array)
                _write_array(group, "actions", episode.actions)
                _write_array(group, "rewards", episode.rewards)
                _write_array(group, "dones", episode.terminals.astype(np.uint8))
                if episode.states is not None:
                    _write_array(group, "states", episode.states)
                group.attrs["num_samples"] = len(episode)
                for key, value in episode.attrs.items():
                    group.attrs[key] = value
                f.flush()  # a failed write surfaces here, not later in a destructor
                total += len(episode)
                names.append(name)
            if not names:
                raise ValueError("no episodes to write")
            data.attrs["total"] = total
            data.attrs["env_args"] = json.dumps(env_args)
            for key, value in (attrs or {}).items():
                data.attrs[key] = value
            num_valid = int(round(valid_fraction * len(names)))
            # Every k-th demo goes to validation: deterministic and spread over the file.
            valid = set(names[:: max(1, len(names) // num_valid)][:num_valid]) if num_valid else set()
            f.create_dataset("mask/train", data=np.array([n for n in names if n not in valid], dtype="S"))
            f.create_dataset("mask/valid", data=np.array([n for n in names if n in valid], dtype="S"))
    return len(names)


DEMO_NAME = re.compile(r"demo_(\d+)")


def open_dataset(path: str | os.PathLike) -> h5py.File:
    """``path`` opened for reading; a missing file and one that is not HDF5 are one-line
    errors naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path} (check the path; python -m sim.collect writes "
                                f"the default dataset data/pickplace.hdf5)")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path}: not a readable HDF5 file ({error}); pass a robomimic-format .hdf5 dataset") from None


def demo_names(f: h5py.File, filter_key: str | None = None) -> list[str]:
    """Demo group names in numeric order, optionally restricted to ``mask/<filter_key>``; a
    file that is not laid out as robomimic's is a ``ValueError`` naming what is wrong."""
    if "data" not in f or not isinstance(f["data"], h5py.Group):
        raise ValueError(f"{f.filename}: no 'data' group; not a robomimic-format file (pass a dataset holding "
                         f"data/demo_<n> groups, as robomimic and python -m sim.collect write them)")
    present = list(f["data"].keys())
    if not present:
        raise ValueError(f"{f.filename}: the 'data' group holds no demos")
    if filter_key is None:
        names, source = present, "data"
    else:
        if f"mask/{filter_key}" not in f:
            available = list(f["mask"].keys()) if "mask" in f else []
            raise ValueError(f"{f.filename}: no filter key {filter_key!r}; available: {available}")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f[f"mask/{filter_key}"][()]]
        source = f"mask/{filter_key}"
        missing = sorted(set(names) - set(present))
        if missing:
            raise ValueError(f"{f.filename}: {source} names {missing[:3]}{' ...' if len(missing) > 3 else ''}, "
                             f"which are not in 'data'")
    malformed = [n for n in names if not DEMO_NAME.fullmatch(n)]
    if malformed:
        raise ValueError(f"{f.filename}: {source} entry {malformed[0]!r} is not of the form demo_<n>")
    return sorted(names, key=lambda n: int(n[len("demo_"):]))


def read_env_args(f: h5py.File) -> dict[str, Any]:
    """The ``env_args`` an open file was made with (``env_name`` and ``env_kwargs``)."""
    if "data" not in f or "env_args" not in f["data"].attrs:
        raise ValueError(f"{f.filename}: no 'env_args' attribute on the 'data' group (robomimic files record the env "
                         f"they were made in there); add it, e.g. data.attrs['env_args'] = "
                         f"json.dumps({{'env_name': 'pickplace', 'env_kwargs': {{}}}})")
    try:
        return json.loads(f["data"].attrs["env_args"])
    except json.JSONDecodeError as error:
        raise ValueError(f"{f.filename}: the 'env_args' attribute is not JSON ({error})") from None
