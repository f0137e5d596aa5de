import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports MuJoCo

import pytest  # noqa: E402

import sim  # noqa: E402,F401


@pytest.fixture
def pickplace_env():
    env = sim.make_env("pickplace")
    yield env
    env.close()


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """A collector-made pickplace file of 6 episodes (3 workers' worth of data, 1 worker)."""
    from sim.collect import CollectConfig, collect

    path = tmp_path_factory.mktemp("dataset") / "pickplace_small.hdf5"
    collect(CollectConfig(episodes=6, workers=1, seed=11, out=str(path)))
    return path
