"""success.png of this folder: the evaluated policy (the average) and the trained weights over
pretraining, per seed, from the runs' eval.csv copied here (python docs/results/default_pretrain/plot.py)."""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA_SUCCESS = 0.536  # data/pickplace.hdf5: 536 of 1000 episodes succeed

figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
for path in sorted(HERE.glob("calql_s*_eval.csv")):
    rows = list(csv.DictReader(path.open()))
    steps = [int(row["step"]) for row in rows]
    seed = path.name.split("_")[1]
    axes[0].plot(steps, [float(row["success_rate"]) for row in rows], marker="o", label=f"seed {seed[1:]}")
    axes[1].plot(steps, [float(row["trained_success_rate"]) for row in rows], marker="o", label=f"seed {seed[1:]}")
for axis, title in zip(axes, ("policy average (evaluated, exported)", "trained weights")):
    axis.axhline(DATA_SUCCESS, color="grey", linestyle="--", label="the data's success")
    axis.set(title=title, xlabel="pretraining updates", ylim=(0, 1.02))
    axis.grid(alpha=0.3)
axes[0].set_ylabel("success rate, 50 episodes")
axes[1].legend(loc="lower right")
figure.tight_layout()
figure.savefig(HERE / "success.png", dpi=110)
