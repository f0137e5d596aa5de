"""The figures of one offline-to-online run, per evaluated policy, and the intervals they are
reported with: what ``result.json`` holds and what the report summarises over seeds.

A run evaluates up to two policies on the same episodes: the ``trained`` weights and, when a
policy average is in use (``policy_average_tau`` > 0), their moving ``average``, which is the
policy that is exported. ``eval.csv``'s ``success_rate`` is the evaluated policy (the average
when there is one) and ``trained_success_rate`` the trained weights.

Figures of one policy over fine-tuning (env step 0 is the policy fine-tuning starts from):

- ``pretrained_success``: fine-tuning's own evaluation before its first online step (env step
  0) when it has one, else the last pretraining evaluation.
- ``final_success``: the last fine-tuning evaluation.
- ``unlearning_dip``: the lowest success in the first quarter of fine-tuning (evaluations at
  env steps up to a quarter of the budget; the first evaluation when none is that early)
  minus the pretrained success; negative when fine-tuning first loses what pretraining learned.
- ``lowest_dip``: the lowest success of the whole fine-tuning run minus the pretrained success
  (a collapse later than the first quarter shows here).
- ``cumulative_regret``: the mean of 1 - success over the fine-tuning evaluations (step > 0).
- ``steps_to_stay_90pct_final``: the first env step from which every later evaluation is at
  90% of the final success or more; a run that falls below and recovers is credited with the
  evaluation of its recovery, not with its start.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

# Success rates are fractions of episodes: 0.9 * final may exceed an equal rate by rounding.
TOLERANCE = 1e-9
POLICIES = ("trained", "average")
POLICY_NAMES = {"trained": "trained weights", "average": "policy average"}
# Each figure's key in result.json and summary.csv, and its name in words.
FIGURES = {
    "pretrained_success": "pretrained success",
    "final_success": "final success",
    "unlearning_dip": "dip, first quarter",
    "lowest_dip": "lowest point - start",
    "cumulative_regret": "cumulative regret",
    "steps_to_stay_90pct_final": "env steps until >= 90% of final for good",
}
DECIMALS = {**dict.fromkeys(FIGURES, 2), "steps_to_stay_90pct_final": 0}  # as the figures are printed
Series = list[tuple[float, float]]  # (step, success rate) of one policy's evaluations


def read_csv(path: str | Path) -> list[dict[str, float]]:
    """The rows of a run's CSV log as numbers (an empty cell is NaN); no file: no rows."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{key: float(value) if value != "" else float("nan") for key, value in row.items()} for row in csv.DictReader(f)]


