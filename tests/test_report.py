"""A run's figures and the report over runs, on hand-made run directories with known numbers."""

import csv
import json
from pathlib import Path

import pytest

from policy.report import main as report
from policy.results import run_figures

ENV_STEPS = 2000


def _evals(rows: list[tuple[int, float, float, float]]) -> list[dict[str, float]]:
    return [{"step": float(step), "success_rate": rate, "q_policy": q, "mc_return": mc} for step, rate, q, mc in rows]


def _write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _run(sweep: Path, algo: str, seed: int, offline: list, online: list, wall: tuple[float, float] | None,
         protocol: str = "lowdim") -> None:
    """A run directory as policy.experiment leaves it; ``wall`` None: killed during pretraining."""
    run_dir = sweep / f"{algo}_s{seed}"
    definition = {"algo": {"name": algo}, "seed": seed,
                  "protocol": {"name": protocol, "pretrain": {"steps": 2000}, "finetune": {"env_steps": ENV_STEPS}, "by_algo": {}}}
    _write_csv(run_dir / "pretrain" / "eval.csv", _evals(offline))
    stages = {}
    if wall is not None:
        _write_csv(run_dir / "finetune" / "eval.csv", _evals(online))
        stages = {"pretrain": {"wall_seconds": wall[0]}, "finetune": {"wall_seconds": wall[1]}}
        figures = run_figures(_evals(offline), _evals(online), ENV_STEPS)
        result = {"algo": algo, "seed": seed, "protocol": protocol, **figures,
                  "wall_seconds": {"pretrain": wall[0], "finetune": wall[1], "total": sum(wall)},
                  "pretrain_updates": 2000, "obs_keys": ["robot0_eef_pos", "robot0_gripper_qpos", "object"],
                  "finetune": {"env_steps": ENV_STEPS, "utd": 1.0, "sampling": "mixed", "mixing_ratio": 0.5},
                  "deviations": {}, "commands": {"pretrain": f"python -m policy.pretrain algo={algo}"},
                  "commit": "abc123", "machine": "test machine", "protocol_settings": definition["protocol"]}
        (run_dir / "result.json").write_text(json.dumps(result))
    (run_dir / "experiment.json").write_text(json.dumps({"definition": definition, "stages": stages}))


def test_figures_of_one_run_by_hand():
    offline = _evals([(1000, 0.4, 0, 0), (2000, 0.8, 0, 0)])
    online = _evals([(500, 0.5, 0, 0), (1000, 0.7, 0, 0), (1500, 0.6, 0, 0), (2000, 0.9, 0, 0)])
    figures = run_figures(offline, online, 2000)
    assert figures == pytest.approx({"pretrained_success": 0.8, "final_success": 0.9, "unlearning_dip": 0.5 - 0.8,
                                     "cumulative_regret": (0.5 + 0.3 + 0.4 + 0.1) / 4, "steps_to_90pct_final": 2000})
    # 0.72 is 90% of 0.8, though 0.9 * 0.8 is 0.7200000000000001 in floating point
    online = _evals([(500, 0.72, 0, 0), (1000, 0.6, 0, 0), (2000, 0.8, 0, 0)])
    assert run_figures(_evals([(2000, 0.5, 0, 0)]), online, 2000)["steps_to_90pct_final"] == 500
    # a pretrained policy already at 90% of the final success: env step 0
    assert run_figures(offline, _evals([(1000, 0.2, 0, 0), (2000, 0.85, 0, 0)]), 2000)["steps_to_90pct_final"] == 0
    # no evaluation within the first quarter: the dip is measured at the first one
    assert run_figures(offline, _evals([(1000, 0.3, 0, 0), (2000, 0.9, 0, 0)]), 2000)["unlearning_dip"] == pytest.approx(-0.5)
    # fine-tuning's own evaluation before its first online step is the starting point: it sets the
    # pretrained success and stays out of the regret and the dip's window
    with_start = run_figures(offline, _evals([(0, 0.7, 0, 0), (1000, 0.6, 0, 0), (2000, 0.9, 0, 0)]), 4000)
    assert with_start == pytest.approx({"pretrained_success": 0.7, "final_success": 0.9, "unlearning_dip": 0.6 - 0.7,
                                        "cumulative_regret": (0.4 + 0.1) / 2, "steps_to_90pct_final": 2000})
    with pytest.raises(ValueError, match="after an online step"):
        run_figures(offline, _evals([(0, 0.7, 0, 0)]), 4000)


