"""Which device renders: the renderer is named, GPU selection only acts on CUDA, failures are one line."""

import os

import pytest
import torch

from sim import rendering


def test_renderer_is_named_and_cpu_training_leaves_the_egl_choice_alone(monkeypatch):
    monkeypatch.setenv("MUJOCO_EGL_DEVICE_ID", "unset after the test")  # so that the test's choice is undone
    monkeypatch.delenv("MUJOCO_EGL_DEVICE_ID")
    name = rendering.prepare_rendering(torch.device("cpu"))
    assert name == rendering.renderer_name()
    assert "MUJOCO_EGL_DEVICE_ID" not in os.environ


def test_no_egl_device_is_a_cuda_device_without_nvidia_egl(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    assert rendering.egl_device_of_cuda(0) is None  # not rendering through EGL: nothing to choose
    monkeypatch.setenv("MUJOCO_GL", "egl")
    if not torch.cuda.is_available():
        assert rendering.egl_device_of_cuda(0) is None  # Mesa's devices are no CUDA devices


def test_a_backend_that_cannot_render_is_one_clear_error(monkeypatch):
    def broken() -> str:
        raise RuntimeError("Cannot initialize a EGL device display")

    monkeypatch.setattr(rendering, "renderer_name", broken)
    with pytest.raises(ValueError, match=r"offscreen rendering does not work here \(MUJOCO_GL=.*MUJOCO_GL=osmesa"):
        rendering.prepare_rendering(torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_renders_on_its_gpu(monkeypatch):
    monkeypatch.setenv("MUJOCO_EGL_DEVICE_ID", "unset after the test")  # so that the test's choice is undone
    monkeypatch.delenv("MUJOCO_EGL_DEVICE_ID")
    name = rendering.prepare_rendering(torch.device("cuda", 0))
    assert os.environ.get("MUJOCO_EGL_DEVICE_ID") == str(rendering.egl_device_of_cuda(0))
    assert not any(software in name.lower() for software in rendering.SOFTWARE_RENDERERS)
