"""Cal-QL against CQL, image fine-tuning at the same settings, as one picture (from the
repository root): python docs/results/finetune_cql/plot_curves.py"""
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = "docs/results/finetune_cql/"
CALQL = "docs/results/finetune_average/"


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def trained_curve(path, seed, start):
    mine = sorted((r for r in rows(path) if r["seed"] == str(seed)), key=lambda r: int(r["env_steps"]))
    return [0.0] + [float(r["env_steps"]) for r in mine], [start] + [float(r["trained_success"]) for r in mine]


fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, seed in zip(axes, (0, 1)):
    for name, folder, trained_file, color in (("Cal-QL", CALQL, CALQL + "trained_policy_eval.csv", "C2"),
                                              ("CQL", HERE, HERE + "trained_policy_eval.csv", "C0")):
        averaged = rows(folder + f"ft_{name.lower().replace('-', '')}_avg_s{seed}_eval.csv")
        xs = [float(r["step"]) for r in averaged]
        ys = [float(r["success_rate"]) for r in averaged]
        ax.plot(xs, ys, "-o", color=color, ms=4, label=f"{name}: policy average (evaluated policy)")
        ax.plot(*trained_curve(trained_file, seed, ys[0]), "--s", color=color, ms=3, alpha=0.6,
                label=f"{name}: trained weights")
        ax.axhline(ys[0] - 0.10, color=color, lw=0.8, ls=":")
    ax.set_title(f"seed {seed}: 100 episodes per evaluation")
    ax.set_xlabel("online env steps (0: the pretrained policy, 4k updates)")
    ax.grid(alpha=0.3)
    ax.set_ylim(0, 1)
axes[0].set_ylabel("success rate (deterministic policy)")
axes[0].legend(fontsize=8, loc="lower right")
fig.suptitle("Image fine-tuning at the defaults (sampling=uniform, policy_average_tau=0.001); dotted: 10 points below "
             "each start", fontsize=10)
fig.tight_layout()
fig.savefig(HERE + "finetune_cql_curves.png", dpi=110)
print("wrote", HERE + "finetune_cql_curves.png")
