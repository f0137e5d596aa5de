"""Self-describing checkpoints, written atomically, loadable with ``weights_only=True``.

A checkpoint holds the agent's weights and optimiser states, the resolved run config, the
observation spec and action dimension, the env it acts in, step counters and RNG states:
everything needed to rebuild the agent and continue, and nothing but tensors and plain
Python values.
"""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datasets.atomic import write_bytes_atomically

# 2: optimiser states by name, algorithm configs without the calibrated/conservative switches
FORMAT_VERSION = 2
REQUIRED_KEYS = ("format_version", "algo", "config", "obs_spec", "action_dim", "env", "agent", "step")


def rng_state(numpy_rng: np.random.Generator, sampler: torch.Generator | None = None) -> dict[str, Any]:
    """The random states a run continues from; ``sampler`` draws its replay batches."""
    state = {"torch": torch.get_rng_state(), "numpy": numpy_rng.bit_generator.state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if sampler is not None:
        state["sampler"] = sampler.get_state()
    return state


def restore_rng_state(state: dict[str, Any], numpy_rng: np.random.Generator, sampler: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    numpy_rng.bit_generator.state = state["numpy"]
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if sampler is not None and "sampler" in state:  # older checkpoints drew batches with numpy
        sampler.set_state(state["sampler"])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` through a temporary file and an atomic rename, so an
    interrupted write never damages the previous checkpoint. It is serialised in memory
    first: a full disk then fails in a plain file write, as :class:`OutOfSpaceError`."""
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **payload}, buffer)
    write_bytes_atomically(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and sanity-check a checkpoint; a clear ``ValueError`` for anything else."""
    path = Path(path)
    if path.is_dir():
        inside = [name for name in ("checkpoint.pt", "best.pt") if (path / name).is_file()]
        raise ValueError(f"{path} is a directory, not a checkpoint file; give the file"
                         + (f": {path / inside[0]}" if inside else " (a run directory holds checkpoint.pt and best.pt)"))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    exported = _exported_kind(path)
    if exported:
        raise ValueError(f"{path} is an exported policy ({exported}), not a training checkpoint; pass the "
                         f"checkpoint.pt or best.pt it was exported from (its metadata names it: source_checkpoint)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise ValueError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise ValueError(f"{path}: not a checkpoint of this project (missing {missing})")
    if checkpoint["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {checkpoint['format_version']}, this version reads "
                         f"{FORMAT_VERSION}; train it again with this version")
    return checkpoint


def _exported_kind(path: Path) -> str | None:
    """'TorchScript', 'torch.export program' or 'ONNX model' when ``path`` is one of those."""
    if path.suffix == ".onnx":  # a protobuf without a signature to recognise it by
        return "ONNX model"
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any("/code/" in name or name.endswith("constants.pkl") for name in names):
        return "TorchScript"
    if any(name.endswith("archive_format") or "/models/" in name for name in names):
        return "torch.export program"
    return None


def restore_agent(checkpoint: dict[str, Any], device: str | torch.device = "cpu"):
    """The agent a checkpoint describes, with its weights and optimiser states loaded."""
    from perception.encoders import EncoderConfig
    from policy.algorithms import algo_config, make_agent

    config = checkpoint["config"]
    agent = make_agent(algo_config(config["algo"]), checkpoint["obs_spec"], int(checkpoint["action_dim"]),
                       EncoderConfig(**config["encoder"]), device)
    agent.load_training_state(checkpoint["agent"])
    return agent
