"""What the training entry points share: checks of the command line and the run directory
before any work, running a Workspace, and turning failures into one-line errors with an exit
status (1: training stopped on a non-finite loss; 2: bad input; 3: a write failed, e.g. a
full disk)."""

from __future__ import annotations

import ctypes
import fcntl
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import torch

from datasets.atomic import is_out_of_space, remove_stale_temporaries
from datasets.command_line import check_overrides, remove_empty_run_dir
from policy.agent import NonFiniteLossError
from policy.algorithms import REGISTRY, registered

LOG_FILES = ("train.csv", "eval.csv", "episodes.csv")
LOCK_FILE = ".lock"  # held by the live process that owns a run directory
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
RUN_OUTPUTS = ("checkpoint.pt", "best.pt", *LOG_FILES, "tb", "videos")
T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU; a device this machine lacks is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use device=auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but CUDA is not available on this machine; use device=cpu (or device=auto)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={name} is not supported; use device=auto, cpu or cuda")
    return device


# glibc's mallopt parameters and the largest mmap threshold it accepts on 64-bit systems
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
LARGEST_MMAP_THRESHOLD = 32 * 1024 * 1024
CPUINFO = Path("/proc/cpuinfo")


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to 32 MiB in the process instead of returning them to
    the operating system. An update allocates and frees the same multi-megabyte activations every
    time (a CQL critic's hidden layer is 16 MB at batch 256); by default each lands in a fresh
    mapping whose pages the kernel must fault in and zero again: 22% of a Cal-QL update's time
    went to its ReLUs alone (``bench.update``). The same values as the environment variables
    ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_TOP_PAD_``. Returns
    whether it applied (False off glibc, e.g. on macOS)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = ((M_MMAP_THRESHOLD, LARGEST_MMAP_THRESHOLD), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 256 * 1024 * 1024))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (x86 AVX512-BF16 or AMX-BF16, Arm BF16);
    elsewhere bfloat16 is emulated and slower than float32."""
    try:
        cpuinfo = CPUINFO.read_text()
    except OSError:
        return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_model() -> str:
    """The CPU's model name: what absolute speed figures belong to (the machines differ)."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "an unknown CPU"


def prepare_device(device: torch.device, threads: int = 0) -> str:
    """Settings for training on ``device``: torch's CPU threads (0: torch's default); on CUDA, TF32
    tensor cores for float32 matmuls and convolutions (10 mantissa bits, plenty for RL's noisy
    gradients); on the CPU, freed activations kept for the next update (:func:`keep_freed_memory`).
    Returns what learns, for the run's log (speeds differ between machines of the same kind)."""
    if threads > 0:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
        return f"{torch.cuda.get_device_name(device)} (CUDA), {torch.get_num_threads()} CPU threads"
    kept = keep_freed_memory()
    return f"{cpu_model()}, {torch.get_num_threads()} threads" + ("" if kept else ", default allocator")


def check_speed_options(compile: bool, cuda_graphs: bool, encoder_bf16: bool, device: torch.device) -> None:
    """One clear error for a speed setting that cannot apply to training on ``device``."""
    if cuda_graphs and not compile:
        raise ValueError("cuda_graphs=true replays the compiled networks; set compile=true as well")
    if cuda_graphs and device.type != "cuda":
        raise ValueError(f"cuda_graphs=true needs a CUDA device, this run trains on {device.type}; drop cuda_graphs")
    if encoder_bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"encoder_bf16=true but {torch.cuda.get_device_name(device)} has no bfloat16; drop encoder_bf16")
    if encoder_bf16 and device.type == "cpu" and not cpu_has_native_bf16():
        raise ValueError("encoder_bf16=true but this CPU has no bfloat16 instructions (it would run slower than "
                         "float32); drop encoder_bf16")


