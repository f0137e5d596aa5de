"""The results page of offline-to-online runs: ``python -m policy.report SWEEP_DIR [more dirs]
out=docs/results/NAME``.

Every run under the given directories (a directory with ``experiment.json``, as
policy.experiment leaves it) is read: the figures of a finished run from its ``result.json``,
its curves from the ``eval.csv`` of both stages. Per protocol and algorithm, the mean and the
spread over seeds go to ``summary.csv`` and ``summary.md``, with PNG plots: success rate
across both phases, the critic's Q(s, pi) on dataset states against their Monte-Carlo
returns, and cumulative regret. Runs that are unfinished, or missing from the sweep (by the
``multirun.yaml`` hydra leaves in a sweep directory, and by the algorithms and seeds of the
runs found), are listed, not averaged in.
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
from policy.results import DECIMALS, FIGURES, read_csv

USAGE = "usage: python -m policy.report SWEEP_DIR [more dirs] [out=DIR]"
# The table's columns: (key in summary.csv, title, decimals); wall time is both stages'.
COLUMNS = (*((key, name, DECIMALS[key]) for key, name in FIGURES.items()), ("wall_minutes", "wall time (min)", 1))


@dataclass
class Run:
    path: Path
    protocol: str
    algo: str
    seed: int
    result: dict[str, Any] | None  # None: unfinished
    pretrain: list[dict[str, float]] = field(default_factory=list)  # eval.csv rows
    finetune: list[dict[str, float]] = field(default_factory=list)

    def progress(self) -> str:
        """Where an unfinished run stopped, in words."""
        state = json.loads((self.path / "experiment.json").read_text())
        settings = state["definition"]["protocol"]
        stage, rows, unit = (("pretraining", self.pretrain, "update") if "pretrain" not in state["stages"]
                             else ("fine-tuning", self.finetune, "env step"))
        return f"{stage}, " + (f"last evaluation at {unit} {int(rows[-1]['step'])}" if rows else "no evaluation yet")


def find_runs(directory: Path) -> list[Run]:
    runs = []
    for state_path in sorted(directory.rglob("experiment.json")):
        run_dir = state_path.parent
        result_path = run_dir / "result.json"
        try:
            definition = json.loads(state_path.read_text())["definition"]
            identity = definition["protocol"]["name"], definition["algo"]["name"], int(definition["seed"])
            result = json.loads(result_path.read_text()) if result_path.is_file() else None
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{run_dir}: not a run of this version of policy.experiment ({type(error).__name__}: "
                             f"{error})") from None
        runs.append(Run(run_dir, *identity, result, read_csv(run_dir / "pretrain" / "eval.csv"),
                        read_csv(run_dir / "finetune" / "eval.csv")))
    return runs


def check_unique(runs: list[Run]) -> None:
    """Two directories holding the same protocol, algorithm and seed would count as two seeds."""
    seen: dict[tuple[str, str, int], Path] = {}
    for run in runs:
        key = (run.protocol, run.algo, run.seed)
        if key in seen:
            raise ValueError(f"two runs of protocol {key[0]!r}, {key[1]} seed {key[2]}: {seen[key]} and {run.path}; "
                             f"report them separately")
        seen[key] = run.path


def swept(directory: Path) -> tuple[list[str], list[int]]:
    """The algorithms and seeds of the sweep hydra recorded in ``directory/multirun.yaml``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    path = directory / "multirun.yaml"
    if not path.is_file():
        return [], []
    values: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(list(OmegaConf.load(path).hydra.overrides.task)):
        if override.key_or_group in ("algo", "seed"):
            values[override.key_or_group] = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                                             else [override.get_value_element_as_str()])
    # what the sweep did not name is the experiment's default
    return values.get("algo", ["calql"]), [int(seed) for seed in values.get("seed", ["0"])]


