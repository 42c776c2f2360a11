"""Meta-World v3 under LeRobot's evaluation protocol, as an :class:`~emcot.eval.envs.base.Env`.

API:
- ``MetaWorldConfig(resolution=128, cameras=("corner2",), max_steps=500, fast_render=True)`` —
  ``cameras`` may be empty (nothing is rendered: the scripted expert needs no pixels) or name
  ``corner2`` and/or ``gripperPOV``.
- ``MetaWorldEnv(task, config=MetaWorldConfig())`` — ``reset(seed) -> EnvObservation``
  (``.images[camera]`` upright HxWx3 uint8, ``.state`` = ``obs[:4]`` float32 — hand xyz and
  gripper opening — and ``.raw``, the full 39-d observation with the goal), ``observe()``,
  ``step(action) -> StepOutcome`` (``info`` keeps Meta-World's ``success``, ``grasp_success``,
  ``near_object``, ``obj_to_target`` …), ``success``, ``close()``; ``instruction`` is the task's
  sentence from ``TASK_DESCRIPTIONS``.
- ``fast_render_settings(model)`` — shadows, anti-aliasing and reflections off (7–15× faster
  render + physics on 2 CPU cores with Mesa EGL; ``bench/metaworld_render.py``).
- ``require_metaworld()`` — imports the simulator or raises naming ``pip install 'emcot[sim]'``.

Protocol (LeRobot's, used by SmolVLA): the goal-observable task, ``corner2`` moved to
``[0.75, 0.075, 0.7]`` and every frame flipped on both axes, 4-d actions clipped to [−1, 1], episode
``i`` seeded with ``1000 + i`` (the seed goes to the env's own generator and ``seeded_rand_vec`` draws
the object and goal positions from it, so a seed fixes the first frame), a 500-step cap, and
success = the first step whose ``info["success"]`` is set. Nothing here imports metaworld or mujoco
until an env is made.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from emcot.eval.envs.base import EnvObservation, StepOutcome
from emcot.eval.envs.metaworld_tasks import CAMERAS, TASK_DESCRIPTIONS, check_task
from emcot.eval.envs.mujoco_gl import configure_gl
from emcot.io_utils import AT_LEAST_ONE, Range, check_fields

SIM_EXTRA = "pip install 'emcot[sim]'"
SIM_MODULES = ("metaworld", "mujoco")  # what the [sim] extra installs
STATE_DIM = 4
ACTION_DIM = 4
# Meta-World's renderer buffer is 480 px wide (gymnasium's MujocoEnv default); the protocol uses 64–224.
RESOLUTION = Range(ge=16, le=480)


def require_metaworld() -> ModuleType:
    """The ``metaworld`` module, its OpenGL backend chosen first; a clear error when it is missing."""
    missing = [name for name in SIM_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"Meta-World evaluation needs the simulator ({', '.join(missing)} missing): {SIM_EXTRA}"
        )
    configure_gl()  # before the first import of mujoco, which fixes the OpenGL platform
    try:
        return importlib.import_module("metaworld")
    except ImportError as err:
        raise ImportError(f"importing Meta-World failed ({err}); reinstall it: {SIM_EXTRA}") from err


@dataclass(frozen=True)
class MetaWorldConfig:
    """How a Meta-World env renders and how long an episode may run."""

    resolution: int = 128
    cameras: tuple[str, ...] = ("corner2",)
    max_steps: int = 500
    fast_render: bool = True

    def __post_init__(self) -> None:
        check_fields(self, "MetaWorldConfig", resolution=RESOLUTION, max_steps=AT_LEAST_ONE)
        unknown = [name for name in self.cameras if name not in CAMERAS]
        if unknown:
            raise ValueError(f"unknown Meta-World cameras {unknown}; known: {sorted(CAMERAS)}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"MetaWorldConfig.cameras has repeats: {self.cameras}")


def fast_render_settings(model: Any) -> None:
    """Turn off what costs most in software rendering and matters least to a 128 px policy frame:
    shadows, multisample anti-aliasing and reflections (set before the renderer is created)."""
    model.light_castshadow[:] = 0
    model.vis.quality.offsamples = 0
    model.mat_reflectance[:] = 0


class MetaWorldEnv:
    """One Meta-World v3 task (see the module docstring for the protocol)."""

    def __init__(self, task: str, config: MetaWorldConfig | None = None) -> None:
        self.task = check_task(task)
        self.config = config or MetaWorldConfig()
        self.instruction = TASK_DESCRIPTIONS[self.task]
        self.cameras = self.config.cameras
        self.max_steps = self.config.max_steps
        metaworld = require_metaworld()
        env_class = metaworld.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{self.task}-goal-observable"]
        # A seed here keeps the constructor's warm-up reset off numpy's global generator.
        self._env = env_class(seed=0)
        self._env._freeze_rand_vec = False
        self._env.seeded_rand_vec = True
        self._env.max_path_length = self.max_steps  # Meta-World refuses steps past its own cap
        self._renderer: Any = None
        self._raw: np.ndarray | None = None
        self._steps = 0
        self._success = False
        if self.cameras:
            self._renderer = self._make_renderer()

    def _make_renderer(self) -> Any:
        import mujoco

        model = self._env.model
        for spec in (CAMERAS[name] for name in self.cameras):
            if spec.position is not None:
                model.cam_pos[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, spec.name)] = spec.position
        if self.config.fast_render:
            fast_render_settings(model)
        size = self.config.resolution
        return mujoco.Renderer(model, height=size, width=size)

    @property
    def success(self) -> bool:
        """Whether any step since ``reset`` solved the task."""
        return self._success

    @property
    def steps(self) -> int:
        """Steps taken since ``reset``."""
        return self._steps

    def reset(self, seed: int) -> EnvObservation:
        """Start an episode; the same ``seed`` gives the same initial scene."""
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self._env.seed(int(seed))
        raw, _ = self._env.reset()
        # Meta-World moves its target sites (the goal marker) to the new goal only inside step():
        # until then the first frame showed the previous episode's goal, so what a policy saw first
        # depended on which episode its worker ran before.
        for site in self._env._target_site_config:
            self._env._set_pos_site(*site)
        self._raw = np.asarray(raw, np.float64)
        self._steps = 0
        self._success = False
        return self.observe()

    def observe(self) -> EnvObservation:
        """The current observation; cameras are rendered now."""
        if self._raw is None:
            raise ValueError("call reset(seed) before observe() or step(action)")
        images = {name: self._render(name) for name in self.cameras}
        return EnvObservation(
            images=images, state=self._raw[:STATE_DIM].astype(np.float32), raw=self._raw.copy()
        )

    def _render(self, camera: str) -> np.ndarray:
        self._renderer.update_scene(self._env.data, camera=camera)
        frame = self._renderer.render()
        return np.ascontiguousarray(np.flip(frame, (0, 1))) if CAMERAS[camera].flip else frame

    def image_projection(self, camera: str) -> np.ndarray:
        """The ``[3, 4]`` matrix P that maps a world point p (metres) to where ``camera``'s upright
        frame shows it: ``(x, y) = (P @ [p, 1])[:2] / (P @ [p, 1])[2]``, in [−1, 1] from the left and
        the top edge (the convention of the keypoints' spatial softmax)."""
        import mujoco

        if camera not in self.cameras:
            raise ValueError(f"camera {camera!r} is not rendered here; this env renders {list(self.cameras)}")
        model = self._env.model
        index = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        # Kinematics on a scratch copy: the env's own data holds the goal marker where reset put it.
        scratch = mujoco.MjData(model)
        mujoco.mj_kinematics(model, scratch)
        mujoco.mj_camlight(model, scratch)
        rotation = scratch.cam_xmat[index].reshape(3, 3)  # columns: the camera's x (right), y (up), z (back)
        world_to_camera = np.hstack([rotation.T, -rotation.T @ scratch.cam_xpos[index][:, None]])
        focal = 1.0 / math.tan(math.radians(model.cam_fovy[index]) / 2)
        # Image x grows to the right and y downward, the camera looks along −z; a flipped frame is
        # turned 180°, which negates both image coordinates.
        sign = -1.0 if CAMERAS[camera].flip else 1.0
        return np.diag([sign * focal, -sign * focal, -1.0]) @ world_to_camera

    def step(self, action: np.ndarray) -> StepOutcome:
        """Apply one 4-d action (clipped to [−1, 1]); the cap ends the episode with ``truncated``."""
        if self._raw is None:
            raise ValueError("call reset(seed) before step(action)")
        if self._steps >= self.max_steps:
            raise ValueError(f"the episode reached its {self.max_steps}-step cap; call reset(seed)")
        vector = np.asarray(action, np.float32).reshape(-1)
        if vector.shape != (ACTION_DIM,):
            raise ValueError(
                f"Meta-World actions are {ACTION_DIM}-d (dx, dy, dz, grip), got shape {np.shape(action)}"
            )
        if not np.isfinite(vector).all():
            raise ValueError(f"action contains NaN or infinite values: {vector.tolist()}")
        raw, reward, _, _, info = self._env.step(np.clip(vector, -1.0, 1.0))
        self._raw = np.asarray(raw, np.float64)
        self._steps += 1
        success = bool(info.get("success", 0.0))
        self._success = self._success or success
        return StepOutcome(
            observation=self.observe(),
            reward=float(reward) if math.isfinite(float(reward)) else 0.0,
            success=success,
            info=dict(info),
            truncated=self._steps >= self.max_steps,
        )

    def close(self) -> None:
        """Free the renderer and the simulator."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
