"""policy.experiment through the real CLI and simulator: both stages, a kill between them and a
resume that does not redo the finished stage, refusals before any work, a sweep through the
submitit launcher's local mode, and the protocols of configs/protocol."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from policy.algorithms import REGISTRY
from policy.checkpoint import load_checkpoint
from policy.config import run_name
from policy.experiment import STAGES, compose_stage, open_run_dir, stage_overrides

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # the sweep's jobs import this checkout's code too


def _protocol(folder: Path, dataset: Path, **finetune) -> list[str]:
    """A protocol of a few updates and env steps on state observations of ``dataset``, in a
    config folder of its own; returns the overrides that select it."""
    protocol = {
        "name": "tiny",
        "pretrain": {"dataset": "pickplace_lowdim", "dataset.path": str(dataset), "steps": 4, "eval_every": 2,
                     "eval_episodes": 1, "eval_workers": 1, "batch_size": 16, "log_every": 2, "calibration_states": 16,
                     "algo": {"hidden_dim": 32}},
        "finetune": {"env_steps": 400, "num_envs": 1, "eval_every": 100, "checkpoint_every": 50, "eval_episodes": 1,
                     "eval_workers": 1, "batch_size": 16, "log_every": 20, "video": False, **finetune},
        "by_algo": {"calql": {"pretrain": {"algo": {"cql_num_actions": 2, "backup_num_actions": 2}}}},
    }
    (folder / "protocol").mkdir(parents=True, exist_ok=True)
    (folder / "protocol" / "tiny.yaml").write_text(json.dumps(protocol))  # JSON is YAML
    return ["protocol=tiny", f"hydra.searchpath=[file://{folder}]"]


def _experiment(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "policy.experiment", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_run_killed_after_pretraining_continues_without_redoing_it(small_dataset, tmp_path):
    run_dir = tmp_path / "run"
    args = ["algo=calql", "seed=0", "threads=1", *_protocol(tmp_path / "configs", small_dataset), f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen([sys.executable, "-m", "policy.experiment", *args], cwd=ROOT, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not (run_dir / "finetune" / "checkpoint.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed during fine-tuning"
    os.killpg(process.pid, signal.SIGKILL)  # the experiment and its sim workers, during fine-tuning
    process.wait()
    killed_at = load_checkpoint(run_dir / "finetune" / "checkpoint.pt").env_steps
    assert 0 < killed_at < 400 and not (run_dir / "result.json").exists()
    assert list(json.loads((run_dir / "experiment.json").read_text())["stages"]) == ["pretrain"]
    pretrained = {name: (run_dir / "pretrain" / name).read_bytes() for name in ("checkpoint.pt", "train.csv", "eval.csv")}

    resumed = _experiment(*args)  # the same command
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "pretrain: finished already" in resumed.stdout and f"resumed from env step {killed_at}" in resumed.stdout
    assert {name: (run_dir / "pretrain" / name).read_bytes() for name in pretrained} == pretrained

    # the figures, by hand from both stages' evaluations
    result = json.loads((run_dir / "result.json").read_text())
    offline = [float(row["success_rate"]) for row in _rows(run_dir / "pretrain" / "eval.csv")]
    online = _rows(run_dir / "finetune" / "eval.csv")
    assert [int(row["step"]) for row in online] == [0, 100, 200, 300, 400]  # each evaluation once
    start, online = float(online[0]["success_rate"]), online[1:]  # the pretrained policy, before any online step
    assert start in (0.0, 1.0) and len(offline) == 2  # one evaluation episode per point
    # fine-tuning's default policy average is the evaluated policy; the trained weights are
    # scored on the same episodes, and both get their figures
    assert result["evaluated_policy"] == "average" and set(result["figures"]) == {"trained", "average"}
    for policy, column in (("average", "success_rate"), ("trained", "trained_success_rate")):
        figures, rates = result["figures"][policy], [float(row[column]) for row in online]
        assert figures["pretrained_success"] == start and figures["final_success"] == rates[-1]
        assert figures["unlearning_dip"] == pytest.approx(rates[0] - start)  # only env step 100 is in the first quarter
        assert figures["lowest_dip"] == pytest.approx(min(rates) - start)
        assert figures["cumulative_regret"] == pytest.approx(sum(1 - rate for rate in rates) / 4)
        assert figures["steps_to_stay_90pct_final"] in (0, 100, 200, 300, 400)
    assert result["figures"]["average"]["cumulative_regret"] == pytest.approx(float(online[-1]["cumulative_regret"]))
    assert result["algo"] == "calql" and result["protocol"] == "tiny" and result["pretrain_updates"] == 4
    assert result["control"] == "none"
    assert result["obs_keys"] == ["robot0_eef_pos", "robot0_gripper_qpos", "object"]
    assert result["finetune"]["utd"] == 1.0 and result["finetune"]["sampling"] == "uniform"  # the defaults
    # the CPU preset averages the pretraining policy too (configs/preset_algo/cpu_calql.yaml)
    assert result["deviations"]["policy_average_tau"] == {"reference": 0.0, "pretrain": 0.001, "finetune": 0.001}
    assert result["deviations"]["hidden_dim"] == {"reference": 256, "pretrain": 32, "finetune": 32}
    assert all(seconds > 0 for seconds in result["wall_seconds"].values()) and result["commit"]
    assert result["commands"]["pretrain"].startswith("python -m policy.pretrain algo=calql seed=0 eval_seed=100000")

    again = _experiment(*args)
    assert again.returncode == 0 and "has finished already" in again.stdout


def test_a_directory_holding_another_run_is_refused(tmp_path):
    definition = {"algo": {"name": "calql"}, "seed": 0, "protocol": {"name": "lowdim", "finetune": {"env_steps": 6000}}}
    state = open_run_dir(tmp_path, definition, resume=False, overwrite=False)
    (tmp_path / "experiment.json").write_text(json.dumps(state))
    assert open_run_dir(tmp_path, definition, resume=True, overwrite=False) == state  # this run: it continues
    other = {**definition, "seed": 1, "protocol": {"name": "lowdim", "finetune": {"env_steps": 200}}}
    with pytest.raises(ValueError, match=r"protocol.finetune.env_steps, seed differ from this command's .*overwrite=true"):
        open_run_dir(tmp_path, other, resume=False, overwrite=False)
    (tmp_path / "pretrain").mkdir()
    assert open_run_dir(tmp_path, other, resume=False, overwrite=True) == {"definition": other, "stages": {}}
    assert not (tmp_path / "pretrain").exists() and not (tmp_path / "experiment.json").exists()
    with pytest.raises(FileNotFoundError, match="holds no experiment to continue"):
        open_run_dir(tmp_path / "empty", definition, resume=True, overwrite=False)
    with pytest.raises(ValueError, match="contradict"):
        open_run_dir(tmp_path, definition, resume=True, overwrite=True)


def test_a_run_recorded_before_an_algorithm_field_existed_continues(tmp_path):
    from dataclasses import asdict

    from policy.algorithms import with_defaults
    from policy.calql import CalQLConfig

    older = asdict(CalQLConfig())
    del older["policy_average_tau"]  # a field added after the run started
    assert with_defaults(older) == asdict(CalQLConfig())
    definition = {"algo": asdict(CalQLConfig()), "seed": 0, "protocol": {"name": "lowdim"}}
    (tmp_path / "experiment.json").write_text(json.dumps({"definition": {**definition, "algo": older}, "stages": {}}))
    assert open_run_dir(tmp_path, definition, resume=True, overwrite=False)["stages"] == {}
    with pytest.raises(ValueError, match="algo.cql_alpha differ"):
        open_run_dir(tmp_path, {**definition, "algo": asdict(CalQLConfig(cql_alpha=1.0))}, resume=True, overwrite=False)


def test_unknown_algorithm_or_protocol_is_one_line_before_hydra(tmp_path):
    algorithm = _experiment("-m", "algo=calql,nope", "seed=0,1", f"hydra.sweep.dir={tmp_path}")
    assert algorithm.returncode == 2 and algorithm.stderr.strip().startswith("error: unknown algorithm 'nope'; registered:")
    protocol = _experiment("protocol=nope", f"hydra.run.dir={tmp_path}")
    assert protocol.returncode == 2
    assert protocol.stderr.strip() == "error: unknown protocol 'nope'; available: image_cpu, image_state_critic, lowdim, paper"
    assert not any(tmp_path.iterdir())


def test_a_sweep_of_two_runs_through_submitit_local(small_dataset, tmp_path):
    sweep = tmp_path / "sweep"
    protocol = _protocol(tmp_path / "configs", small_dataset, env_steps=90, eval_every=90, checkpoint_every=90)
    result = _experiment("-m", "algo=iql,td3bc", *protocol, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                         f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    for algo in ("iql", "td3bc"):
        outcome = json.loads((sweep / f"{algo}_s0" / "result.json").read_text())
        finetuned = _rows(sweep / f"{algo}_s0" / "finetune" / "eval.csv")
        assert outcome["algo"] == algo and outcome["figures"]["trained"]["final_success"] == float(finetuned[-1]["trained_success_rate"])
        assert " threads=1 " in outcome["commands"]["pretrain"]  # the local executor runs both jobs at once

    report = subprocess.run([sys.executable, "-m", "policy.report", str(sweep), f"out={tmp_path / 'report'}"], cwd=ROOT,
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    rows = [(row["algo"], row["policy"]) for row in _rows(tmp_path / "report" / "summary.csv")]
    assert rows == [("iql", "trained"), ("iql", "average"), ("td3bc", "trained"), ("td3bc", "average")]
    assert "0 missing" in report.stdout


def test_every_protocol_composes_both_stages_for_every_algorithm(tmp_path):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        for protocol in ("lowdim", "image_cpu", "paper", "image_state_critic"):
            for algo in sorted(REGISTRY):
                config = OmegaConf.to_object(compose("experiment", [f"protocol={protocol}", f"algo={algo}"]))
                stages = {stage: compose_stage(stage, stage_overrides(config, stage, tmp_path, 1), protocol) for stage in STAGES}
                assert stages["pretrain"].algo.name == algo and stages["finetune"].checkpoint == str(tmp_path / "pretrain" / "checkpoint.pt")
                # AWAC and IQL fine-tune on one buffer, as in their papers; the others mix
                reference = protocol != "image_cpu"  # image_cpu takes fine-tuning's defaults for images
                assert stages["finetune"].sampling == ("uniform" if algo in ("awac", "iql") or not reference else "mixed")
                assert stages["finetune"].algo == {"policy_average_tau": 0.0 if reference else 0.001}
                if protocol == "lowdim":  # reference values: no preset deviation
                    assert stages["pretrain"].algo == REGISTRY[algo].config()
                    assert stages["pretrain"].dataset.obs_keys == ["robot0_eef_pos", "robot0_gripper_qpos", "object"]
                if protocol == "image_cpu" and algo in ("calql", "cql"):  # the CPU preset's, named in the protocol
                    assert stages["pretrain"].algo.actor_bc_weight == 0.4 and stages["pretrain"].algo.bc_steps == 2000
                if protocol == "image_state_critic":  # the state critic where the actor can have its own encoder
                    pretrain = stages["pretrain"]
                    assert (pretrain.algo.gamma, pretrain.algo.tau, pretrain.dataset.reward.bias) == (0.95, 0.02, -5.0)
                    asymmetric = algo in ("calql", "cql", "sac")
                    assert pretrain.algo.privileged_keys == (["object"] if asymmetric else [])
                    assert pretrain.algo.critic_reads_images is not asymmetric


def test_the_offline_only_control_is_the_same_run_without_online_data(tmp_path):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        for control in ("none", "offline_only"):
            config = OmegaConf.to_object(compose("experiment", ["protocol=lowdim", "algo=calql", "seed=2", f"control={control}"]))
            overrides = {stage: stage_overrides(config, stage, tmp_path, 1) for stage in STAGES}
            stages = {stage: compose_stage(stage, overrides[stage], "lowdim") for stage in STAGES}
            # each seed has its own evaluation start states, the same for the control
            assert stages["pretrain"].eval_seed == stages["finetune"].eval_seed == 120000
            assert stages["finetune"].sampling == ("offline" if control == "offline_only" else "mixed")
            if control == "none":
                plain = overrides
        # everything else is the run's own: the same pretraining, the same fine-tuning budget
        assert overrides["pretrain"] == plain["pretrain"]
        assert [o for o in overrides["finetune"] if not o.startswith("sampling=")] == [o for o in plain["finetune"] if not o.startswith("sampling=")]
    assert run_name("calql", 2, "none") == "calql_s2" and run_name("calql", 2, "offline_only") == "calql_offline_only_s2"
    unknown = _experiment("control=nothing", f"hydra.run.dir={tmp_path / 'run'}")
    assert unknown.returncode == 2 and unknown.stderr.strip() == "error: unknown control 'nothing'; available: none, offline_only"