def missing_runs(runs: list[Run], directories: list[Path]) -> list[tuple[str, str, int]]:
    """(protocol, algo, seed) of every run the sweeps or the runs found imply, with no directory:
    per protocol, every algorithm and seed that one of its runs has or that a sweep holding its
    runs named (a sweep of another protocol implies nothing about this one)."""
    algos: dict[str, set[str]] = {}
    seeds: dict[str, set[int]] = {}
    for run in runs:
        algos.setdefault(run.protocol, set()).add(run.algo)
        seeds.setdefault(run.protocol, set()).add(run.seed)
    for directory in directories:
        named_algos, named_seeds = swept(directory)
        for protocol in {run.protocol for run in runs if run.path.is_relative_to(directory)}:
            algos[protocol].update(named_algos)
            seeds[protocol].update(named_seeds)
    found = {(run.protocol, run.algo, run.seed) for run in runs}
    return [(protocol, algo, seed) for protocol in sorted(algos)
            for algo, seed in itertools.product(sorted(algos[protocol]), sorted(seeds[protocol]))
            if (protocol, algo, seed) not in found]


# ---------------------------------------------------------------------------- figures
def figures_of(run: Run) -> dict[str, float]:
    return {**{key: float(run.result[key]) for key in FIGURES}, "wall_minutes": run.result["wall_seconds"]["total"] / 60}


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (NaN for one seed), min and max."""
    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else math.nan,
            "min": float(array.min()), "max": float(array.max())}


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per (protocol, algorithm) over its finished runs."""
    rows = []
    finished = [run for run in runs if run.result is not None]
    for protocol, algo in sorted({(run.protocol, run.algo) for run in finished}):
        group = sorted((run for run in finished if (run.protocol, run.algo) == (protocol, algo)), key=lambda run: run.seed)
        row: dict[str, Any] = {"protocol": protocol, "algo": algo, "seeds": len(group),
                               "seed_list": " ".join(str(run.seed) for run in group)}
        for key, _, _ in COLUMNS:
            for statistic, value in spread([figures_of(run)[key] for run in group]).items():
                row[f"{key}_{statistic}"] = value
        rows.append(row)
    return rows


