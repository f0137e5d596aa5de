"""Local run logging: TensorBoard event files plus one CSV file per stream."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any


class MetricLogger:
    """``log(stream, step, metrics)`` writes ``<run_dir>/<stream>.csv`` and TensorBoard
    scalars ``<stream>/<name>``. A metric that first appears later (e.g. when a warm start ends)
    adds a column: the file is rewritten once with the wider header, earlier rows left blank there."""

    def __init__(self, run_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(self.run_dir / "tb"))
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
