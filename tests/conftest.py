import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports MuJoCo

import pytest  # noqa: E402

import sim  # noqa: E402,F401


@pytest.fixture
def pickplace_env():
    env = sim.make_env("pickplace")
    yield env
    env.close()
