"""From an environment's cameras and state to a policy's inputs, declared and checked once.

A policy names its cameras (``policy.cameras``), takes images up to ``config.vision.max_side_px``
and a state and action of ``config.action.state_dim`` / ``action_dim``. An adapter says which
environment camera feeds which policy camera, the image side to resize to and which state vector to
pass; :func:`adapter_for_policy` refuses, with the fix in the message, a policy the environment
cannot feed (another robot's cameras without a camera map, other state or action sizes).

API:
- ``StateSource`` — ``robot`` (``EnvObservation.state``), ``raw`` (the full vector), ``none``.
- ``ObservationAdapter(camera_map=(("corner2", "head"),), image_size=None, state=StateSource.ROBOT)``
  — ``adapter(env_observation) -> emcot.Observation``; ``env_cameras`` lists what must be rendered.
- ``EXPERT_ADAPTER`` (raw state, no cameras) and ``BLIND_ADAPTER`` (nothing; random actions).
- ``parse_camera_map("corner2=head,gripperPOV=wrist") -> dict[str, str]``.
- ``adapter_for_policy(policy, *, env_cameras, resolution, state_dim, action_dim, camera_map=None,
  image_size=None)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from emcot.eval.envs.base import EnvObservation
from emcot.io_utils import check_fields
from emcot.types import Observation

if TYPE_CHECKING:
    from emcot.policy.policy import EmCoTPolicy


class StateSource(str, Enum):
    """Which vector of an :class:`EnvObservation` becomes the policy's state."""

    ROBOT = "robot"
    RAW = "raw"
    NONE = "none"

    def pick(self, observation: EnvObservation) -> np.ndarray | None:
        """The state this source names, or None."""
        return _STATE_PICKERS[self](observation)


_STATE_PICKERS = {
    StateSource.ROBOT: lambda observation: observation.state,
    StateSource.RAW: lambda observation: observation.raw,
    StateSource.NONE: lambda observation: None,
}


@dataclass(frozen=True)
class ObservationAdapter:
    """``camera_map``: (environment camera, policy camera) pairs; ``image_size``: the square side
    frames are resized to (None keeps the rendered size); ``state``: which vector to pass."""

    camera_map: tuple[tuple[str, str], ...] = ()
    image_size: int | None = None
    state: StateSource = StateSource.ROBOT

    def __post_init__(self) -> None:
        check_fields(self, "ObservationAdapter")
        targets = [target for _, target in self.camera_map]
        if len(set(targets)) != len(targets):
            raise ValueError(f"two environment cameras feed the same policy camera: {dict(self.camera_map)}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be ≥ 1, got {self.image_size}")

    @property
    def env_cameras(self) -> tuple[str, ...]:
        """The environment cameras that must be rendered."""
        return tuple(source for source, _ in self.camera_map)

    def __call__(self, observation: EnvObservation) -> Observation:
        """The policy's observation for one environment observation."""
        images = {target: self._resize(observation.images[source]) for source, target in self.camera_map}
        state = self.state.pick(observation)
        return Observation(images=images, state=None if state is None else state.copy())

    def _resize(self, frame: np.ndarray) -> np.ndarray:
        size = self.image_size
        if size is None or frame.shape[:2] == (size, size):
            return frame
        return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BILINEAR))


EXPERT_ADAPTER = ObservationAdapter(state=StateSource.RAW)
BLIND_ADAPTER = ObservationAdapter(state=StateSource.NONE)


def parse_camera_map(spec: str) -> dict[str, str]:
    """``"corner2=head,gripperPOV=wrist"`` → ``{"corner2": "head", "gripperPOV": "wrist"}``."""
    mapping: dict[str, str] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        source, sep, target = (piece.strip() for piece in item.partition("="))
        if not (sep and source and target):
            raise ValueError(f"camera map entries are ENV_CAMERA=POLICY_CAMERA, got '{item}' in '{spec}'")
        if source in mapping:
            raise ValueError(f"environment camera '{source}' is mapped twice in '{spec}'")
        mapping[source] = target
    if not mapping:
        raise ValueError(f"empty camera map '{spec}'; give ENV_CAMERA=POLICY_CAMERA pairs, e.g. corner2=head")
    return mapping


def _camera_pairs(
    policy_cameras: Sequence[str], env_cameras: Sequence[str], camera_map: Mapping[str, str] | None
) -> tuple[tuple[str, str], ...]:
    """(environment, policy) camera pairs feeding every policy camera, or a ValueError with the fix."""
    if camera_map is None:
        camera_map = {name: name for name in policy_cameras if name in env_cameras}
    unknown = sorted(set(camera_map) - set(env_cameras))
    if unknown:
        raise ValueError(
            f"camera map names environment cameras {unknown}; this environment renders {list(env_cameras)}"
        )
    extra = sorted(set(camera_map.values()) - set(policy_cameras))
    if extra:
        raise ValueError(
            f"camera map feeds policy cameras {extra} the policy does not read; it reads {list(policy_cameras)}"
        )
    fed = {target: source for source, target in camera_map.items()}
    missing = [name for name in policy_cameras if name not in fed]
    if missing:
        suggestion = ",".join(f"{env}={pol}" for env, pol in zip(env_cameras, missing))
        raise ValueError(
            f"the policy reads cameras {list(policy_cameras)} but nothing feeds {missing}; the environment "
            f"renders {list(env_cameras)}. Say which camera feeds which, e.g. --camera-map {suggestion}"
        )
    return tuple((fed[name], name) for name in policy_cameras)


def _check_dims(policy: EmCoTPolicy, *, state_dim: int, action_dim: int) -> StateSource:
    action = policy.config.action
    if action.action_dim != action_dim:
        raise ValueError(
            f"the policy outputs {action.action_dim}-d actions but the environment takes {action_dim}-d "
            "actions; use a policy trained (or fine-tuned) for this robot's action space"
        )
    if action.state_dim not in (0, state_dim):
        raise ValueError(
            f"the policy reads a {action.state_dim}-d state but the environment gives {state_dim}-d "
            "(hand xyz and gripper for Meta-World); use a policy trained for this robot's state"
        )
    return StateSource.ROBOT if action.state_dim else StateSource.NONE


def adapter_for_policy(
    policy: EmCoTPolicy,
    *,
    env_cameras: Sequence[str],
    resolution: int,
    state_dim: int,
    action_dim: int,
    camera_map: Mapping[str, str] | None = None,
    image_size: int | None = None,
) -> ObservationAdapter:
    """The checked adapter feeding ``policy`` from an environment rendering ``env_cameras`` at
    ``resolution`` px with the given state/action sizes. ``image_size`` (default: the rendered side
    capped at the policy's largest) must lie within the policy's side range."""
    pairs = _camera_pairs(policy.cameras, env_cameras, camera_map)
    state = _check_dims(policy, state_dim=state_dim, action_dim=action_dim)
    vision = policy.config.vision
    low, high = (vision.min_side_px, vision.max_side_px) if vision is not None else (1, resolution)
    size = min(resolution, high) if image_size is None else image_size
    if not low <= size <= high:
        raise ValueError(
            f"images of {size} px are outside the policy's range [{low}, {high}] px; "
            "choose another resolution or image size"
        )
    return ObservationAdapter(camera_map=pairs, image_size=None if size == resolution else size, state=state)
