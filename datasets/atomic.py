"""Writing files so that a reader never sees half of one, and a full disk is one clear error.

:func:`atomic_path` hands out a temporary sibling of the destination and renames it over the
destination only when the write completed; on any failure the temporary file is removed, and
temporaries that killed writers left behind for the same destination are removed by the next
writer. :func:`check_free_space` lets a long streaming write stop before the disk fills up.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator

# Room kept free for the metadata a file still writes when it is closed.
SPACE_MARGIN_BYTES = 1 << 20


class OutOfSpaceError(OSError):
    """A write failed, or would fail, for lack of space on the device."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(errno.ENOSPC, f"no space left on device writing {path}")

    def __str__(self) -> str:
        return self.strerror


def temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove temporaries of earlier writers of ``path`` that no longer run."""
    removed = []
    for candidate in path.parent.glob(f".{path.name}.*.tmp"):
        pid = candidate.name[len(path.name) + 2 : -len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_exists(int(pid)):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_out_of_space(error: BaseException) -> bool:
    """An OSError with ENOSPC, or a library error whose message carries it (torch, h5py)."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(error) or "errno = 28" in str(error)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``path`` when the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as error:
        if is_out_of_space(error) and not isinstance(error, OutOfSpaceError):
            raise OutOfSpaceError(path) from error
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> None:
    """``data`` into ``path`` through a temporary file, fsync and an atomic rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def check_free_space(path: str | os.PathLike, needed_bytes: int) -> None:
    """Raise :class:`OutOfSpaceError` unless ``needed_bytes`` plus a margin fit where ``path`` is."""
    path = Path(path)
    if shutil.disk_usage(path.parent).free < needed_bytes + SPACE_MARGIN_BYTES:
        raise OutOfSpaceError(path)
