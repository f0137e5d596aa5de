"""The results page of offline-to-online runs: ``python -m policy.report SWEEP_DIR [more dirs]
out=docs/results/NAME``.

Every run under the given directories (a directory with ``experiment.json``, as
policy.experiment leaves it) is read: its curves and figures from the ``eval.csv`` of both
stages (policy/results.py), its settings from ``result.json``. Figures are given per policy
(the trained weights; the policy average where one is in use: the exported policy), and per
protocol and group (an algorithm, or its offline-only control) as the mean over seeds with a
95% interval: a bootstrap over seeds, or for one seed's success rate the Wilson interval of
its episodes. An algorithm with a control gets its online gain: its figure minus the
control's, seed by seed. ``summary.csv`` and ``summary.md`` hold the tables; PNG plots show
success across both phases (Wilson bands of the pooled episodes), the calibration picture per
seed (Q(s, pi) and Q(s, a_data) against the Monte-Carlo returns of the same states, the share
of policy actions valued below their return) and cumulative regret. Runs that are unfinished,
or missing from the sweep (by the ``multirun.yaml`` hydra leaves in a sweep directory, and by
the algorithms and seeds of the runs found), are listed, not averaged in.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datasets.atomic import is_out_of_space, write_bytes_atomically
from policy.run import check_name
from policy.results import (
    DECIMALS, FIGURES, POLICIES, POLICY_NAMES, Series, bootstrap_interval, finetune_series, policy_figures, read_csv,
    stage_averaged, success_series, wilson_interval,
)

USAGE = "usage: python -m policy.report SWEEP_DIR [more dirs] [out=DIR]"
STAGES = ("pretrain", "finetune")
SUCCESS_FIGURES = ("pretrained_success", "final_success")  # one evaluation's success rate each
# The online gain: a figure of the run minus the same figure of its control, seed by seed.
GAINS = {"final_success": "online gain, final", "mean_success": "online gain, mean over fine-tuning"}
COLUMNS = (*FIGURES, *(f"gain_{key}" for key in GAINS), "wall_minutes")
TITLES = {**FIGURES, **{f"gain_{key}": name for key, name in GAINS.items()}, "wall_minutes": "wall time (min)"}
PLACES = {**DECIMALS, **dict.fromkeys((f"gain_{key}" for key in GAINS), 2), "wall_minutes": 1}


@dataclass
class Run:
    path: Path
    protocol: str
    algo: str
    control: str  # none, or the control this run is (offline_only)
    seed: int
    result: dict[str, Any] | None  # None: unfinished
    evals: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # eval.csv rows per stage
    averaged: dict[str, bool] = field(default_factory=dict)  # a policy average in use, per stage
    episodes: dict[str, int] = field(default_factory=dict)  # evaluation episodes per point, per stage

    @property
    def group(self) -> str:
        """What the run is a seed of: its algorithm, or the algorithm's control."""
        return self.algo if self.control == "none" else f"{self.algo}, {self.control.replace('_', '-')} control"

    def progress(self) -> str:
        """Where an unfinished run stopped, in words."""
        state = json.loads((self.path / "experiment.json").read_text())
        stage, rows, unit = (("pretraining", self.evals["pretrain"], "update") if "pretrain" not in state["stages"]
                             else ("fine-tuning", self.evals["finetune"], "env step"))
        return f"{stage}, " + (f"last evaluation at {unit} {int(rows[-1]['step'])}" if rows else "no evaluation yet")

    def series(self, stage: str, policy: str) -> Series | None:
        return success_series(self.evals[stage], policy, self.averaged[stage])

    def finetune_series(self, policy: str) -> Series | None:
        return finetune_series(self.evals["pretrain"], self.evals["finetune"], self.averaged, policy)

    def figures(self, policy: str) -> dict[str, float] | None:
        """The run's figures for ``policy`` (None when unfinished, or when fine-tuning did not
        evaluate that policy from its start to its end)."""
        if self.result is None:
            return None
        figures = policy_figures(self.evals["pretrain"], self.evals["finetune"], self.averaged,
                                 self.result["finetune"]["env_steps"]).get(policy)
        if figures is None:
            return None
        figures["mean_success"] = 1.0 - figures["cumulative_regret"]
        figures["wall_minutes"] = self.result["wall_seconds"]["total"] / 60
        return figures


