"""A run's figures and the report over runs, on hand-made run directories with known numbers."""

import csv
import json
import math
from pathlib import Path

import pytest

from policy.report import main as report
from policy.results import (
    bootstrap_interval, finetune_series, policy_figures, run_figures, success_series, wilson_interval,
)

ENV_STEPS = 2000
EPISODES = 25


def _evals(rows: list[tuple]) -> list[dict[str, float]]:
    """eval.csv rows from (step, success, q_policy, mc_return[, trained success])."""
    evals = []
    for step, rate, q, mc, *trained in rows:
        row = {"step": float(step), "success_rate": rate, "q_policy": q, "mc_return": mc}
        if trained:
            row.update(trained_success_rate=trained[0], policy_average=1.0)
        evals.append(row)
    return evals


def _series(points: list[tuple[int, float]]) -> list[tuple[float, float]]:
    return [(float(step), rate) for step, rate in points]


def _write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def _run(sweep: Path, algo: str, seed: int, offline: list, online: list, wall: tuple[float, float] | None,
         protocol: str = "lowdim", control: str = "none", average: float = 0.0) -> Path:
    """A run directory as policy.experiment leaves it; ``wall`` None: killed during pretraining;
    ``average``: fine-tuning's policy_average_tau."""
    run_dir = sweep / (f"{algo}_s{seed}" if control == "none" else f"{algo}_{control}_s{seed}")
    definition = {"algo": {"name": algo}, "seed": seed,
                  "protocol": {"name": protocol, "pretrain": {"steps": 2000}, "finetune": {"env_steps": ENV_STEPS}, "by_algo": {}}}
    if control != "none":
        definition["control"] = control
    _write_csv(run_dir / "pretrain" / "eval.csv", _evals(offline))
    (run_dir / "pretrain" / "config.yaml").write_text(f"eval_episodes: {EPISODES}\nalgo:\n  policy_average_tau: 0.0\n")
    stages = {}
    if wall is not None:
        _write_csv(run_dir / "finetune" / "eval.csv", _evals(online))
        (run_dir / "finetune" / "config.yaml").write_text(f"eval_episodes: {EPISODES}\nalgo:\n  policy_average_tau: {average}\n")
        stages = {"pretrain": {"wall_seconds": wall[0]}, "finetune": {"wall_seconds": wall[1]}}
        result = {"algo": algo, "seed": seed, "protocol": protocol,
                  "wall_seconds": {"pretrain": wall[0], "finetune": wall[1], "total": sum(wall)},
                  "pretrain_updates": 2000, "obs_keys": ["robot0_eef_pos", "robot0_gripper_qpos", "object"],
                  "finetune": {"env_steps": ENV_STEPS, "utd": 1.0, "sampling": "offline" if control != "none" else "mixed",
                               "mixing_ratio": 0.5},
                  "deviations": {}, "commands": {"pretrain": f"python -m policy.pretrain algo={algo}"},
                  "commit": "abc123", "machine": "test machine", "protocol_settings": definition["protocol"]}
        (run_dir / "result.json").write_text(json.dumps(result))
    (run_dir / "experiment.json").write_text(json.dumps({"definition": definition, "stages": stages}))
    return run_dir


