import csv

from policy.logger import MetricLogger


def _read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_metrics_that_appear_later_get_their_own_column(tmp_path):
    logger = MetricLogger(tmp_path)
    logger.log("train", 1, {"loss": 2.0, "bc_log_prob": -3.0})
    logger.log("train", 2, {"loss": 1.5, "q_policy": -40.0})
    logger.log("train", 3, {"loss": 1.0, "q_policy": -41.0})
    logger.close()
    assert _read(tmp_path / "train.csv") == [
        ["step", "loss", "bc_log_prob", "q_policy"],
        ["1", "2.0", "-3.0", ""],
        ["2", "1.5", "", "-40.0"],
        ["3", "1.0", "", "-41.0"],
    ]
    resumed = MetricLogger(tmp_path)  # a resumed run appends under the widened header
    resumed.log("train", 4, {"loss": 0.5, "q_policy": -42.0})
    resumed.close()
    assert _read(tmp_path / "train.csv")[-1] == ["4", "0.5", "", "-42.0"]
    assert not list(tmp_path.glob("*.tmp"))
