"""Local run logging: TensorBoard event files plus one CSV file per stream."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch


class MetricLogger:
    """``log(stream, step, metrics)`` writes ``<run_dir>/<stream>.csv`` and TensorBoard
    scalars ``<stream>/<name>``. A metric that first appears later (e.g. when a warm start ends)
    adds a column: the file is rewritten once with the wider header, earlier rows left blank there."""

    def __init__(self, run_dir: str | Path, resume_steps: dict[str, float] | None = None,
                 purge_step: int | None = None) -> None:
        """``resume_steps``: for a run resumed from a checkpoint, the last step of each stream
        that the checkpoint covers; rows logged after it (by the interrupted run) are dropped so
        that each step appears once. ``purge_step`` hides TensorBoard events from that step on."""
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stream, last_step in (resume_steps or {}).items():
            self._drop_rows_after(self.run_dir / f"{stream}.csv", last_step)
        self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge_step)
        self._columns: dict[str, list[str]] = {}

    def log(self, stream: str, step: int, metrics: dict[str, Any]) -> None:
        path = self.run_dir / f"{stream}.csv"
        if stream not in self._columns:
            if path.exists():  # a resumed run appends under the existing header
                with path.open() as f:
                    self._columns[stream] = next(csv.reader(f))
            else:
                self._columns[stream] = ["step", *metrics]
                with path.open("w", newline="") as f:
                    csv.writer(f).writerow(self._columns[stream])
        row = {"step": step, **metrics}
        new_columns = [name for name in row if name not in self._columns[stream]]
        if new_columns:
            self._widen(path, self._columns[stream], new_columns)
        with path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(column, "") for column in self._columns[stream]])
        for name, value in metrics.items():
            self.writer.add_scalar(f"{stream}/{name}", value, step)
        self.writer.flush()

    @staticmethod
    def _drop_rows_after(path: Path, last_step: float) -> None:
        if not path.exists():
            return
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        kept = [rows[0], *(row for row in rows[1:] if row and float(row[0]) <= last_step)] if rows else []
        if len(kept) == len(rows):
            return
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("w", newline="") as f:
            csv.writer(f).writerows(kept)
        os.replace(temporary, path)

    @staticmethod
    def _widen(path: Path, columns: list[str], new_columns: list[str]) -> None:
        """Add columns to a CSV file through a temporary file and an atomic rename."""
        with path.open(newline="") as f:
            rows = list(csv.reader(f))[1:]
        columns.extend(new_columns)
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(row + [""] * len(new_columns) for row in rows)
        os.replace(temporary, path)

    def close(self) -> None:
        self.writer.close()


class MetricWindow:
    """Per-update metrics (scalar tensors, possibly on a GPU, or floats) collected as they come
    and averaged when a row is logged, with a single read-back from the device per row. NaN
    entries (a metric an update had no rows for) are skipped; a metric NaN throughout is left out."""

    def __init__(self) -> None:
        self._values: dict[str, list[torch.Tensor | float]] = {}

    def add(self, metrics: dict[str, torch.Tensor | float]) -> None:
        for name, value in metrics.items():
            self._values.setdefault(name, []).append(value)

    def __len__(self) -> int:
        return max((len(values) for values in self._values.values()), default=0)

    def state_dict(self) -> dict[str, list[float]]:
        """The values collected so far, as numbers (a checkpoint carries them)."""
        return {name: [float(v) for v in values] for name, values in self._values.items()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self._values = {name: list(values) for name, values in state.items()}

    def averages(self) -> dict[str, float]:
        """The mean of each metric over the window; empties the window."""
        names = list(self._values)
        if not names:
            return {}
        device = next((v.device for values in self._values.values() for v in values if isinstance(v, torch.Tensor)),
                      torch.device("cpu"))
        means = torch.stack([
            torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device).reshape(()) for v in self._values[name]]).nanmean()
            for name in names
        ]).tolist()
        self._values.clear()
        return {name: mean for name, mean in zip(names, means) if mean == mean}  # mean != mean: NaN throughout
