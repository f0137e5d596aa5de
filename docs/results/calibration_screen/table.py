"""The table of this folder's summary from its logs: python docs/results/calibration_screen/table.py RUN [RUN ...]

For each run name (``<run>_eval.csv``, and ``<run>_train.csv`` where kept): the last evaluation's
Q(s, a_data), Q(s, pi), mean MC return, the gap as a share of the MC scale, corr(Q(s, a_data), MC),
the share of held-out states whose policy action is valued below its MC return, the bound rate of
the training batches over the last 1000 updates, and the success rate with its Wilson interval.
"""

import csv
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def row(run: str, episodes: int = 25) -> str:
    last = list(csv.DictReader(open(HERE / f"{run}_eval.csv")))[-1]
    q_data, q_policy, mc = float(last["q_data"]), float(last["q_policy"]), float(last["mc_return"])
    train = HERE / f"{run}_train.csv"
    bound = "-"
    if train.is_file():
        rows = [r for r in csv.DictReader(open(train)) if float(r["step"]) > float(last["step"]) - 1000]
        bound = f"{sum(float(r['bound_rate']) for r in rows) / len(rows):.2f}"
    below = f"{float(last['q_policy_below_mc']):.2f}" if "q_policy_below_mc" in last else "-"  # not logged yet
    success = float(last["success_rate"])
    low, high = wilson(success * episodes, episodes)
    return (f"| {run} | {q_data:.1f} | {q_policy:.1f} | {mc:.1f} | {100 * (q_data - mc) / abs(mc):+.0f}% | "
            f"{float(last['q_data_mc_corr']):.2f} | {below} | {bound} | "
            f"{success:.2f} [{low:.2f}, {high:.2f}] |")


if __name__ == "__main__":
    print("| run | Q(s, a_data) | Q(s, pi) | mean MC | Q(s, a_data) - MC, share of MC | corr(Q(s, a_data), MC) | "
          "held-out states with Q(s, pi) < MC | bound rate (training batches, last 1k updates) | success (25 episodes) [Wilson 95%] |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in sys.argv[1:]:
        print(row(run))
