"""The figures of one offline-to-online run, from its evaluations: what ``result.json`` holds
and what the report averages over seeds.

- ``pretrained_success``: the policy fine-tuning starts from: fine-tuning's own evaluation before
  its first online step (env step 0) when it has one, else the last pretraining evaluation.
- ``final_success``: the last fine-tuning evaluation.
- ``unlearning_dip``: the lowest success in the first quarter of fine-tuning (evaluations at
  env steps up to a quarter of the budget; the first evaluation when none is that early)
  minus the pretrained success; negative when fine-tuning first loses what pretraining learned.
- ``cumulative_regret``: the mean of 1 - success over the fine-tuning evaluations.
- ``steps_to_90pct_final``: the first env step at which success reached 90% of the final
  success, counting the pretrained policy as env step 0.
"""

from __future__ import annotations

import csv
from pathlib import Path

# Success rates are fractions of episodes: 0.9 * final may exceed an equal rate by rounding.
TOLERANCE = 1e-9
# Each figure's key in result.json and summary.csv, and its name in words.
FIGURES = {
    "pretrained_success": "pretrained success",
    "final_success": "final success",
    "unlearning_dip": "unlearning dip",
    "cumulative_regret": "cumulative regret",
    "steps_to_90pct_final": "env steps to 90% of final",
}
DECIMALS = {**dict.fromkeys(FIGURES, 2), "steps_to_90pct_final": 0}  # as the figures are printed


def read_csv(path: str | Path) -> list[dict[str, float]]:
    """The rows of a run's CSV log as numbers (an empty cell is NaN); no file: no rows."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{key: float(value) if value != "" else float("nan") for key, value in row.items()} for row in csv.DictReader(f)]


def run_figures(pretrain_evals: list[dict[str, float]], finetune_evals: list[dict[str, float]],
                env_steps: int) -> dict[str, float]:
    """The figures above from the ``eval.csv`` rows of both stages (``step`` and
    ``success_rate``; fine-tuning's steps are env steps) and the fine-tuning budget."""
    if not pretrain_evals or not finetune_evals:
        raise ValueError("a run's figures need at least one evaluation of each stage")
    start = [row["success_rate"] for row in finetune_evals if row["step"] == 0]
    pretrained = start[-1] if start else pretrain_evals[-1]["success_rate"]
    online = [(row["step"], row["success_rate"]) for row in finetune_evals if row["step"] > 0]
    if not online:
        raise ValueError("a run's figures need at least one fine-tuning evaluation after an online step")
    final = online[-1][1]
    first_quarter = [success for step, success in online if step <= env_steps / 4] or [online[0][1]]
    reached = next(step for step, success in [(0.0, pretrained), *online] if success >= 0.9 * final - TOLERANCE)
    return {
        "pretrained_success": pretrained,
        "final_success": final,
        "unlearning_dip": min(first_quarter) - pretrained,
        "cumulative_regret": sum(1.0 - success for _, success in online) / len(online),
        "steps_to_90pct_final": reached,
    }