def success_series(rows: list[dict[str, float]], policy: str, averaged: bool) -> Series | None:
    """The success rates of ``policy`` in a stage's ``eval.csv`` rows; None when that policy was
    not evaluated (no average in use, or the trained weights of an averaged run not scored).
    A row's ``policy_average`` column says whether an average was in use at it; logs without
    that column have one throughout the stage when ``averaged`` (its config's tau > 0)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; available: {', '.join(POLICIES)}")
    series = []
    for row in rows:
        in_use = bool(row["policy_average"]) if not math.isnan(row.get("policy_average", math.nan)) else averaged
        if policy == "average":
            value = row["success_rate"] if in_use else math.nan
        else:
            value = row.get("trained_success_rate", math.nan) if in_use else row["success_rate"]
        if not math.isnan(value):
            series.append((row["step"], value))
    return series or None


def start_and_online(pretrain: Series, finetune: Series) -> tuple[float, Series]:
    """The success fine-tuning starts from (its env step 0 evaluation, else the last
    pretraining one) and the evaluations after online steps."""
    if not pretrain or not finetune:
        raise ValueError("a run's figures need at least one evaluation of each stage")
    start = [success for step, success in finetune if step == 0]
    online = [(step, success) for step, success in finetune if step > 0]
    if not online:
        raise ValueError("a run's figures need at least one fine-tuning evaluation after an online step")
    return (start[-1] if start else pretrain[-1][1]), online


def run_figures(pretrain: Series, finetune: Series, env_steps: int) -> dict[str, float]:
    """The figures above for one policy from its (step, success) evaluations in both stages
    (fine-tuning's steps are env steps) and the fine-tuning budget."""
    pretrained, online = start_and_online(pretrain, finetune)
    final = online[-1][1]
    first_quarter = [success for step, success in online if step <= env_steps / 4] or [online[0][1]]
    points = [(0.0, pretrained), *online]
    below = [index for index, (_, success) in enumerate(points) if success < 0.9 * final - TOLERANCE]
    stays_from = points[below[-1] + 1][0] if below else 0.0  # the final point is never below
    return {
        "pretrained_success": pretrained,
        "final_success": final,
        "unlearning_dip": min(first_quarter) - pretrained,
        "lowest_dip": min(success for _, success in online) - pretrained,
        "cumulative_regret": sum(1.0 - success for _, success in online) / len(online),
        "steps_to_stay_90pct_final": stays_from,
    }


def finetune_series(pretrain_rows: list[dict[str, float]], finetune_rows: list[dict[str, float]],
                    averaged: dict[str, bool], policy: str) -> Series | None:
    """Fine-tuning's evaluations of ``policy`` from env step 0: its own evaluation there, else
    the last pretraining one (the policy fine-tuning starts from). A policy average made at
    fine-tuning's first update starts as a copy of the trained weights: their evaluation at
    step 0 stands for it. ``averaged``: whether each stage had an average (its config)."""
    online = success_series(finetune_rows, policy, averaged["finetune"])
    if not online:
        return None
    if any(step == 0 for step, _ in online):
        return online
    trained = success_series(finetune_rows, "trained", averaged["finetune"]) or []
    start = [(0.0, success) for step, success in trained if step == 0]
    if not start:
        before = (success_series(pretrain_rows, policy, averaged["pretrain"])
                  or success_series(pretrain_rows, "trained", averaged["pretrain"]))
        start = [(0.0, before[-1][1])] if before else []
    return start + online


def policy_figures(pretrain_rows: list[dict[str, float]], finetune_rows: list[dict[str, float]],
                   averaged: dict[str, bool], env_steps: int) -> dict[str, dict[str, float]]:
    """``run_figures`` of each policy that fine-tuning evaluated from its start to its end."""
    figures = {}
    for policy in POLICIES:
        series = finetune_series(pretrain_rows, finetune_rows, averaged, policy)
        if series and series[0][0] == 0:
            figures[policy] = run_figures(series[:1], series, env_steps)
    return figures


def stage_averaged(stage_dir: Path) -> bool:
    """Whether a stage ran with a policy average, by the ``config.yaml`` it recorded (the
    algorithm's settings as trained; none recorded: no average)."""
    from omegaconf import OmegaConf

    path = stage_dir / "config.yaml"
    if not path.is_file():
        return False
    algo = OmegaConf.to_container(OmegaConf.load(path)).get("algo") or {}
    return float(algo.get("policy_average_tau") or 0.0) > 0


def run_dir_figures(run_dir: Path, env_steps: int) -> dict[str, dict[str, float]]:
    """:func:`policy_figures` of the run an experiment left in ``run_dir``."""
    return policy_figures(read_csv(run_dir / "pretrain" / "eval.csv"), read_csv(run_dir / "finetune" / "eval.csv"),
                          {stage: stage_averaged(run_dir / stage) for stage in ("pretrain", "finetune")}, env_steps)


# ------------------------------------------------------------------------------ intervals
Z95 = 1.959963984540054


def wilson_interval(successes: float, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a success rate ``successes / trials`` (95% by default)."""
    if trials < 1:
        raise ValueError(f"a success rate needs at least one trial, got {trials}")
    rate = successes / trials
    centre = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(values: list[float], resamples: int = 10000, seed: int = 0) -> tuple[float, float]:
    """A 95% percentile bootstrap interval of the mean of ``values`` (resampled with
    replacement; fixed seed, so a report is reproducible). With two values it is their range."""
    array = np.asarray(values, dtype=float)
    if len(array) < 2:
        return math.nan, math.nan
    means = array[np.random.default_rng(seed).integers(0, len(array), size=(resamples, len(array)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)
