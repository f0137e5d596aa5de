"""success.png of this folder: the trained weights' evaluated success (50 episodes, Wilson 95%
interval) and the stochastic training episodes' success per 500 env steps, for each fine-tuning
run of the screen (python docs/results/wsrl_finetune_screen/plot.py)."""

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
RUNS = {"wsrl": "online data only, no penalty (WSRL's recipe)",
        "nopenalty_mixed": "half offline data, no penalty",
        "control": "offline-only control (the pretraining loss)"}
WARMUP = 1000


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


figure, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
for name, label in RUNS.items():
    path = HERE / f"ft_{name}_s0_eval.csv"
    if not path.exists():
        continue
    rows = [row for row in csv.DictReader(path.open()) if int(row["step"]) != WARMUP]  # no update yet at 1000
    steps = [int(row["step"]) for row in rows]
    success = [float(row["success_rate"]) for row in rows]
    low, high = zip(*(wilson(s * 50, 50) for s in success))
    line, = axes[0].plot(steps, success, marker="o", label=label)
    axes[0].fill_between(steps, low, high, color=line.get_color(), alpha=0.12)
    episodes = list(csv.DictReader((HERE / f"ft_{name}_s0_episodes.csv").open()))
    bins: dict[int, list[float]] = {}
    for episode in episodes:
        bins.setdefault((int(episode["step"]) - 1) // 500, []).append(float(episode["success"]))
    axes[1].plot([500 * b + 250 for b in sorted(bins)], [sum(bins[b]) / len(bins[b]) for b in sorted(bins)],
                 marker=".", color=line.get_color(), label=label)
for axis, title in zip(axes, ("trained weights, deterministic, 50 episodes", "training episodes (stochastic), per 500 env steps")):
    axis.axvspan(0, WARMUP, color="grey", alpha=0.15)
    axis.set(title=title, xlabel="fine-tuning env steps (grey: warm-up, no updates)", ylim=(0, 1.02))
    axis.grid(alpha=0.3)
axes[0].set_ylabel("success rate")
axes[0].legend(loc="lower left", fontsize=8)
figure.tight_layout()
figure.savefig(HERE / "success.png", dpi=110)