def _summary(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(out / "summary.csv") as f:
        return {(row["group"], row["policy"]): row for row in csv.DictReader(f)}


def test_figures_of_one_run_by_hand():
    offline = _series([(1000, 0.4), (2000, 0.8)])
    online = _series([(500, 0.5), (1000, 0.7), (1500, 0.6), (2000, 0.9)])
    figures = run_figures(offline, online, 2000)
    # 0.6 at 1500 is below 0.81: success stays at 90% of final only from 2000 on
    assert figures == pytest.approx({"pretrained_success": 0.8, "final_success": 0.9, "unlearning_dip": 0.5 - 0.8,
                                     "lowest_dip": 0.5 - 0.8, "cumulative_regret": (0.5 + 0.3 + 0.4 + 0.1) / 4,
                                     "steps_to_stay_90pct_final": 2000})
    # 0.72 is 90% of 0.8, though 0.9 * 0.8 is 0.7200000000000001 in floating point
    online = _series([(500, 0.72), (1000, 0.75), (2000, 0.8)])
    assert run_figures(_series([(2000, 0.5)]), online, 2000)["steps_to_stay_90pct_final"] == 500
    # a pretrained policy already at 90% of the final success that never falls below: env step 0
    assert run_figures(offline, _series([(1000, 0.8), (2000, 0.85)]), 2000)["steps_to_stay_90pct_final"] == 0
    # no evaluation within the first quarter: the dip is measured at the first one
    assert run_figures(offline, _series([(1000, 0.3), (2000, 0.9)]), 2000)["unlearning_dip"] == pytest.approx(-0.5)
    # fine-tuning's own evaluation before its first online step is the starting point: it sets the
    # pretrained success and stays out of the regret and the dip's window
    with_start = run_figures(offline, _series([(0, 0.7), (1000, 0.6), (2000, 0.9)]), 4000)
    assert with_start["pretrained_success"] == 0.7 and with_start["unlearning_dip"] == pytest.approx(0.6 - 0.7)
    assert with_start["cumulative_regret"] == pytest.approx((0.4 + 0.1) / 2)
    with pytest.raises(ValueError, match="after an online step"):
        run_figures(offline, _series([(0, 0.7)]), 4000)


def test_a_run_that_collapses_late_and_recovers():
    # starts at 0.8, holds in the first quarter, collapses to 0.1 at 1500, recovers to 0.9
    online = _series([(0, 0.8), (250, 0.85), (500, 0.8), (1000, 0.3), (1500, 0.1), (1750, 0.85), (2000, 0.9)])
    figures = run_figures(online[:1], online, 2000)
    assert figures["unlearning_dip"] == pytest.approx(0.0)  # min(0.85, 0.8) - 0.8: the first quarter misses it
    assert figures["lowest_dip"] == pytest.approx(0.1 - 0.8)
    # the start already was at 90% of the final, but the run fell below it: counted from the recovery
    assert figures["steps_to_stay_90pct_final"] == 1750


def test_both_policies_from_one_log():
    # fine-tuning with an average: success_rate is the average's, trained_success_rate the weights'
    pretrain = _evals([(1000, 0.4, 0, 0), (2000, 0.6, 0, 0)])
    finetune = _evals([(0, 0.6, 0, 0, 0.6), (1000, 0.8, 0, 0, 0.5), (2000, 0.9, 0, 0, 0.7)])
    figures = policy_figures(pretrain, finetune, {"pretrain": False, "finetune": True}, 2000)
    assert figures["trained"]["final_success"] == 0.7 and figures["average"]["final_success"] == 0.9
    assert figures["trained"]["lowest_dip"] == pytest.approx(-0.1) and figures["average"]["lowest_dip"] == pytest.approx(0.2)
    # no average: success_rate is the trained weights, and there is no average to report
    plain = policy_figures(pretrain, _evals([(0, 0.6, 0, 0), (2000, 0.9, 0, 0)]), {"pretrain": False, "finetune": False}, 2000)
    assert set(plain) == {"trained"} and plain["trained"]["final_success"] == 0.9
    # the curve from env step 0 holds the start once: fine-tuning's own, else the last pretraining point
    both = {"pretrain": False, "finetune": True}
    assert finetune_series(pretrain, finetune, both, "trained") == [(0.0, 0.6), (1000.0, 0.5), (2000.0, 0.7)]
    assert finetune_series(pretrain, finetune[1:], both, "average") == [(0.0, 0.6), (1000.0, 0.8), (2000.0, 0.9)]
    # an averaged run whose trained weights were not scored (older logs): only the average
    older = [{k: v for k, v in row.items() if k not in ("trained_success_rate", "policy_average")} for row in finetune]
    assert set(policy_figures(pretrain, older, {"pretrain": False, "finetune": True}, 2000)) == {"average"}
    # a row's own policy_average column wins over the stage's config: at step 0 there was no average yet
    rows = [{"step": 0.0, "success_rate": 0.6, "trained_success_rate": 0.6, "policy_average": 0.0},
            {"step": 100.0, "success_rate": 0.7, "trained_success_rate": 0.5, "policy_average": 1.0}]
    assert success_series(rows, "average", True) == [(100.0, 0.7)]
    assert success_series(rows, "trained", True) == [(0.0, 0.6), (100.0, 0.5)]
    # the average's curve starts from the trained weights' step-0 evaluation
    assert policy_figures(pretrain, rows, {"pretrain": False, "finetune": True}, 200)["average"]["pretrained_success"] == 0.6


def test_intervals_by_hand():
    # Wilson, 20 of 25: centre (0.8 + z^2/50) / (1 + z^2/25), half-width z sqrt(0.8*0.2/25 + z^2/2500) / (1 + z^2/25)
    z = 1.959963984540054
    centre = (0.8 + z * z / 50) / (1 + z * z / 25)
    half = z * math.sqrt(0.8 * 0.2 / 25 + z * z / 2500) / (1 + z * z / 25)
    assert wilson_interval(20, 25) == pytest.approx((centre - half, centre + half))
    assert wilson_interval(20, 25) == pytest.approx((0.6087, 0.9114), abs=1e-4)
    assert wilson_interval(0, 25)[0] == pytest.approx(0.0, abs=1e-12) and wilson_interval(25, 25)[1] == pytest.approx(1.0)
    # two seeds: every resample's mean is a, b or their mean: the interval is their range
    assert bootstrap_interval([0.2, 0.6]) == pytest.approx((0.2, 0.6))
    low, high = bootstrap_interval([0.1, 0.2, 0.3, 0.4, 0.5])
    assert 0.1 < low < 0.3 < high < 0.5
    assert all(math.isnan(value) for value in bootstrap_interval([0.5]))


def test_report_on_hand_made_runs(tmp_path, capsys):
    sweep, out = tmp_path / "sweep", tmp_path / "results"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n    - algo=calql,cql,iql\n    - seed=0,1\n    - protocol=lowdim\n")
    _run(sweep, "calql", 0, [(1000, 0.4, -300, -700), (2000, 0.8, -500, -700)],
         [(0, 0.8, -500, -700), (500, 0.5, -550, -700), (1000, 0.7, -600, -700), (1500, 0.6, -620, -700),
          (2000, 0.9, -650, -700)], (600, 600))
    _run(sweep, "calql", 1, [(1000, 0.2, -320, -680), (2000, 0.5, -480, -680)],
         [(0, 0.5, -480, -680), (500, 0.72, -560, -680), (1000, 0.6, -600, -680), (1500, 0.7, -640, -680),
          (2000, 0.8, -660, -680)], (900, 300))
    _run(sweep, "cql", 0, [(1000, 0.3, -900, -700), (2000, 0.9, -1200, -700)],
         [(500, 0.1, -400, -700), (1000, 0.3, -500, -700), (1500, 0.6, -600, -700), (2000, 0.8, -700, -700)], (1000, 500))
    _run(sweep, "cql", 1, [(1000, 0.2, -900, -680)], [], None)
    # the offline-only control of calql at both seeds
    _run(sweep, "calql", 0, [(1000, 0.4, -300, -700), (2000, 0.8, -500, -700)],
         [(0, 0.8, -500, -700), (1000, 0.6, -500, -700), (2000, 0.7, -500, -700)], (600, 500), control="offline_only")
    _run(sweep, "calql", 1, [(1000, 0.2, -320, -680), (2000, 0.5, -480, -680)],
         [(0, 0.5, -480, -680), (1000, 0.6, -500, -680), (2000, 0.5, -500, -680)], (900, 200), control="offline_only")

    assert report([str(sweep), f"out={out}"]) == 0
    rows = _summary(out)
    # the unfinished and missing runs are not averaged in; no run had an average: trained weights only
    assert set(rows) == {("calql", "trained"), ("cql", "trained"), ("calql, offline-only control", "trained")}
    calql, cql = rows["calql", "trained"], rows["cql", "trained"]
    assert calql["seeds"] == "2" and calql["seed_list"] == "0 1"
    expected = {"pretrained_success": (0.65, 0.5, 0.8), "final_success": (0.85, 0.8, 0.9),
                "unlearning_dip": ((-0.3 + 0.22) / 2, -0.3, 0.22), "lowest_dip": ((-0.3 + 0.1) / 2, -0.3, 0.1),
                "cumulative_regret": ((0.325 + 0.295) / 2, 0.295, 0.325),
                # seed 1 reaches 0.72 at 500 but falls to 0.6 and 0.7: it stays above 0.72 only from 2000
                "steps_to_stay_90pct_final": (2000, 2000, 2000), "wall_minutes": (20, 20, 20)}
    for key, (mean, low, high) in expected.items():  # two seeds: the bootstrap interval is their range
        assert [float(calql[f"{key}_{s}"]) for s in ("mean", "low", "high")] == pytest.approx([mean, low, high]), key
    # online gain: fine-tuned minus control, seed by seed: final 0.9 - 0.7 and 0.8 - 0.5
    assert float(calql["gain_final_success_mean"]) == pytest.approx((0.2 + 0.3) / 2)
    assert (float(calql["gain_final_success_low"]), float(calql["gain_final_success_high"])) == pytest.approx((0.2, 0.3))
    # mean success over fine-tuning: 0.675 - 0.65 and 0.705 - 0.55
    assert float(calql["gain_mean_success_mean"]) == pytest.approx((0.025 + 0.155) / 2)
    assert calql["gain_final_success_seeds"] == "2" and cql["gain_final_success_seeds"] == "0"
    # one seed: its success rates get the Wilson interval of its 25 episodes, other figures none
    assert cql["seeds"] == "1"
    assert (float(cql["final_success_low"]), float(cql["final_success_high"])) == pytest.approx(wilson_interval(20, 25))
    assert cql["unlearning_dip_low"] == "" and cql["gain_final_success_mean"] == ""
    # cql seed 0 has no step-0 row: its start is the last pretraining evaluation, counted once
    assert float(cql["pretrained_success_mean"]) == 0.9 and float(cql["cumulative_regret_mean"]) == pytest.approx(0.55)

    summary = (out / "summary.md").read_text()
    assert "### Trained weights" in summary and "### Policy average" not in summary
    assert "| calql | 2 (0 1) | 0.65 [0.50, 0.80] | 0.85 [0.80, 0.90] |" in summary
    assert "| calql, offline-only control | 2 (0 1) |" in summary
    assert "±" not in summary
    assert "`lowdim` cql seed 1: unfinished (pretraining, last evaluation at update 1000)" in summary
    assert "`lowdim` iql seed 0: missing" in summary and "`lowdim` iql seed 1: missing" in summary
    assert "5 finished run(s), 1 unfinished, 2 missing" in summary
    for name in ("success", "calibration", "regret"):
        assert (out / f"lowdim_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(lowdim_{name}.png)" in summary
    assert "missing" in capsys.readouterr().out
    # a sweep of another protocol, reported beside this one, implies nothing about it and the other way round
    other = tmp_path / "other"
    other.mkdir()
    (other / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n    - algo=calql\n    - seed=0\n")
    _run(other, "calql", 0, [(2000, 0.5, -500, -700)], [(2000, 0.6, -600, -700)], (60, 60), protocol="lowdim_bf16")
    assert report([str(sweep), str(other), f"out={out}"]) == 0
    summary = (out / "summary.md").read_text()
    assert "6 finished run(s), 1 unfinished, 2 missing" in summary and "`lowdim_bf16` cql" not in summary
    # a run given twice (its sweep and itself) counts once; the same run in another directory is refused
    assert report([str(sweep), str(sweep / "calql_s0"), f"out={out}"]) == 0
    _run(tmp_path / "elsewhere", "calql", 0, [(2000, 0.5, -500, -700)], [(2000, 0.5, -600, -700)], (60, 60))
    assert report([str(sweep), str(tmp_path / "elsewhere"), f"out={out}"]) == 2
    assert "two runs of protocol 'lowdim', calql seed 0" in capsys.readouterr().err


def test_report_with_a_policy_average(tmp_path):
    sweep, out = tmp_path / "sweep", tmp_path / "results"
    for seed, trained in ((0, (0.6, 0.3, 0.5)), (1, (0.5, 0.4, 0.6))):
        _run(sweep, "calql", seed, [(1000, 0.2, 0, 0), (2000, trained[0], 0, 0)],
             [(0, trained[0], 0, 0, trained[0]), (1000, 0.7, 0, 0, trained[1]), (2000, 0.8, 0, 0, trained[2])],
             (60, 60), average=0.001)
    assert report([str(sweep), f"out={out}"]) == 0
    rows = _summary(out)
    assert float(rows["calql", "trained"]["final_success_mean"]) == pytest.approx(0.55)
    assert float(rows["calql", "average"]["final_success_mean"]) == pytest.approx(0.8)
    assert float(rows["calql", "trained"]["lowest_dip_mean"]) == pytest.approx((-0.3 - 0.1) / 2)
    summary = (out / "summary.md").read_text()
    assert summary.index("### Trained weights") < summary.index("### Policy average")
    assert "a policy average in finetune" in summary


def test_report_refuses_what_it_cannot_read(tmp_path, capsys):
    assert report([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: no runs of policy.experiment (experiment.json) under {tmp_path}"
    assert report([str(tmp_path / "absent")]) == 2 and "not a directory" in capsys.readouterr().err
    assert report([str(tmp_path), "outdir=x"]) == 2 and "unknown option 'outdir'" in capsys.readouterr().err
    # an evaluation log with a hole where a success rate should be
    run_dir = _run(tmp_path / "sweep", "calql", 0, [(2000, 0.5, 0, 0)], [(0, 0.5, 0, 0), (2000, math.nan, 0, 0)], (60, 60))
    assert report([str(tmp_path / "sweep"), f"out={tmp_path / 'out'}"]) == 2
    error = capsys.readouterr().err
    assert str(run_dir / "finetune" / "eval.csv") in error and "no finite success_rate" in error and error.count("\n") == 1
    # and one without the column at all
    _write_csv(run_dir / "finetune" / "eval.csv", [{"step": 0.0, "return": 0.5}, {"step": 2000.0, "return": 0.6}])
    assert report([str(tmp_path / "sweep"), f"out={tmp_path / 'out'}"]) == 2
    assert "no finite success_rate" in capsys.readouterr().err
    # a protocol name that would put the plots outside out=
    (run_dir / "experiment.json").write_text(json.dumps({"definition": {"algo": {"name": "calql"}, "seed": 0,
                                                                       "protocol": {"name": "../up"}}, "stages": {}}))
    assert report([str(tmp_path / "sweep"), f"out={tmp_path / 'out'}"]) == 2
    assert "protocol name '../up' becomes a directory or file name" in capsys.readouterr().err
