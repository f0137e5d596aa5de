"""The fine-tuning curves of this folder as one picture: python docs/results/finetune_diagnosis/plot_curves.py (from the repository root)."""
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
D = "docs/results/finetune_diagnosis/"
def rows(p): return list(csv.DictReader(open(p)))
fig, ax = plt.subplots(figsize=(7, 4))
for name, label, style in [
    ("ft_calql_s0_eval.csv", "default (sampling=mixed 0.5), seed 0, round 1, 25 episodes", "k--o"),
    ("ft_calql_uniform_s0_eval.csv", "sampling=uniform, seed 0, 100 episodes", "C0-o"),
    ("ft_calql_uniform_s1_eval.csv", "sampling=uniform, seed 1, 100 episodes", "C1-o"),
]:
    r = rows(D + name)
    xs = [float(x["step"]) for x in r]; ys = [float(x["success_rate"]) for x in r]
    if xs[0] != 0 and name == "ft_calql_s0_eval.csv":
        xs = [0.0] + xs; ys = [0.80] + ys  # its pretraining's last evaluation (same checkpoint, 25 episodes)
    ax.plot(xs, ys, style, label=label, ms=4)
ax.set_xlabel("online env steps (0: the pretrained policy, 4k updates)")
ax.set_ylabel("success rate (deterministic policy)")
ax.set_ylim(0, 1); ax.grid(alpha=0.3); ax.legend(fontsize=8, loc="lower left")
ax.set_title("Cal-QL image fine-tuning from 4k-update checkpoints (2-core CPU)")
fig.tight_layout(); fig.savefig(D + "finetune_curves.png", dpi=110)
print("wrote", D + "finetune_curves.png")
