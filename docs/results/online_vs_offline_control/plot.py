"""success.png of this folder: per recipe, the trained weights' evaluated success (50 episodes
per point; thin lines the seeds, thick their mean) and the stochastic training episodes' success
per 1000 env steps, at 4k and 8k env steps (python docs/results/online_vs_offline_control/plot.py).
Seed 0 of the 4k control is the wsrl_finetune_screen's run, read from that folder."""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
EARLIER = HERE.parent / "wsrl_finetune_screen"
RECIPES = {"control": "offline-only control", "penalty_mixed": "Cal-QL protocol (penalty, half offline)",
           "nopenalty_mixed_ent": "no penalty, half offline, entropy held at -6",
           "penalty_mixed_bcoffline": "Cal-QL protocol, BC on offline rows only"}
WARMUP = 1000


def run_files(recipe: str, budget: str) -> list[tuple[Path, Path]]:
    """(eval.csv, episodes.csv) of every seed of a recipe at a budget ('' for 4k, '_8k')."""
    found = []
    for seed in range(5):
        for folder in (HERE, EARLIER):
            stem = folder / f"ft_{recipe}{budget}_s{seed}"
            if Path(f"{stem}_eval.csv").exists():
                found.append((Path(f"{stem}_eval.csv"), Path(f"{stem}_episodes.csv")))
                break
    return found


figure, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
for (recipe, label), colour in zip(RECIPES.items(), ("tab:green", "tab:blue", "tab:red", "tab:purple")):
    for budget, style in (("", "-"), ("_8k", "--")):
        files = run_files(recipe, budget)
        if not files:
            continue
        curves = []
        for eval_path, episodes_path in files:
            rows = [row for row in csv.DictReader(eval_path.open()) if int(row["step"]) != WARMUP]
            steps = [round(int(row["step"]), -3) for row in rows]
            curves.append([float(row["success_rate"]) for row in rows])
            axes[0].plot(steps, curves[-1], style, color=colour, alpha=0.25, linewidth=1)
            bins: dict[int, list[float]] = {}
            for episode in csv.DictReader(episodes_path.open()):
                bins.setdefault((int(episode["step"]) - 1) // 1000, []).append(float(episode["success"]))
            axes[1].plot([1000 * b + 500 for b in sorted(bins)], [sum(bins[b]) / len(bins[b]) for b in sorted(bins)],
                         style, color=colour, alpha=0.5, marker=".")
        length = min(len(curve) for curve in curves)
        mean = [sum(curve[i] for curve in curves) / len(curves) for i in range(length)]
        name = f"{label}{', 8k' if budget else ''} ({len(curves)} seed{'s' if len(curves) > 1 else ''})"
        axes[0].plot(steps[:length], mean, style, color=colour, marker="o", linewidth=2, label=name)
for axis, title in zip(axes, ("trained weights, deterministic, 50 episodes", "training episodes (stochastic), per 1000 env steps")):
    axis.axvspan(0, WARMUP, color="grey", alpha=0.15)
    axis.set(title=title, xlabel="fine-tuning env steps (grey: warm-up, no updates)", ylim=(0, 1.02))
    axis.grid(alpha=0.3)
axes[0].set_ylabel("success rate")
axes[0].legend(loc="lower left", fontsize=7)
figure.tight_layout()
figure.savefig(HERE / "success.png", dpi=110)