def test_report_on_hand_made_runs(tmp_path, capsys):
    sweep, out = tmp_path / "sweep", tmp_path / "results"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n    - algo=calql,cql,iql\n    - seed=0,1\n    - protocol=lowdim\n")
    _run(sweep, "calql", 0, [(1000, 0.4, -300, -700), (2000, 0.8, -500, -700)],
         [(500, 0.5, -550, -700), (1000, 0.7, -600, -700), (1500, 0.6, -620, -700), (2000, 0.9, -650, -700)], (600, 600))
    _run(sweep, "calql", 1, [(1000, 0.2, -320, -680), (2000, 0.5, -480, -680)],
         [(500, 0.72, -560, -680), (1000, 0.6, -600, -680), (1500, 0.7, -640, -680), (2000, 0.8, -660, -680)], (900, 300))
    _run(sweep, "cql", 0, [(1000, 0.3, -900, -700), (2000, 0.9, -1200, -700)],
         [(500, 0.1, -400, -700), (1000, 0.3, -500, -700), (1500, 0.6, -600, -700), (2000, 0.8, -700, -700)], (1000, 500))
    _run(sweep, "cql", 1, [(1000, 0.2, -900, -680)], [], None)

    assert report([str(sweep), f"out={out}"]) == 0
    with open(out / "summary.csv") as f:
        rows = {row["algo"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"calql", "cql"}  # the unfinished and the missing runs are not averaged in
    calql, cql = rows["calql"], rows["cql"]
    expected = {  # mean and sample std of the two seeds, by hand
        "pretrained_success": (0.65, 0.3 / 2**0.5), "final_success": (0.85, 0.1 / 2**0.5),
        "unlearning_dip": ((-0.3 + 0.22) / 2, 0.52 / 2**0.5), "cumulative_regret": ((0.325 + 0.295) / 2, 0.03 / 2**0.5),
        "steps_to_90pct_final": (1250, 1500 / 2**0.5), "wall_minutes": (20, 0),
    }
    assert calql["seeds"] == "2" and calql["seed_list"] == "0 1"
    for key, (mean, std) in expected.items():
        assert float(calql[f"{key}_mean"]) == pytest.approx(mean) and float(calql[f"{key}_std"]) == pytest.approx(std, abs=1e-9)
    assert float(calql["unlearning_dip_min"]) == pytest.approx(-0.3) and float(calql["unlearning_dip_max"]) == pytest.approx(0.22)
    assert cql["seeds"] == "1" and cql["pretrained_success_std"] == ""  # one seed: no spread
    assert [float(cql[f"{key}_mean"]) for key in expected] == pytest.approx([0.9, 0.8, -0.8, 0.55, 0, 25])

    summary = (out / "summary.md").read_text()
    assert "| calql | 2 (0 1) | 0.65 ± 0.21 | 0.85 ± 0.07 | -0.04 ± 0.37 | 0.31 ± 0.02 | 1250 ± 1061 | 20.0 ± 0.0 |" in summary
    assert "| cql | 1 (0) | 0.90 | 0.80 | -0.80 | 0.55 | 0 | 25.0 |" in summary
    assert "`lowdim` cql seed 1: unfinished (pretraining, last evaluation at update 1000)" in summary
    assert "`lowdim` iql seed 0: missing" in summary and "`lowdim` iql seed 1: missing" in summary
    assert "3 finished run(s), 1 unfinished, 2 missing" in summary
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
    assert "4 finished run(s), 1 unfinished, 2 missing" in summary and "`lowdim_bf16` cql" not in summary
    # a run given twice (its sweep and itself) counts once; the same run in another directory is refused
    assert report([str(sweep), str(sweep / "calql_s0"), f"out={out}"]) == 0
    _run(tmp_path / "elsewhere", "calql", 0, [(2000, 0.5, -500, -700)], [(2000, 0.5, -600, -700)], (60, 60))
    assert report([str(sweep), str(tmp_path / "elsewhere"), f"out={out}"]) == 2
    assert "two runs of protocol 'lowdim', calql seed 0" in capsys.readouterr().err


def test_report_refuses_what_it_cannot_read(tmp_path, capsys):
    assert report([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: no runs of policy.experiment (experiment.json) under {tmp_path}"
    assert report([str(tmp_path / "absent")]) == 2 and "not a directory" in capsys.readouterr().err
    assert report([str(tmp_path), "outdir=x"]) == 2 and "unknown option 'outdir'" in capsys.readouterr().err