def check_evals(path: Path, rows: list[dict[str, float]]) -> None:
    """Every evaluation row has a finite success rate: a curve with a hole would average wrong."""
    for row in rows:
        if not math.isfinite(row.get("success_rate", math.nan)) or not math.isfinite(row.get("step", math.nan)):
            raise ValueError(f"{path}: an evaluation at step {row.get('step')} has no finite success_rate; "
                             f"the file is damaged: rerun that stage, or leave the run out of the report")


def stage_episodes(stage_dir: Path) -> int:
    from omegaconf import OmegaConf

    path = stage_dir / "config.yaml"
    return int(OmegaConf.load(path).get("eval_episodes", 0)) if path.is_file() else 0


def find_runs(directory: Path) -> list[Run]:
    runs = []
    for state_path in sorted(directory.rglob("experiment.json")):
        run_dir = state_path.parent
        result_path = run_dir / "result.json"
        try:
            definition = json.loads(state_path.read_text())["definition"]
            identity = (definition["protocol"]["name"], definition["algo"]["name"], definition.get("control", "none"),
                        int(definition["seed"]))
            result = json.loads(result_path.read_text()) if result_path.is_file() else None
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{run_dir}: not a run of this version of policy.experiment ({type(error).__name__}: "
                             f"{error})") from None
        check_name(identity[0], f"{run_dir}: protocol name")  # it names the plot files
        run = Run(run_dir, *identity, result)
        for stage in STAGES:
            run.evals[stage] = read_csv(run_dir / stage / "eval.csv")
            check_evals(run_dir / stage / "eval.csv", run.evals[stage])
            run.averaged[stage] = stage_averaged(run_dir / stage)
            run.episodes[stage] = stage_episodes(run_dir / stage)
        runs.append(run)
    return runs


def check_unique(runs: list[Run]) -> None:
    """Two directories holding the same protocol, group and seed would count as two seeds."""
    seen: dict[tuple[str, str, int], Path] = {}
    for run in runs:
        key = (run.protocol, run.group, run.seed)
        if key in seen:
            raise ValueError(f"two runs of protocol {key[0]!r}, {key[1]} seed {key[2]}: {seen[key]} and {run.path}; "
                             f"report them separately")
        seen[key] = run.path


