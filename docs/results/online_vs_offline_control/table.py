"""The summary's table: per recipe and budget, the trained weights' success per seed at the end
of fine-tuning (50 episodes each), the mean over seeds with a Wilson 95% interval on the pooled
episodes, the lowest point after updates began, and the gain over the offline-only control with
two 95% intervals: pooled episodes (normal approximation) and seeds (t, n-1 degrees of freedom)
(python docs/results/online_vs_offline_control/table.py)."""

import csv
import math
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
EARLIER = HERE.parent / "wsrl_finetune_screen"
EPISODES = 50
T_95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78}


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def runs(recipe: str) -> dict[int, list[dict]]:
    found = {}
    for seed in range(5):
        for folder in (HERE, EARLIER):
            path = folder / f"ft_{recipe}_s{seed}_eval.csv"
            if path.exists():
                found[seed] = list(csv.DictReader(path.open()))
                break
    return found


def final(rows: list[dict]) -> float:
    return float(rows[-1]["success_rate"])


def lowest(rows: list[dict]) -> float:
    return min(float(row["success_rate"]) for row in rows if int(row["step"]) > 1000)


def gain(recipe: dict[int, list[dict]], control: dict[int, list[dict]]) -> str:
    a, b = [final(r) for r in recipe.values()], [final(r) for r in control.values()]
    difference = statistics.mean(a) - statistics.mean(b)
    pa, pb = statistics.mean(a), statistics.mean(b)
    pooled = 1.96 * math.sqrt(pa * (1 - pa) / (EPISODES * len(a)) + pb * (1 - pb) / (EPISODES * len(b)))
    text = f"{difference:+.3f} [{difference - pooled:+.3f}, {difference + pooled:+.3f}] (episodes)"
    if len(a) > 1 and len(b) > 1:
        se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
        t = T_95[min(len(a), len(b)) - 1]
        text += f", [{difference - t * se:+.3f}, {difference + t * se:+.3f}] (seeds)"
    return text


for budget in ("", "_8k"):
    control = runs(f"control{budget}")
    for recipe in ("control", "penalty_mixed", "penalty_mixed_bcoffline", "penalty_mixed_alpha1", "nopenalty_mixed_ent"):
        found = runs(f"{recipe}{budget}")
        if not found:
            continue
        finals = [final(rows) for rows in found.values()]
        low, high = wilson(sum(finals) * EPISODES, EPISODES * len(finals))
        line = (f"{recipe + budget:28s} seeds {sorted(found)} final {' / '.join(f'{f:.2f}' for f in finals)}"
                f"  mean {statistics.mean(finals):.3f} [{low:.2f}, {high:.2f}]"
                f"  lowest {' / '.join(f'{lowest(rows):.2f}' for rows in found.values())}")
        if recipe != "control" and control:
            line += f"  gain over control {gain(found, control)}"
        print(line)
