"""Export a trained policy for robot controllers: ``python -m policy.export checkpoint=PATH out=policy.pt``.

Writes one TorchScript module whose ``forward(observations: List[Tensor]) -> Tensor`` takes
the raw observation tensors as a robot provides them, in the order of the ``obs_keys``
metadata (uint8 HxWx3 images and float32 low-dimensional vectors, each with a leading batch
dimension of any size), and returns the deterministic action (tanh of the policy mean) in
the env's action space [-1, 1]. Preprocessing lives inside; wrong shapes or dtypes fail with
a message naming the input. ``metadata.json`` is stored in the file (``_extra_files``) and
the module's ``obs_keys()``, ``input_shapes()`` and ``input_dtypes()`` methods answer the same
from C++. ``format=torch_export`` also writes a ``torch.export`` program (``.pt2``) whose input
is a dict of the same tensors keyed by observation name (so that a failed shape guard names the
input), for batch sizes 1 to ``EXPORT_MAX_BATCH``. ``format=onnx`` also writes an ONNX model
(``.onnx``) for runtimes without libtorch (ONNX Runtime, TensorRT): one input per observation,
named by its key, with a free ``batch`` dimension, the output ``action``, and the same
``metadata.json`` in the model's ``metadata_props``. The other formats' files go beside the
TorchScript file with their own suffix (``out=policy.onnx format=onnx`` writes ``policy.onnx``
and ``policy.pt``).
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
import onnx
import torch
import torch.nn as nn
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

import sim
from datasets.atomic import atomic_path, write_bytes_atomically
from datasets.command_line import check_overrides, remove_empty_run_dir
from datasets.replay import is_image
from policy.checkpoint import Checkpoint, load_checkpoint, restore_agent
from policy.run import PROJECT_ROOT

FORMATS = ("torchscript", "torch_export", "onnx")
SUFFIXES = {"torchscript": ".pt", "torch_export": ".pt2", "onnx": ".onnx"}
EXPORT_MAX_BATCH = 4096  # the .pt2 program's batch dimension is dynamic up to this size
# The lowest opset that torch's ONNX exporter writes without a version conversion (converting
# down to 17 leaves an invalid Split node), so that older runtimes can still read the model.
ONNX_OPSET = 18
ONNX_OUTPUT = "action"
# Notes the ONNX exporter emits about its own internals, not about the exported policy: warnings,
# and the INFO logs of its graph optimiser, which the entry points' stdout logging would print.
EXPORTER_NOISE = (r".*isinstance\(treespec, LeafSpec\).*", r".*The axis name: batch will not be used.*")
EXPORTER_LOGGERS = ("onnxscript", "onnx_ir")


class PolicyCore(nn.Module):
    """Encoder and actor mean on positional observation tensors (no checks: traceable)."""

    def __init__(self, agent, obs_keys: list[str]) -> None:
        super().__init__()
        self.encoder, self.actor = agent.evaluated_policy()
        self.obs_keys = obs_keys

    def forward(self, observations: list[torch.Tensor]) -> torch.Tensor:
        features = self.encoder(dict(zip(self.obs_keys, observations)))
        return self.actor.deterministic(features)


class NamedInputPolicy(nn.Module):
    """The core on a dict of observations keyed by name (the ``.pt2`` program's input)."""

    def __init__(self, core: PolicyCore) -> None:
        super().__init__()
        self.core = core

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.core([observations[key] for key in self.core.obs_keys])


def _dtype_name(x: torch.Tensor) -> str:
    names = {torch.uint8: "uint8", torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
             torch.int32: "int32", torch.int64: "int64", torch.bool: "bool"}
    return names.get(x.dtype, "other")


class CheckedPolicy(nn.Module):
    """Checks inputs by name, then runs the traced core."""

    def __init__(self, core: torch.jit.ScriptModule, obs_keys: list[str], shapes: list[list[int]], dtypes: list[str]) -> None:
        super().__init__()
        self.core = core
        self.keys: List[str] = obs_keys
        self.shapes: List[List[int]] = shapes
        self.dtypes: List[str] = dtypes

    def forward(self, observations: List[torch.Tensor]) -> torch.Tensor:
        if len(observations) != len(self.keys):
            raise ValueError("expected " + str(len(self.keys)) + " observation tensors " + str(self.keys)
                             + ", got " + str(len(observations)))
        batch: Optional[int] = None
        for i in range(len(self.keys)):
            x = observations[i]
            expected = self.shapes[i]
            if x.dim() != len(expected) + 1 or list(x.shape[1:]) != expected:
                raise ValueError("input " + self.keys[i] + ": expected shape [B, " + str(expected)[1:]
                                 + ", got " + str(list(x.shape)))
            if _dtype_name(x) != self.dtypes[i]:
                raise ValueError("input " + self.keys[i] + ": expected dtype " + self.dtypes[i] + ", got " + _dtype_name(x))
            if batch is None:
                batch = x.shape[0]
            elif x.shape[0] != batch:
                raise ValueError("input " + self.keys[i] + ": batch size " + str(x.shape[0]) + " differs from " + str(batch))
        return self.core(observations)

    @torch.jit.export
    def obs_keys(self) -> List[str]:
        return self.keys

    @torch.jit.export
    def input_shapes(self) -> List[List[int]]:
        return self.shapes

    @torch.jit.export
    def input_dtypes(self) -> List[str]:
        return self.dtypes


def example_inputs(obs_spec: dict, obs_keys: list[str], batch: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    inputs = []
    for key in obs_keys:
        shape = [batch, *obs_spec[key]["shape"]]
        if is_image(obs_spec[key]):
            inputs.append(torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator))
        else:
            inputs.append(torch.randn(shape, generator=generator))
    return inputs


def build_metadata(checkpoint: Checkpoint, checkpoint_path: Path, obs_keys: list[str]) -> dict[str, Any]:
    env = checkpoint.env
    spec = checkpoint.obs_spec
    action_meaning, default_hz = sim.task_facts(env["name"])
    control_hz = float(env["kwargs"].get("control_hz", default_hz))
    return {
        "obs_keys": obs_keys,
        "inputs": [{"key": k, "shape": ["B", *spec[k]["shape"]], "dtype": spec[k]["dtype"]} for k in obs_keys],
        "action_dim": checkpoint.action_dim,
        "action_meaning": action_meaning,
        "action_range": [-1.0, 1.0],
        "control_hz": control_hz,
        "env": env,
        "algo": checkpoint.algo,
        "stage": checkpoint.stage,
        "updates": checkpoint.updates,
        "env_steps": checkpoint.env_steps,
        "source_checkpoint": str(checkpoint_path.resolve()),
        "config": checkpoint.config,
    }


def output_paths(out: Path, formats: tuple[str, ...]) -> dict[str, Path]:
    """Where each format goes: TorchScript to ``out``, the others beside it with their own suffix.
    When ``out`` has the suffix of another requested format, it names that file and the
    TorchScript file takes ``.pt``, so that no format overwrites another."""
    others = [fmt for fmt in formats if fmt != "torchscript"]
    names_other = any(out.suffix == SUFFIXES[fmt] for fmt in others)
    paths = {"torchscript": out.with_suffix(SUFFIXES["torchscript"]) if names_other else out}
    paths.update({fmt: out.with_suffix(SUFFIXES[fmt]) for fmt in others})
    return paths


def onnx_model(core: PolicyCore, examples: list[torch.Tensor], metadata: dict[str, Any]) -> onnx.ModelProto:
    """The core as a checked ONNX model with one input per observation key and a free batch dimension."""
    named = dict(zip(core.obs_keys, examples))
    batch = torch.export.Dim("batch", min=1)  # ONNX keeps the dimension symbolic: no upper bound
    for name in EXPORTER_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        for message in EXPORTER_NOISE:
            warnings.filterwarnings("ignore", message=message)
        program = torch.onnx.export(
            NamedInputPolicy(core).eval(), (), kwargs={"observations": named},
            dynamic_shapes={"observations": {key: {0: batch} for key in core.obs_keys}},
            input_names=core.obs_keys, output_names=[ONNX_OUTPUT], opset_version=ONNX_OPSET,
            dynamo=True, external_data=False, verbose=False,
        )
    model = program.model_proto
    model.doc_string = "Deterministic policy action in [-1, 1] from raw observations (uint8 HWC images)"
    onnx.helper.set_model_props(model, {"metadata.json": json.dumps(metadata, indent=2)})
    onnx.checker.check_model(model, full_check=True)
    return model


def export_policy(checkpoint_path: str | Path, out: str | Path, formats: tuple[str, ...] = ("torchscript",)) -> dict[str, Path]:
    """Write the exported policy file(s); returns the paths written by format."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown format(s) {sorted(unknown)}; available: {', '.join(FORMATS)}")
    accepted = [SUFFIXES[fmt] for fmt in ("torchscript", *formats)]
    if Path(out).suffix not in accepted:
        raise ValueError(f"out={out}: a file of these formats ends in {' or '.join(dict.fromkeys(accepted))} "
                         f"(TorchScript: .pt; format=torch_export adds .pt2, format=onnx .onnx)")
    checkpoint_path = Path(checkpoint_path)
    checkpoint = load_checkpoint(checkpoint_path)
    agent = restore_agent(checkpoint).eval()
    obs_spec = checkpoint.obs_spec
    obs_keys = agent.policy_obs_keys  # never the critic's privileged keys
    metadata = build_metadata(checkpoint, checkpoint_path, obs_keys)
    core = PolicyCore(agent, obs_keys).eval().requires_grad_(False)
    examples = example_inputs(obs_spec, obs_keys)
    paths = output_paths(Path(out), ("torchscript", *formats))
    with torch.no_grad():
        traced = torch.jit.trace(core, (examples,), check_trace=False)
        scripted = torch.jit.script(CheckedPolicy(
            traced, obs_keys, [list(obs_spec[k]["shape"]) for k in obs_keys], [obs_spec[k]["dtype"] for k in obs_keys]
        ))
        with atomic_path(paths["torchscript"]) as tmp, open(tmp, "wb") as f:
            torch.jit.save(scripted, f, _extra_files={"metadata.json": json.dumps(metadata, indent=2)})
        if "torch_export" in formats:
            batch = torch.export.Dim("batch", min=1, max=EXPORT_MAX_BATCH)
            named = dict(zip(obs_keys, examples))
            program = torch.export.export(NamedInputPolicy(core), (named,), dynamic_shapes=({k: {0: batch} for k in obs_keys},))
            with atomic_path(paths["torch_export"]) as tmp, open(tmp, "wb") as f:
                torch.export.save(program, f, extra_files={"metadata.json": json.dumps(metadata, indent=2)})
        if "onnx" in formats:
            write_bytes_atomically(paths["onnx"], onnx_model(core, examples, metadata).SerializeToString())
    return paths


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata.json`` of an exported TorchScript file or ONNX model."""
    if Path(path).suffix == SUFFIXES["onnx"]:
        props = {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props["metadata.json"])
    extra = {"metadata.json": ""}
    torch.jit.load(str(path), _extra_files=extra)
    return json.loads(extra["metadata.json"])


@dataclass
class ExportConfig:
    checkpoint: str = "???"
    out: str = "policy.pt"
    format: str = "torchscript"  # torchscript | torch_export (writes both .pt and .pt2) | onnx (both .pt and .onnx)


ConfigStore.instance().store(name="export_schema", node=ExportConfig)


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "configs"), config_name="export")
def main(cfg) -> None:
    config: ExportConfig = OmegaConf.to_object(cfg)
    formats = ("torchscript",) if config.format == "torchscript" else ("torchscript", config.format)
    try:
        written = export_policy(config.checkpoint, config.out, formats)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        remove_empty_run_dir(Path(HydraConfig.get().runtime.output_dir))
        sys.exit(2)
    for fmt, path in written.items():
        print(f"wrote {fmt}: {path}")


if __name__ == "__main__":
    check_overrides(sys.argv[1:], PROJECT_ROOT / "configs", "export")
    main()
