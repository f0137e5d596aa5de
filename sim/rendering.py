"""Which device renders the cameras.

MuJoCo's EGL backend renders on the EGL device that ``MUJOCO_EGL_DEVICE_ID`` names (an index in
EGL's device list), or else on the first device that initialises: on a GPU machine that may be
a GPU other than the one training, or Mesa's software rasteriser, which is tens of times
slower. :func:`prepare_rendering` points this process and the sim workers it spawns (they
inherit the environment) at the training GPU, and names the renderer so that the logs say
where frames come from.
"""

from __future__ import annotations

import ctypes
import logging
import os

import torch

log = logging.getLogger(__name__)

EGL_CUDA_DEVICE_NV = 0x323A  # EGL_NV_device_cuda: the CUDA device an EGL device is
SOFTWARE_RENDERERS = ("llvmpipe", "softpipe", "swrast")


def egl_device_of_cuda(cuda_index: int) -> int | None:
    """Index in EGL's device list of the EGL device that is CUDA device ``cuda_index``; None
    where no EGL device is a CUDA device (no NVIDIA driver, or not rendering through EGL)."""
    if os.environ.get("MUJOCO_GL", "").lower() != "egl":
        return None
    from mujoco.egl import egl_ext

    query_prototype = ctypes.CFUNCTYPE(ctypes.c_uint, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_ssize_t))
    address = egl_ext.EGL.eglGetProcAddress("eglQueryDeviceAttribEXT")
    if not address:
        return None
    query_attribute = query_prototype(ctypes.cast(address, ctypes.c_void_p).value)
    for index, device in enumerate(egl_ext.eglQueryDevicesEXT()):
        value = ctypes.c_ssize_t(-1)
        handle = ctypes.cast(device, ctypes.c_void_p).value
        found = query_attribute(handle, EGL_CUDA_DEVICE_NV, ctypes.byref(value))
        egl_ext.EGL.eglGetError()  # a device that is no CUDA device leaves an error flag: clear it
        if found and value.value == cuda_index:
            return index
    return None


def renderer_name() -> str:
    """OpenGL's name for the renderer that MuJoCo's offscreen contexts get in this process."""
    import mujoco
    from OpenGL import GL

    context = mujoco.GLContext(16, 16)
    context.make_current()
    try:
        name = GL.glGetString(GL.GL_RENDERER)
    finally:
        context.free()
    if not name:  # e.g. GLFW without a display: no context was made, and rendering would fail
        raise RuntimeError("no OpenGL context could be created")
    return name.decode() if isinstance(name, bytes) else str(name)


def prepare_rendering(device: torch.device) -> str:
    """Render on the training GPU where EGL can (unless ``MUJOCO_EGL_DEVICE_ID`` is already set),
    and return the renderer's name; a ValueError where nothing renders. Call before any sim
    worker starts: they inherit the choice."""
    if device.type == "cuda" and "MUJOCO_EGL_DEVICE_ID" not in os.environ:
        cuda_index = device.index if device.index is not None else torch.cuda.current_device()
        egl_index = egl_device_of_cuda(cuda_index)
        if egl_index is not None:
            os.environ["MUJOCO_EGL_DEVICE_ID"] = str(egl_index)
    try:
        name = renderer_name()
    except Exception as error:  # whatever the GL backend raises: said now, not at the first evaluation
        raise ValueError(f"offscreen rendering does not work here (MUJOCO_GL={os.environ.get('MUJOCO_GL')}): {error}; "
                         f"install EGL (libegl1, as scripts/setup.sh does) or set MUJOCO_GL=osmesa") from None
    if device.type == "cuda" and any(software in name.lower() for software in SOFTWARE_RENDERERS):
        log.warning("the sim renders in software (%s) although training runs on %s: install the NVIDIA driver's EGL "
                    "library (libEGL_nvidia) or set MUJOCO_EGL_DEVICE_ID to the GPU's EGL device", name, device)
    else:
        log.info("the sim renders with %s", name)
    return name
