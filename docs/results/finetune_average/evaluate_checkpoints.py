"""Evaluate the trained weights (not the average) of saved fine-tuning checkpoints on the same
seeded episodes as fine-tuning's own evaluations (env seeds 100000 + i); the first checkpoint's
average too, which must reproduce the run's own eval.csv row.

    python docs/results/finetune_average/evaluate_checkpoints.py OUT.csv EPISODES CHECKPOINT...
"""

import csv
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

from policy.checkpoint import load_checkpoint, restore_agent  # noqa: E402
from policy.evaluation import Evaluator  # noqa: E402

def main() -> None:
    torch.set_num_threads(1)
    out, episodes, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    rows = []
    for path in paths:
        checkpoint = load_checkpoint(path)
        agent = restore_agent(checkpoint).eval()
        evaluator = Evaluator(checkpoint["env"]["name"], checkpoint["env"]["kwargs"], 1, 100000)
        try:
            averaged = evaluator.run(lambda obs: agent.act(obs), episodes)["success_rate"] if not rows else float("nan")
            trained = evaluator.run(lambda obs: agent.act(obs, trained=True), episodes)["success_rate"]
        finally:
            evaluator.close()
        row = {"checkpoint": os.path.basename(path), "seed": checkpoint["finetune_config"]["seed"], "env_steps": checkpoint["counters"]["env_steps"],
               "updates": checkpoint["counters"]["updates"], "averaged_success": averaged, "trained_success": trained}
        print(row, flush=True)
        rows.append(row)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

if __name__ == "__main__":  # the sim workers are spawned: they import this file
    main()
