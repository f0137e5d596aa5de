"""Importing torchvision where its compiled operators cannot load.

PyPI's torchvision wheels are CUDA builds. Next to a CPU-only torch their ``_C`` extension
cannot load (it links libtorch_cuda), and ``import torchvision`` then fails while registering
fake kernels for those missing operators (``operator torchvision::nms does not exist``). The
pure-Python parts the project uses (models, transforms) do not need the extension.

:func:`import_torchvision` loads the extension first; only if that fails does it skip the
fake-kernel registration module, so a healthy install is imported untouched.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
import types

import torch

_META_MODULE = "torchvision._meta_registrations"


def torchvision_extension_loads() -> bool:
    """Whether torchvision's compiled operator library loads next to this torch."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        raise ImportError("torchvision is not installed")
    libraries = glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so")) + glob.glob(
        os.path.join(os.path.dirname(spec.origin), "_C*.pyd")
    )
    if not libraries:
        return False
    try:
        torch.ops.load_library(libraries[0])
    except (OSError, RuntimeError):
        return False
    return True


def import_torchvision() -> types.ModuleType:
    """``import torchvision``, working around a compiled extension that cannot load."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    if not torchvision_extension_loads():
        sys.modules.setdefault(_META_MODULE, types.ModuleType(_META_MODULE))
    import torchvision

    return torchvision