def check_writable(directory: Path) -> None:
    """Create ``directory`` if needed and write a file in it; one clear error if that fails."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe-"):
            pass
    except OSError as error:
        raise ValueError(f"run directory {directory} is not writable ({error.strerror or error})") from None


def check_name(name: str, what: str) -> None:
    """A name that becomes part of a path: letters, digits, ``_``, ``.`` and ``-`` only, so that it
    cannot leave its parent directory or hide."""
    if not SAFE_NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} becomes a directory or file name: use letters, digits, '_', '.' and '-' "
                         f"only, starting with a letter or digit")


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Own ``run_dir`` while the block runs: a second live process is refused with one line. The
    operating system drops the lock when its holder dies, so a killed run's leftover never
    blocks the run that continues it."""
    check_writable(run_dir)
    handle = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ValueError(f"{run_dir} is in use by another live run (process {holder}): wait for it to end, or give "
                         f"this run another hydra.run.dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    try:
        yield
    finally:
        handle.close()


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Make sure ``run_dir`` can take this run before any work: it is writable, a fresh run
    does not silently overwrite or append to an earlier one, and leftovers of interrupted
    writes are removed. Returns the checkpoint to resume from (``resume=true``), else None."""
    if resume and overwrite:
        raise ValueError("resume=true and overwrite=true contradict each other: choose one")
    check_writable(run_dir)
    for name in ("checkpoint.pt", "best.pt"):
        remove_stale_temporaries(run_dir / name)
    checkpoint = run_dir / "checkpoint.pt"
    if resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"resume=true but there is no checkpoint to resume: {checkpoint}")
        return checkpoint
    used = [name for name in ("checkpoint.pt", *LOG_FILES) if (run_dir / name).exists()]
    if used and not overwrite:
        raise ValueError(f"{run_dir} already holds a run ({', '.join(used)}): continue it with resume=true, "
                         f"or start over with overwrite=true (which deletes it)")
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return None


class WallClock:
    """Wall time of a run over all its attempts: a resumed attempt continues from the time its
    checkpoint recorded (a killed attempt counts up to its last checkpoint: the rest is redone)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.before = 0.0

    def continue_from(self, seconds: float) -> None:
        self.before = float(seconds)

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.started


PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"


def check_command_line(argv: list[str], config_name: str) -> None:
    """What can be refused before hydra runs the entry point ``config_name``: an unknown
    algorithm, a run (or sweep) directory that cannot be written (hydra would fail on it with a
    traceback), and overrides that do not compose (datasets/command_line.py)."""
    reject_unknown_algorithm(argv)
    reject_algorithm_settings_at_top_level(argv)
    for arg in argv:
        key, assigned, value = arg.partition("=")
        if assigned and key.lstrip("+") in ("hydra.run.dir", "hydra.sweep.dir") and "${" not in value:
            directory = Path(value).absolute()
            created = next((d for d in reversed([directory, *directory.parents]) if not d.exists()), None)
            try:
                check_writable(directory)
                if created is not None:  # made only to try: the run makes it when it starts
                    shutil.rmtree(created, ignore_errors=True)
            except ValueError as error:
                print(f"error: {error}", file=sys.stderr)
                sys.exit(2)
    check_overrides(argv, CONFIG_DIR, config_name)


def reject_algorithm_settings_at_top_level(argv: list[str]) -> None:
    """An algorithm's setting written without its ``algo.`` (``policy_average_tau=0``): one line
    naming the key to write, and exit 2."""
    from policy.agent import ONLINE_SETTINGS

    for arg in argv:
        key, assigned, value = arg.partition("=")
        if assigned and key.lstrip("+") in ONLINE_SETTINGS:
            print(f"error: {key.lstrip('+')} is a setting of the algorithm: write algo.{key.lstrip('+')}={value}", file=sys.stderr)
            sys.exit(2)


def reject_unknown_algorithm(argv: list[str]) -> None:
    """An ``algo=NAME`` (or ``algo.name=NAME``, or a multirun list of names) on the command
    line that names no registered algorithm: one line and exit 2, before hydra composes."""
    reject_unknown_choice(argv, ("algo", "algo.name"), REGISTRY, "algorithm", f"registered: {registered()}")


def reject_unknown_choice(argv: list[str], keys: Iterable[str], known: Iterable[str], noun: str, listing: str) -> None:
    """A value of one of ``keys`` (a multirun's comma list included; sweep functions such as
    ``choice(...)`` are left to hydra) that is not in ``known``: one line naming it and
    ``listing``, and exit 2."""
    known = set(known)
    for arg in argv:
        key, assigned, value = arg.partition("=")
        if not assigned or key.lstrip("+~") not in keys or "(" in value:
            continue
        unknown = [name for name in value.split(",") if name not in known]
        if unknown:
            print(f"error: unknown {noun} {unknown[0]!r}; {listing}", file=sys.stderr)
            sys.exit(2)


def run_workspace(make_workspace: Callable[[], Any], run_dir: Path) -> dict[str, float]:
    """Build and train a Workspace in ``run_dir``, owned by this process while it runs, with
    the exit statuses of :func:`exit_on_error` (the last checkpoint in ``run_dir`` is kept as it
    was). Returns the final evaluation."""
    def train() -> dict[str, float]:
        with run_dir_lock(run_dir):
            workspace = make_workspace()
            try:
                return workspace.train()
            finally:
                workspace.close()

    return exit_on_error(train, run_dir)


def exit_on_error(action: Callable[[], T], run_dir: Path) -> T:
    """``action()``, its failures turned into one ``error:`` line and an exit status: 1 on a
    non-finite loss (naming the last good checkpoint in ``run_dir``), 2 on bad input, 3 when a
    write failed for lack of space."""
    try:
        return action()
    except NonFiniteLossError as error:
        kept = run_dir / "checkpoint.pt"
        print(f"error: training stopped: {error}; last good checkpoint: {kept if kept.exists() else 'none yet'}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        remove_empty_run_dir(run_dir)
        sys.exit(2)
    except OSError as error:
        if not is_out_of_space(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(3)
