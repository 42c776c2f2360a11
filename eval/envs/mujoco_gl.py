"""Choosing MuJoCo's OpenGL backend before ``mujoco`` is imported.

MuJoCo reads ``MUJOCO_GL`` once, when it is first imported (and PyOpenGL fixes its platform at the
same moment), so a failed EGL context cannot be retried with OSMesa in the same process. Hence the
probe runs in a short subprocess, once per process tree: the choice is written to ``MUJOCO_GL``,
which spawned workers inherit.

API: ``configure_gl() -> str`` (the backend in use: ``"egl"``, ``"osmesa"``, or whatever the user set).
"""

from __future__ import annotations

import os
import subprocess
import sys

# Tried in order when the user has not set MUJOCO_GL: EGL renders headless on GPUs and on Mesa;
# OSMesa is the pure-software fallback.
BACKENDS = ("egl", "osmesa")

_PROBE = "import mujoco\ncontext = mujoco.GLContext(16, 16)\ncontext.make_current()\ncontext.free()\n"


def _works(backend: str) -> bool:
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    try:
        result = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def configure_gl() -> str:
    """Set ``MUJOCO_GL`` (only if unset, only before mujoco is imported) to the first backend that
    can make a context; returns the backend in use. A user's own setting is never overridden."""
    chosen = os.environ.get("MUJOCO_GL")
    if chosen:
        return chosen
    if "mujoco" in sys.modules:
        return "default"  # too late to choose: mujoco already picked its platform
    for backend in BACKENDS:
        if _works(backend):
            os.environ["MUJOCO_GL"] = backend
            return backend
    raise RuntimeError(
        "MuJoCo cannot create an OpenGL context with EGL or OSMesa; install Mesa "
        "(Debian: apt-get install libegl1 libosmesa6) or set MUJOCO_GL yourself"
    )