def curve(runs: list[Run], stage: str, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean, min and max over ``runs`` of ``column`` in the ``stage`` evaluations (at each
    step, over the runs that have it). Fine-tuning starts at env step 0 with the pretrained
    policy's evaluation."""
    by_step: dict[float, list[float]] = {}
    for run in runs:
        rows = run.pretrain if stage == "pretrain" else [{**run.pretrain[-1], "step": 0.0}, *run.finetune]
        for row in rows:
            if not math.isnan(row.get(column, math.nan)):
                by_step.setdefault(row["step"], []).append(row[column])
    steps = np.array(sorted(by_step))
    values = [np.asarray(by_step[step]) for step in steps]
    return (steps, np.array([v.mean() for v in values]), np.array([v.min() for v in values]),
            np.array([v.max() for v in values]))


def two_phase_axes(title: str, ylabel: str):
    """A figure whose left half is offline pretraining (gradient updates) and right half online
    fine-tuning (env steps), the boundary between them marked."""
    import matplotlib.pyplot as plt

    figure, (offline, online) = plt.subplots(1, 2, sharey=True, figsize=(11, 4.8), gridspec_kw={"wspace": 0})
    offline.set_xlabel("offline pretraining: gradient updates")
    online.set_xlabel("online fine-tuning: env steps")
    offline.set_ylabel(ylabel)
    for axis in (offline, online):
        axis.grid(alpha=0.3)
    offline.spines["right"].set(linestyle="--", linewidth=2, color="black")
    online.spines["left"].set(linestyle="--", linewidth=2, color="black")
    online.annotate("offline | online", xy=(0, 1.0), xycoords="axes fraction", ha="center", va="bottom", fontsize=9)
    figure.suptitle(title)
    return figure, offline, online


def save_png(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    write_bytes_atomically(path, buffer.getvalue())


def plot_success(protocol: str, groups: dict[str, list[Run]], colors: dict[str, str], path: Path) -> None:
    figure, offline, online = two_phase_axes(
        f"{protocol}: evaluation success rate (line: mean over seeds; band: range over seeds)", "success rate")
    for algo, runs in groups.items():
        for axis, stage in ((offline, "pretrain"), (online, "finetune")):
            steps, mean, low, high = curve(runs, stage, "success_rate")
            label = f"{algo} ({len(runs)} seed{'s' if len(runs) > 1 else ''})" if stage == "pretrain" else None
            axis.plot(steps, mean, color=colors[algo], label=label, marker=".")
            axis.fill_between(steps, low, high, color=colors[algo], alpha=0.15)
    offline.set_ylim(-0.02, 1.02)
    offline.set_xlim(left=0)  # pretraining from its start, though its first evaluation is later
    offline.legend(loc="upper left")
    save_png(figure, path)


def plot_calibration(protocol: str, groups: dict[str, list[Run]], colors: dict[str, str], path: Path) -> None:
    figure, offline, online = two_phase_axes(
        f"{protocol}: mean Q(s, pi(s)) on held-out dataset states vs their Monte-Carlo return (mean over seeds)",
        "value (rewards as trained on)")
    every = [run for runs in groups.values() for run in runs]
    for axis, stage in ((offline, "pretrain"), (online, "finetune")):
        for algo, runs in groups.items():
            steps, mean, low, high = curve(runs, stage, "q_policy")
            axis.plot(steps, mean, color=colors[algo], label=f"Q(s, pi(s)) {algo}" if stage == "pretrain" else None)
            axis.fill_between(steps, low, high, color=colors[algo], alpha=0.15)
        steps, mean, _, _ = curve(every, stage, "mc_return")
        axis.plot(steps, mean, color="black", linestyle=":", linewidth=2,
                  label="Monte-Carlo return of the same states" if stage == "pretrain" else None)
    offline.set_xlim(left=0)
    offline.legend(loc="lower left", fontsize=8)
    save_png(figure, path)


def plot_regret(protocol: str, groups: dict[str, list[Run]], colors: dict[str, str], path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for index, (algo, runs) in enumerate(groups.items()):
        values = [run.result["cumulative_regret"] for run in runs]
        stats = spread(values)
        axis.bar(index, stats["mean"], color=colors[algo], alpha=0.8,
                 yerr=None if math.isnan(stats["std"]) else stats["std"], capsize=4)
        axis.scatter([index] * len(values), values, color="black", s=12, zorder=3)
        axis.annotate(f"{stats['mean']:.2f}", (index, stats["mean"]), xytext=(12, 4), textcoords="offset points")
    axis.set_xticks(range(len(groups)), list(groups))
    axis.set_ylim(0, 1)
    axis.set_ylabel("cumulative regret (lower is better)")
    axis.set_title(f"{protocol}: mean of 1 - success over fine-tuning evaluations\n(bar: mean; line: std; dots: seeds)",
                   fontsize=10)
    axis.grid(axis="y", alpha=0.3)
    save_png(figure, path)


# ---------------------------------------------------------------------------- outputs
def formatted(row: dict[str, Any], key: str, decimals: int) -> str:
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    return f"{mean:.{decimals}f}" + ("" if math.isnan(std) else f" ± {std:.{decimals}f}")


def settings_lines(runs: list[Run]) -> list[str]:
    """What each algorithm ran with: fine-tuning settings, deviations from reference values and
    the commands of one run."""
    lines = []
    first = runs[0].result
    lines.append(f"- Observations: {', '.join(first['obs_keys'])}; pretraining: {first['pretrain_updates']} updates; "
                 f"fine-tuning: {first['finetune']['env_steps']} env steps.")
    for algo in sorted({run.algo for run in runs}):
        result = next(run.result for run in runs if run.algo == algo)
        online = result["finetune"]
        sampling = (f"{online['sampling']}, mixing ratio {online['mixing_ratio']}" if online["sampling"] == "mixed"
                    else online["sampling"])
        changed = "; ".join(f"{name} {values['pretrain']}" + ("" if values["finetune"] == values["pretrain"]
                                                              else f" (fine-tuning {values['finetune']})")
                            + f" instead of {values['reference']}" for name, values in result["deviations"].items())
        lines.append(f"- **{algo}**: fine-tuning UTD {online['utd']}, sampling {sampling}; deviations from the "
                     f"reference values: {changed or 'none'}.")
        for stage, text in result["commands"].items():
            lines.append(f"  - {stage}: `{text}`")
    return lines


def write_report(runs: list[Run], missing: list[tuple[str, str, int]], directories: list[Path], out: Path) -> str:
    rows = summarize(runs)
    buffer = io.StringIO()
    columns = ["protocol", "algo", "seeds", "seed_list"] + [f"{key}_{s}" for key, _, _ in COLUMNS for s in ("mean", "std", "min", "max")]
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: ("" if isinstance(value, float) and math.isnan(value) else value) for key, value in row.items()}
                     for row in rows)
    write_bytes_atomically(out / "summary.csv", buffer.getvalue().encode())

    finished = [run for run in runs if run.result is not None]
    unfinished = [run for run in runs if run.result is None]
    colors = {algo: f"C{index}" for index, algo in enumerate(sorted({run.algo for run in runs}))}  # the same in every plot
    lines = ["# Offline-to-online results", "",
             f"Read from {', '.join(f'`{d}`' for d in directories)}: {len(finished)} finished run(s), "
             f"{len(unfinished)} unfinished, {len(missing)} missing.", ""]
    if finished:
        commits = sorted({run.result["commit"] for run in finished})
        machines = sorted({run.result["machine"] for run in finished})
        lines += [f"Commit: {', '.join(f'`{c}`' for c in commits)}. Machine: {'; '.join(machines)}.", ""]
    for protocol in sorted({run.protocol for run in finished}):
        groups = {algo: sorted((r for r in finished if (r.protocol, r.algo) == (protocol, algo)), key=lambda r: r.seed)
                  for algo in sorted({r.algo for r in finished if r.protocol == protocol})}
        lines += [f"## Protocol `{protocol}`", "",
                  "| algorithm | seeds | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |"]
        for row in (row for row in rows if row["protocol"] == protocol):
            lines.append(f"| {row['algo']} | {row['seeds']} ({row['seed_list']}) | "
                         + " | ".join(formatted(row, key, decimals) for key, _, decimals in COLUMNS) + " |")
        lines += ["", "Mean ± sample standard deviation over seeds (minimum and maximum in summary.csv). Pretrained "
                  "success: fine-tuning's evaluation before its first online step (the last pretraining evaluation "
                  "for runs without one); final: the last fine-tuning evaluation; unlearning dip: "
                  "the lowest success in the first quarter of fine-tuning minus the pretrained success; cumulative "
                  "regret: the mean of 1 - success over the fine-tuning evaluations; env steps to 90% of final: the "
                  "first fine-tuning evaluation (0: the pretrained policy) at 90% of the final success or more; wall "
                  "time: both stages.", "", "Settings:", "", *settings_lines(sum(groups.values(), [])), ""]
        for name, plot, caption in (("success", plot_success, "Success rate across both phases"),
                                    ("calibration", plot_calibration, "Calibration: Q(s, pi(s)) against Monte-Carlo returns"),
                                    ("regret", plot_regret, "Cumulative regret over fine-tuning")):
            plot(protocol, groups, colors, out / f"{protocol}_{name}.png")
            lines += [f"![{caption}]({protocol}_{name}.png)", ""]
    if missing or unfinished:
        lines += ["## Not in the table", ""]
        lines += [f"- `{run.protocol}` {run.algo} seed {run.seed}: unfinished ({run.progress()}), `{run.path}`"
                  for run in unfinished]
        lines += [f"- `{protocol}` {algo} seed {seed}: missing (no run directory)" for protocol, algo, seed in missing]
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
