"""The fine-tuning screen's table from its logs: python docs/results/calibration_screen/ft_table.py RUN [RUN ...]

For each run (``<run>_eval.csv``, the trained weights evaluated: no policy average), the success
of every evaluation, then the start, the lowest point after it, the final point (with its Wilson
95% interval over 25 episodes), the mean over fine-tuning, and the critic's Q(s, pi) against the MC
returns on held-out offline states at the start and the end.
"""

import csv
import sys
from pathlib import Path

from table import wilson

HERE = Path(__file__).resolve().parent


def main(runs: list[str], episodes: int = 25) -> None:
    logs = {run: list(csv.DictReader(open(HERE / f"{run}_eval.csv"))) for run in runs}
    print("| env steps (per run: an evaluation comes at the first episode end past its point) | " + " | ".join(runs) + " |")
    print("| --- |" + " --- |" * len(runs))
    for index in range(min(len(rows) for rows in logs.values())):
        steps = " / ".join(dict.fromkeys(logs[run][index]["step"] for run in runs))
        print(f"| {steps} | " + " | ".join(f"{float(logs[run][index]['success_rate']):.2f}" for run in runs) + " |")
    print()
    print("| run | start | lowest after start | final [Wilson 95%] | mean over fine-tuning | Q(s, pi) - MC at start / end |")
    print("| --- | --- | --- | --- | --- | --- |")
    for run in runs:
        rates = [float(row["success_rate"]) for row in logs[run]]
        low, high = wilson(rates[-1] * episodes, episodes)
        gaps = [float(logs[run][i]["q_policy"]) - float(logs[run][i]["mc_return"]) for i in (0, -1)]
        print(f"| {run} | {rates[0]:.2f} | {min(rates[1:]):.2f} | {rates[-1]:.2f} [{low:.2f}, {high:.2f}] | "
              f"{sum(rates[1:]) / len(rates[1:]):.2f} | {gaps[0]:+.1f} / {gaps[1]:+.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