def swept(directory: Path) -> tuple[list[str], list[int], list[str]]:
    """The algorithms, seeds and controls of the sweep hydra recorded in ``directory/multirun.yaml``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    path = directory / "multirun.yaml"
    if not path.is_file():
        return [], [], []
    values: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(list(OmegaConf.load(path).hydra.overrides.task)):
        if override.key_or_group in ("algo", "seed", "control"):
            values[override.key_or_group] = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                                             else [override.get_value_element_as_str()])
    # what the sweep did not name is the experiment's default
    return values.get("algo", ["calql"]), [int(seed) for seed in values.get("seed", ["0"])], values.get("control", ["none"])


def missing_runs(runs: list[Run], directories: list[Path]) -> list[tuple[str, str, str, int]]:
    """(protocol, algo, control, seed) of every run the sweeps or the runs found imply, with no
    directory: per protocol, every algorithm/control pair that one of its runs has or that a
    sweep holding its runs named, at every seed of the protocol (a sweep of another protocol
    implies nothing about this one)."""
    pairs: dict[str, set[tuple[str, str]]] = {}
    seeds: dict[str, set[int]] = {}
    for run in runs:
        pairs.setdefault(run.protocol, set()).add((run.algo, run.control))
        seeds.setdefault(run.protocol, set()).add(run.seed)
    for directory in directories:
        named_algos, named_seeds, named_controls = swept(directory)
        for protocol in {run.protocol for run in runs if run.path.is_relative_to(directory)}:
            pairs[protocol].update(itertools.product(named_algos, named_controls))
            seeds[protocol].update(named_seeds)
    found = {(run.protocol, run.algo, run.control, run.seed) for run in runs}
    return [(protocol, algo, control, seed) for protocol in sorted(pairs)
            for (algo, control), seed in itertools.product(sorted(pairs[protocol]), sorted(seeds[protocol]))
            if (protocol, algo, control, seed) not in found]


# ---------------------------------------------------------------------------- figures
def interval(values: list[float], key: str, episodes: int) -> tuple[float, float]:
    """The 95% interval of a figure's mean over seeds: a bootstrap over seeds; for one seed's
    success rate, the Wilson interval of its episodes; else none (NaN)."""
    if len(values) > 1:
        return bootstrap_interval(values)
    if key in SUCCESS_FIGURES and episodes > 0:
        return wilson_interval(round(values[0] * episodes), episodes)
    return math.nan, math.nan


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per (protocol, group, policy) over the finished runs that evaluated that policy."""
    rows = []
    finished = [run for run in runs if run.result is not None]
    for protocol, group in sorted({(run.protocol, run.group) for run in finished}):
        members = sorted((run for run in finished if (run.protocol, run.group) == (protocol, group)), key=lambda r: r.seed)
        for policy in POLICIES:
            evaluated = [(run, figures) for run in members if (figures := run.figures(policy)) is not None]
            if not evaluated:
                continue
            first = evaluated[0][0]
            row: dict[str, Any] = {"protocol": protocol, "group": group, "algo": first.algo, "control": first.control,
                                   "policy": policy, "seeds": len(evaluated),
                                   "seed_list": " ".join(str(run.seed) for run, _ in evaluated)}
            episodes = first.episodes["finetune"]
            for key in (*FIGURES, "wall_minutes"):
                values = [figures[key] for _, figures in evaluated]
                row[f"{key}_mean"] = float(np.mean(values))
                row[f"{key}_low"], row[f"{key}_high"] = interval(values, key, episodes)
            controls = {run.seed: run for run in finished
                        if (run.protocol, run.algo, run.control) == (protocol, first.algo, "offline_only")}
            for key in GAINS:
                gains = [figures[key] - control_figures[key] for run, figures in evaluated
                         if run.control == "none" and run.seed in controls
                         and (control_figures := controls[run.seed].figures(policy)) is not None]
                row[f"gain_{key}_seeds"] = len(gains)
                row[f"gain_{key}_mean"] = float(np.mean(gains)) if gains else math.nan
                row[f"gain_{key}_low"], row[f"gain_{key}_high"] = bootstrap_interval(gains) if gains else (math.nan, math.nan)
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------ curves
def success_curve(runs: list[Run], stage: str, policy: str) -> tuple[np.ndarray, ...]:
    """Steps, mean success over the runs that have each step, and the Wilson band of the
    episodes pooled over those runs."""
    by_step: dict[float, list[tuple[float, int]]] = {}
    for run in runs:
        series = run.series(stage, policy) if stage == "pretrain" else run.finetune_series(policy)
        for step, success in series or []:
            by_step.setdefault(step, []).append((success, run.episodes[stage]))
    steps = np.array(sorted(by_step))
    mean, low, high = [], [], []
    for step in steps:
        points = by_step[step]
        mean.append(np.mean([success for success, _ in points]))
        trials = sum(episodes for _, episodes in points)
        band = (wilson_interval(sum(success * episodes for success, episodes in points), trials) if trials
                else (math.nan, math.nan))
        low.append(band[0])
        high.append(band[1])
    return steps, np.array(mean), np.array(low), np.array(high)


