"""Choose MuJoCo's OpenGL backend before any test imports the simulator (which fixes it for the process)."""

from __future__ import annotations

import importlib.util

from emcot.eval.envs.mujoco_gl import configure_gl

if importlib.util.find_spec("mujoco") is not None:
    configure_gl()
