"""The curves of this folder as one picture (from the repository root):
python docs/results/finetune_average/plot_curves.py"""
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = "docs/results/finetune_average/"
BEFORE = "docs/results/finetune_diagnosis/"


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
trained = rows(HERE + "trained_policy_eval.csv")
for ax, seed in zip(axes, (0, 1)):
    averaged = rows(HERE + f"ft_calql_avg_s{seed}_eval.csv")
    xs = [float(r["step"]) for r in averaged]
    ys = [float(r["success_rate"]) for r in averaged]
    ax.plot(xs, ys, "C2-o", ms=4, label="policy average (evaluated policy), this run")
    mine = [r for r in trained if r["seed"] == str(seed)]
    ax.plot([0.0] + [float(r["env_steps"]) for r in mine], [ys[0]] + [float(r["trained_success"]) for r in mine],
            "C1--s", ms=4, label="trained weights of the same run")
    earlier = rows(BEFORE + f"ft_calql_uniform_s{seed}_eval.csv")
    ax.plot([float(r["step"]) for r in earlier], [float(r["success_rate"]) for r in earlier], ":", color="0.5",
            label="earlier run without the average")
    ax.axhspan(ys[0] - 0.10, ys[0], color="C3", alpha=0.08, lw=0)
    ax.axhline(ys[0], color="C3", lw=0.8)
    ax.set_title(f"seed {seed}: sampling=uniform, 100 episodes per evaluation")
    ax.set_xlabel("online env steps (0: the pretrained policy, 4k updates)")
    ax.grid(alpha=0.3)
    ax.set_ylim(0, 1)
axes[0].set_ylabel("success rate (deterministic policy)")
axes[0].legend(fontsize=8, loc="lower right")
fig.suptitle("Cal-QL image fine-tuning with a moving average of the policy (tau 0.001); red band: 10 points below the start",
             fontsize=10)
fig.tight_layout()
fig.savefig(HERE + "finetune_average_curves.png", dpi=110)
print("wrote", HERE + "finetune_average_curves.png")
