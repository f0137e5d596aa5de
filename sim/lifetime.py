"""Envs holding GL contexts are closed before the interpreter exits.

MuJoCo's EGL backend terminates its display in an ``atexit`` hook registered when the first
context is made; a renderer still open then is freed later by the garbage collector, against
a display that is gone, and prints ``EGLError`` tracebacks. Every env that has made a context
is closed by a hook registered after that first context, so it runs before the display's.
"""

from __future__ import annotations

import atexit
import weakref
from typing import Protocol


class Closable(Protocol):
    def close(self) -> None: ...


_open: weakref.WeakSet = weakref.WeakSet()
_hooked = False


def close_at_exit(env: Closable) -> None:
    """Close ``env`` at interpreter exit if it is still open; call it after ``env`` made its
    first GL context."""
    global _hooked
    _open.add(env)
    if not _hooked:
        atexit.register(_close_open_envs)
        _hooked = True


def _close_open_envs() -> None:
    for env in list(_open):
        env.close()
