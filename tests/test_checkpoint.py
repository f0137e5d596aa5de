"""One checkpoint schema for both stages: typed fields checked on load, format 2 converted."""

import io

import pytest
import torch

from conftest import tiny_checkpoint
from policy.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint


def _write_payload(path, payload):
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())


def _format_2_common():
    return {"format_version": 2, "algo": "calql", "config": {"algo": {"name": "calql"}, "encoder": {}},
            "obs_spec": {"robot0_eef_pos": {"shape": [3], "dtype": "float32"}}, "action_dim": 4,
            "env": {"name": "pickplace", "kwargs": {}}, "dataset": "data/pickplace.hdf5",
            "agent": {"model": {}, "optimizers": {}, "num_updates": 7}, "wall_seconds": 12.5, "rng": {}}


def test_round_trip_keeps_every_field(tmp_path):
    written = tiny_checkpoint(5, torch.arange(3.0))
    save_checkpoint(tmp_path / "checkpoint.pt", written)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["format_version"] == FORMAT_VERSION == 3
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")
    assert loaded.updates == 5 and loaded.env_steps == 0 and loaded.stage == "pretrain"
    assert torch.equal(loaded.agent["model"]["weights"], torch.arange(3.0))


def test_format_2_pretraining_checkpoint_is_converted(tmp_path):
    _write_payload(tmp_path / "old.pt", {**_format_2_common(), "step": 400, "best_success": 0.6,
                                         "last_eval": {"success_rate": 0.5}, "eval": {"success_rate": 0.6}})
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert (loaded.stage, loaded.updates, loaded.env_steps) == ("pretrain", 400, 0)
    assert loaded.stage_state == {"best_success": 0.6, "last_eval": {"success_rate": 0.5}}
    assert loaded.eval == {"success_rate": 0.6} and loaded.dataset == "data/pickplace.hdf5" and loaded.wall_seconds == 12.5


def test_format_2_finetuning_checkpoint_is_converted(tmp_path):
    counters = {"env_steps": 600, "updates": 590, "episodes": 14, "faults": 0, "updates_due": 0.5}
    _write_payload(tmp_path / "old.pt", {**_format_2_common(), "step": 590, "counters": counters,
                                         "online_buffer": {"size": 600}, "eval_history": [[0, 0.5]],
                                         "metric_window": {}, "finetune_config": {"utd": 1.0}})
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert (loaded.stage, loaded.updates, loaded.env_steps) == ("finetune", 590, 600)
    assert loaded.stage_state["counters"] == {"episodes": 14, "faults": 0, "updates_due": 0.5}
    assert loaded.stage_state["online_buffer"] == {"size": 600} and loaded.stage_state["eval_history"] == [[0, 0.5]]


@pytest.mark.parametrize("field, value, message", [
    ("updates", "400", "damaged checkpoint: updates is '400'"),
    ("env_steps", -1, "damaged checkpoint: env_steps is -1"),
    ("stage", "train", "damaged checkpoint: stage 'train' is not one of pretrain, finetune"),
    ("obs_spec", {"robot0_eef_pos": [3]}, "damaged checkpoint: obs_spec is not a mapping"),
    ("agent", {"model": {}}, "damaged checkpoint: agent lacks its weights, optimiser states or update count"),
])
def test_a_field_of_the_wrong_type_is_one_line(tmp_path, field, value, message):
    payload = tiny_checkpoint(1, torch.zeros(1)).payload()
    payload[field] = value
    _write_payload(tmp_path / "bad.pt", payload)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("payload, message", [
    ({"format_version": 1, "step": 3}, "checkpoint format 1, this version reads 3 \\(and 2\\); train it again"),
    ({"format_version": 3, "algo": "calql"}, "not a checkpoint of this project \\(missing \\['stage', "),
    ({"weights": torch.zeros(2)}, "not a checkpoint of this project \\(no format_version\\)"),
])
def test_other_formats_and_files_are_refused_with_the_fix(tmp_path, payload, message):
    _write_payload(tmp_path / "other.pt", payload)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(tmp_path / "other.pt")