def column_curve(run: Run, stage: str, column: str, rows: list[dict[str, float]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of one column of a run's stage log (its eval.csv unless ``rows``)."""
    points = [(row["step"], row[column]) for row in (run.evals[stage] if rows is None else rows)
              if not math.isnan(row.get(column, math.nan))]
    return np.array([step for step, _ in points]), np.array([value for _, value in points])


def two_phase_axes(rows: int, title: str):
    """A grid of ``rows`` rows whose left column is offline pretraining (gradient updates) and
    right column online fine-tuning (env steps), the boundary between them marked."""
    import matplotlib.pyplot as plt

    height = 1.2 + 3.6 * rows
    figure, axes = plt.subplots(rows, 2, sharey="row", figsize=(11, height), squeeze=False,
                                gridspec_kw={"wspace": 0, "hspace": 0.45})
    figure.subplots_adjust(top=1 - 1.0 / height)
    for offline, online in axes:
        offline.set_xlabel("offline pretraining: gradient updates")
        online.set_xlabel("online fine-tuning: env steps")
        for axis in (offline, online):
            axis.grid(alpha=0.3)
        offline.spines["right"].set(linestyle="--", linewidth=2, color="black")
        online.spines["left"].set(linestyle="--", linewidth=2, color="black")
        online.annotate("offline | online", xy=(0, 1.0), xycoords="axes fraction", ha="center", va="bottom", fontsize=9)
    figure.suptitle(title)
    return figure, axes


def save_png(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    write_bytes_atomically(path, buffer.getvalue())


POLICY_STYLES = {"trained": "-", "average": "--"}


def plot_success(protocol: str, groups: dict[str, list[Run]], colors: dict[str, str], path: Path) -> None:
    figure, [[offline, online]] = two_phase_axes(
        1, f"{protocol}: evaluation success rate (line: mean over seeds; band: 95% Wilson interval of the pooled "
           f"episodes)\nsolid: trained weights; dashed: policy average (the exported policy)")
    for group, runs in groups.items():
        for policy in POLICIES:
            for axis, stage in ((offline, "pretrain"), (online, "finetune")):
                steps, mean, low, high = success_curve(runs, stage, policy)
                if not len(steps):
                    continue
                label = f"{group}, {POLICY_NAMES[policy]} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
                axis.plot(steps, mean, color=colors[group], linestyle=POLICY_STYLES[policy], marker=".",
                          label=label if stage == "finetune" else None)
                axis.fill_between(steps, low, high, color=colors[group], alpha=0.1)
    offline.set_ylim(-0.02, 1.02)
    offline.set_ylabel("success rate")
    offline.set_xlim(left=0)  # pretraining from its start, though its first evaluation is later
    online.legend(loc="lower right", fontsize=8)
    save_png(figure, path)


CALIBRATION_LINES = (  # (eval.csv column, label, colour, line style)
    ("q_policy", "Q(s, pi(s)), held-out dataset states", "C0", "-"),
    ("q_data", "Q(s, a_data), the same states", "C1", "-"),
    ("mc_return", "MC return of those states", "black", ":"),
    ("online_q_policy", "Q(s, pi(s)), recent online states", "C2", "-"),
    ("online_mc_return", "MC return of those online states", "C2", ":"),
)
SHARE_LINES = (  # (source, column, label, colour)
    ("eval", "q_policy_below_mc", "held-out states: Q(s, pi(s)) < MC return", "C0"),
    ("eval", "online_q_policy_below_mc", "recent online states: Q(s, pi(s)) < MC return", "C2"),
    ("train", "bound_rate", "training batches: sampled policy actions below MC (Cal-QL's bound rate)", "C3"),
)


def plot_calibration(protocol: str, groups: dict[str, list[Run]], path: Path) -> None:
    """Per group two rows: the critic's values against the MC returns of the same states, and the
    share of policy actions valued below their return; one line per seed."""
    figure, axes = two_phase_axes(
        2 * len(groups), f"{protocol}: the critic against Monte-Carlo returns (rewards as trained on), one line per seed")
    for index, (group, runs) in enumerate(groups.items()):
        values, shares = axes[2 * index], axes[2 * index + 1]
        values[0].set_ylabel(f"{group}\nvalue")
        shares[0].set_ylabel(f"{group}\nshare below MC")
        shares[0].set_ylim(-0.02, 1.02)
        drawn = False
        for seed_index, run in enumerate(runs):
            first = seed_index == 0
            for axis, stage in zip(values, STAGES):
                for column, label, color, style in CALIBRATION_LINES:
                    steps, ys = column_curve(run, stage, column)
                    if len(steps):
                        axis.plot(steps, ys, color=color, linestyle=style, marker=".", alpha=0.8,
                                  label=label if first and stage == "finetune" and index == 0 else None)
            for axis, stage in zip(shares, STAGES):
                # fine-tuning's training rows are counted in updates; its axis is env steps
                train_rows = [{**row, "step": row.get("env_steps", row["step"])} for row in read_csv(run.path / stage / "train.csv")]
                for source, column, label, color in SHARE_LINES:
                    steps, ys = column_curve(run, stage, column, train_rows if source == "train" else None)
                    if len(steps):
                        drawn = True
                        axis.plot(steps, ys, color=color, alpha=0.8, linewidth=1 if source == "train" else 1.5,
                                  marker=None if source == "train" else ".",
                                  label=label if first and stage == "finetune" and index == 0 else None)
        if not drawn:
            shares[1].annotate("not logged by these runs", xy=(0.5, 0.5), xycoords="axes fraction", ha="center")
    for axis, place in ((axes[0][1], "lower right"), (axes[1][1], "upper right")):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc=place, fontsize=7)
    save_png(figure, path)


def plot_regret(protocol: str, rows: list[dict[str, Any]], groups: dict[str, list[Run]], colors: dict[str, str],
                path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(2 + 1.3 * len(rows), 4.4))
    for index, row in enumerate(rows):
        values = [figures["cumulative_regret"] for run in groups[row["group"]]
                  if (figures := run.figures(row["policy"])) is not None]
        mean, low, high = row["cumulative_regret_mean"], row["cumulative_regret_low"], row["cumulative_regret_high"]
        error = None if math.isnan(low) else [[mean - low], [high - mean]]
        axis.bar(index, mean, color=colors[row["group"]], alpha=0.8 if row["policy"] == "trained" else 0.4,
                 hatch=None if row["policy"] == "trained" else "//", yerr=error, capsize=4)
        axis.scatter([index] * len(values), values, color="black", s=12, zorder=3)
        axis.annotate(f"{mean:.2f}", (index, mean), xytext=(10, 4), textcoords="offset points")
    axis.set_xticks(range(len(rows)), [f"{row['group']}\n{POLICY_NAMES[row['policy']]}" for row in rows], fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_ylabel("cumulative regret (lower is better)")
    axis.set_title(f"{protocol}: mean of 1 - success over fine-tuning evaluations\n(bar: mean over seeds; line: 95% "
                   f"bootstrap interval over seeds; dots: seeds)", fontsize=10)
    axis.grid(axis="y", alpha=0.3)
    save_png(figure, path)


# ---------------------------------------------------------------------------- outputs
def formatted(row: dict[str, Any], key: str) -> str:
    mean, low, high = row[f"{key}_mean"], row[f"{key}_low"], row[f"{key}_high"]
    if math.isnan(mean):
        return "-"
    places = PLACES[key]
    return f"{mean:.{places}f}" + ("" if math.isnan(low) else f" [{low:.{places}f}, {high:.{places}f}]")


def settings_lines(runs: list[Run]) -> list[str]:
    """What each group ran with: fine-tuning settings, deviations from reference values and the
    commands of one run."""
    lines = []
    first = runs[0].result
    lines.append(f"- Observations: {', '.join(first['obs_keys'])}; pretraining: {first['pretrain_updates']} updates; "
                 f"fine-tuning: {first['finetune']['env_steps']} env steps; evaluation episodes per point: "
                 f"{runs[0].episodes['pretrain']} in pretraining, {runs[0].episodes['finetune']} in fine-tuning.")
    for group in sorted({run.group for run in runs}):
        run = next(run for run in runs if run.group == group)
        online = run.result["finetune"]
        sampling = (f"{online['sampling']}, mixing ratio {online['mixing_ratio']}" if online["sampling"] == "mixed"
                    else online["sampling"])
        changed = "; ".join(f"{name} {values['pretrain']}" + ("" if values["finetune"] == values["pretrain"]
                                                              else f" (fine-tuning {values['finetune']})")
                            + f" instead of {values['reference']}" for name, values in run.result["deviations"].items())
        averaged = " and ".join(stage for stage in STAGES if run.averaged[stage]) or "neither stage"
        lines.append(f"- **{group}**: fine-tuning UTD {online['utd']}, sampling {sampling}; a policy average in "
                     f"{averaged}; deviations from the reference values: {changed or 'none'}.")
        for stage, text in run.result["commands"].items():
            lines.append(f"  - {stage}: `{text}`")
    return lines


DEFINITIONS = (
    "Each cell: the mean over seeds and its 95% interval in brackets: a percentile bootstrap over seeds (with two "
    "seeds that is their range, far from a claim; three or more are needed for one), or for one seed's success "
    "rate the Wilson interval of its evaluation episodes. Pretrained success: the evaluation before fine-tuning's "
    "first online step (the last pretraining evaluation for runs without one); final: the last fine-tuning "
    "evaluation; dip, first quarter: the lowest success in the first quarter of fine-tuning minus the pretrained "
    "success; lowest point - start: the same over the whole of fine-tuning; cumulative regret: the mean of "
    "1 - success over the fine-tuning evaluations; env steps until >= 90% of final for good: the first env step "
    "from which every evaluation is at 90% of the final success or more (a run that falls and recovers counts "
    "from its recovery); online gain: the figure minus the offline-only control's of the same seed (final "
    "success; mean success over the fine-tuning evaluations), with the number of seed pairs in summary.csv; "
    "wall time: both stages."
)


def write_summary_csv(rows: list[dict[str, Any]], out: Path) -> None:
    buffer = io.StringIO()
    columns = ["protocol", "group", "algo", "control", "policy", "seeds", "seed_list"]
    for key in COLUMNS:
        columns += [f"{key}_mean", f"{key}_low", f"{key}_high"] + ([f"{key}_seeds"] if key.startswith("gain_") else [])
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: ("" if isinstance(value, float) and math.isnan(value) else value) for key, value in row.items()}
                     for row in rows)
    write_bytes_atomically(out / "summary.csv", buffer.getvalue().encode())


def protocol_section(protocol: str, rows: list[dict[str, Any]], groups: dict[str, list[Run]], colors: dict[str, str],
                     out: Path) -> list[str]:
    lines = [f"## Protocol `{protocol}`", ""]
    for policy in POLICIES:
        chosen = [row for row in rows if row["policy"] == policy]
        if not chosen:
            continue
        lines += [f"### {POLICY_NAMES[policy].capitalize()}", "",
                  "| group | seeds | " + " | ".join(TITLES[key] for key in COLUMNS) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |"]
        lines += [f"| {row['group']} | {row['seeds']} ({row['seed_list']}) | "
                  + " | ".join(formatted(row, key) for key in COLUMNS) + " |" for row in chosen]
        lines.append("")
    unevaluated = sorted(group for group, runs in groups.items()
                         if any(run.averaged["finetune"] for run in runs)
                         and not any(row["group"] == group and row["policy"] == "trained" for row in rows))
    if unevaluated:
        lines += [f"The trained weights of {', '.join(unevaluated)} were not evaluated during fine-tuning (only the "
                  f"policy average was): they have no row in the trained-weights table.", ""]
    lines += [DEFINITIONS, "", "Settings:", "", *settings_lines(sum(groups.values(), [])), ""]
    plot_success(protocol, groups, colors, out / f"{protocol}_success.png")
    plot_calibration(protocol, groups, out / f"{protocol}_calibration.png")
    plot_regret(protocol, rows, groups, colors, out / f"{protocol}_regret.png")
    lines += [f"![Success rate across both phases]({protocol}_success.png)", "",
              f"![Calibration: the critic against Monte-Carlo returns]({protocol}_calibration.png)", "",
              f"![Cumulative regret over fine-tuning]({protocol}_regret.png)", ""]
    return lines


def write_report(runs: list[Run], missing: list[tuple[str, str, str, int]], directories: list[Path], out: Path) -> str:
    rows = summarize(runs)
    write_summary_csv(rows, out)
    finished = [run for run in runs if run.result is not None]
    unfinished = [run for run in runs if run.result is None]
    colors = {group: f"C{index % 10}" for index, group in enumerate(sorted({run.group for run in runs}))}  # the same in every plot
    lines = ["# Offline-to-online results", "",
             f"Read from {', '.join(f'`{d}`' for d in directories)}: {len(finished)} finished run(s), "
             f"{len(unfinished)} unfinished, {len(missing)} missing.", ""]
    if finished:
        commits = sorted({run.result["commit"] for run in finished})
        machines = sorted({run.result["machine"] for run in finished})
        lines += [f"Commit: {', '.join(f'`{c}`' for c in commits)}. Machine: {'; '.join(machines)}.", ""]
    for protocol in sorted({run.protocol for run in finished}):
        groups = {group: sorted((r for r in finished if (r.protocol, r.group) == (protocol, group)), key=lambda r: r.seed)
                  for group in sorted({r.group for r in finished if r.protocol == protocol})}
        lines += protocol_section(protocol, [row for row in rows if row["protocol"] == protocol], groups, colors, out)
    if missing or unfinished:
        lines += ["## Not in the table", ""]
        lines += [f"- `{run.protocol}` {run.group} seed {run.seed}: unfinished ({run.progress()}), `{run.path}`"
                  for run in unfinished]
        lines += [f"- `{protocol}` {algo if control == 'none' else f'{algo}, {control} control'} seed {seed}: missing "
                  f"(no run directory)" for protocol, algo, control, seed in missing]
        lines.append("")
    text = "\n".join(lines)
    write_bytes_atomically(out / "summary.md", text.encode())
    return text


def parse(argv: list[str]) -> tuple[list[Path], Path]:
    directories, out = [], Path("outputs/report")
    for arg in argv:
        key, assigned, value = arg.partition("=")
        if not assigned:
            directories.append(Path(arg))
        elif key == "out":
            out = Path(value)
        else:
            raise ValueError(f"unknown option {key!r}; {USAGE}")
    if not directories:
        raise ValueError(USAGE)
    for directory in directories:
        if not directory.is_dir():
            raise FileNotFoundError(f"not a directory: {directory}")
    return directories, out


def main(argv: list[str]) -> int:
    try:
        directories, out = parse(argv)
        runs = list({run.path.resolve(): run for directory in directories for run in find_runs(directory)}.values())
        check_unique(runs)
        if not runs:
            raise ValueError(f"no runs of policy.experiment (experiment.json) under {', '.join(map(str, directories))}")
        missing = missing_runs(runs, directories)
        out.mkdir(parents=True, exist_ok=True)
        import matplotlib

        matplotlib.use("Agg")
        text = write_report(runs, missing, directories, out)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3 if is_out_of_space(error) else 2
    print(text)
    print(f"written: {out / 'summary.md'}, {out / 'summary.csv'} and the plots")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
