"""Action/state codec: normalisation statistics, normalisers, padding and chunk windows.

Everything here is a pure function of arrays; numpy and torch inputs are both accepted and the
output keeps the input's type, device and (floating) dtype.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
import torch

from emcot.io_utils import check_fields, dataclass_from_dict, read_json

NormMode = Literal["mean_std", "quantile", "none"]
NORM_MODES: tuple[str, ...] = ("mean_std", "quantile", "none")
# Scales below this count as zero: constant dimensions are only centred, never divided by ~0.
EPS = 1e-6

Array = np.ndarray | torch.Tensor


@dataclass
class ActionSpaceConfig:
    """Shape of a robot's action space as the action expert sees it.

    ``state_dim`` 0 means the policy takes no proprioceptive input (as in HALO); ``horizon`` is
    the action chunk length; ``norm_mode`` picks the :class:`Normalizer` mode.
    """

    action_dim: int = 14
    state_dim: int = 0
    horizon: int = 16
    norm_mode: str = "quantile"

    def __post_init__(self) -> None:
        check_fields(self)
        if self.action_dim < 1:
            raise ValueError(f"ActionSpaceConfig.action_dim must be >= 1, got {self.action_dim}.")
        if self.state_dim < 0:
            raise ValueError(
                f"ActionSpaceConfig.state_dim must be >= 0 (0 = no state), got {self.state_dim}."
            )
        if self.horizon < 1:
            raise ValueError(f"ActionSpaceConfig.horizon must be >= 1, got {self.horizon}.")
        if self.norm_mode not in NORM_MODES:
            raise ValueError(
                f"ActionSpaceConfig.norm_mode must be one of {NORM_MODES}, got {self.norm_mode!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActionSpaceConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        return dataclass_from_dict(cls, data, label="Unknown ActionSpaceConfig keys")


_STAT_FIELDS = ("mean", "std", "q01", "q99", "min", "max")


@dataclass
class NormStats:
    """Per-dimension statistics of a [N, D] data set, stored as float32 arrays of shape [D]."""

    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    min: np.ndarray
    max: np.ndarray
    count: int

    def __post_init__(self) -> None:
        for name in _STAT_FIELDS:
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float32).reshape(-1))
        dims = {name: getattr(self, name).shape[0] for name in _STAT_FIELDS}
        if len(set(dims.values())) != 1:
            raise ValueError(
                f"NormStats arrays must share one length, got {dims}; recompute with NormStats.compute."
            )
        if self.dim == 0:
            raise ValueError("NormStats needs at least one dimension.")
        for name in _STAT_FIELDS:
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"NormStats.{name} has non-finite values; recompute from clean data.")
        self.count = int(self.count)

    @property
    def dim(self) -> int:
        """Number of dimensions D."""
        return int(self.mean.shape[0])

    @classmethod
    def compute(cls, x: Array) -> NormStats:
        """Statistics of ``x`` ([N, D], or [..., D] which is flattened) with 1 %/99 % quantiles."""
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if arr.ndim < 2 or arr.shape[0] == 0 or arr.shape[-1] == 0:
            raise ValueError(
                f"NormStats.compute needs an [N, D] array with N, D >= 1, got shape {arr.shape}."
            )
        arr = arr.reshape(-1, arr.shape[-1]).astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError("NormStats.compute got NaN/inf values; drop or fix those samples first.")
        q01, q99 = np.quantile(arr, [0.01, 0.99], axis=0)
        return cls(
            mean=arr.mean(axis=0),
            std=arr.std(axis=0),
            q01=q01,
            q99=q99,
            min=arr.min(axis=0),
            max=arr.max(axis=0),
            count=arr.shape[0],
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (lists of floats)."""
        out: dict[str, Any] = {name: getattr(self, name).tolist() for name in _STAT_FIELDS}
        out["count"] = self.count
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormStats:
        """Inverse of :meth:`to_dict`."""
        missing = [k for k in (*_STAT_FIELDS, "count") if k not in data]
        if missing:
            raise ValueError(f"NormStats dict lacks {missing}; recompute the stats with NormStats.compute.")
        return cls(**{k: data[k] for k in (*_STAT_FIELDS, "count")})


def _as_like(values: np.ndarray, x: Array) -> Array:
    """``values`` as an array/tensor that broadcasts against ``x`` with ``x``'s dtype and device."""
    if isinstance(x, torch.Tensor):
        return torch.as_tensor(values, dtype=x.dtype, device=x.device)
    return values.astype(x.dtype, copy=False)


def _float_input(x: Array) -> Array:
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.float()
    arr = np.asarray(x)
    return arr if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float32)


def _clip(x: Array, lo: float, hi: float) -> Array:
    return x.clamp(lo, hi) if isinstance(x, torch.Tensor) else np.clip(x, lo, hi)


class Normalizer:
    """Maps robot units to model units and back.

    - ``mean_std``: ``(x - mean) / std`` (π0).
    - ``quantile``: q01..q99 → [-1, 1] (π0.5, HALO's OXE setting). With ``clip`` (default) the
      normalised values are clipped to [-1, 1] on the way in, so the 2 % outliers cannot produce
      targets the model never sees elsewhere, and model outputs are clipped to [-1, 1] on the way
      out, so a policy never commands beyond the data's 1 %/99 % envelope. openpi itself does not
      clip; pass ``clip=False`` for its exact behaviour. Inside [q01, q99] the maps are inverses.
    - ``none``: identity (stats may be None).

    A scale (std, or half the quantile range) below ``EPS`` is replaced by 1 so constant
    dimensions are centred rather than blown up to inf/NaN.
    """

    def __init__(self, mode: str, stats: NormStats | None, *, clip: bool = True) -> None:
        if mode not in NORM_MODES:
            raise ValueError(f"Normalizer mode must be one of {NORM_MODES}, got {mode!r}.")
        self.mode = mode
        self.stats = stats
        self.clip = clip
        # The (center, scale) of the affine map; None in ``none`` mode.
        self._affine: tuple[np.ndarray, np.ndarray] | None = None
        if mode == "none":
            return
        if stats is None:
            raise ValueError(
                f"Normalizer mode {mode!r} needs NormStats; compute them with NormStats.compute(data)."
            )
        if mode == "mean_std":
            center, scale = stats.mean.astype(np.float64), stats.std.astype(np.float64)
        else:
            q01, q99 = stats.q01.astype(np.float64), stats.q99.astype(np.float64)
            center, scale = (q99 + q01) / 2.0, (q99 - q01) / 2.0
        self._affine = (center, np.where(scale < EPS, 1.0, scale))

    @property
    def dim(self) -> int | None:
        """Dimension the statistics describe (None in ``none`` mode without stats)."""
        return None if self.stats is None else self.stats.dim

    def _check(self, x: Array) -> Array:
        x = _float_input(x)
        if self.stats is not None and (x.ndim == 0 or x.shape[-1] != self.stats.dim):
            got = "a scalar" if x.ndim == 0 else f"last dimension {x.shape[-1]}"
            raise ValueError(
                f"Normalizer stats have dimension {self.stats.dim} but the input has {got}; "
                "pad/unpad the data or recompute the stats for this robot."
            )
        return x

    def normalize(self, x: Array) -> Array:
        """Robot units → model units (numpy or torch in, same type out)."""
        x = self._check(x)
        if self._affine is None:  # mode "none"
            return x
        center, scale = self._affine
        y = (x - _as_like(center, x)) / _as_like(scale, x)
        if self.mode == "quantile" and self.clip:
            y = _clip(y, -1.0, 1.0)
        return y

    def unnormalize(self, y: Array) -> Array:
        """Model units → robot units (numpy or torch in, same type out)."""
        y = self._check(y)
        if self._affine is None:  # mode "none"
            return y
        center, scale = self._affine
        if self.mode == "quantile" and self.clip:
            y = _clip(y, -1.0, 1.0)
        return y * _as_like(scale, y) + _as_like(center, y)


_ADD_NEEDS_STATS = "RobotNormStats.add needs NormStats for action and NormStats or None for state."


class _RobotEntry(TypedDict):
    """One robot's statistics as :class:`RobotNormStats` stores them: the action's always present."""

    state: NormStats | None
    action: NormStats


class RobotNormStats:
    """Per-robot statistics ``{robot: {"state": NormStats | None, "action": NormStats}}`` with JSON I/O."""

    FORMAT = "emcot-norm-stats"
    VERSION = 1

    def __init__(self, stats: dict[str, dict[str, NormStats | None]] | None = None) -> None:
        self._stats: dict[str, _RobotEntry] = {}
        for robot, entry in (stats or {}).items():
            unknown = set(entry) - {"state", "action"}
            if unknown or "action" not in entry:
                raise ValueError(
                    f"Stats for robot {robot!r} must be {{'action': NormStats, 'state': NormStats | None}}, "
                    f"got keys {sorted(entry)}."
                )
            action = entry["action"]
            if action is None:
                raise ValueError(_ADD_NEEDS_STATS)
            self.add(robot, action=action, state=entry.get("state"))

    def add(self, robot: str, action: NormStats, state: NormStats | None = None) -> None:
        """Register (or replace) the statistics of ``robot``."""
        if not isinstance(robot, str) or not robot:
            raise ValueError(f"Robot name must be a non-empty str, got {robot!r}.")
        if not isinstance(action, NormStats) or not (state is None or isinstance(state, NormStats)):
            raise ValueError(_ADD_NEEDS_STATS)
        self._stats[robot] = _RobotEntry(state=state, action=action)

    @property
    def robots(self) -> list[str]:
        """Names of the robots with statistics, sorted."""
        return sorted(self._stats)

    def __contains__(self, robot: object) -> bool:
        return robot in self._stats

    def for_robot(self, name: str) -> dict[str, NormStats | None]:
        """``{"state": ..., "action": ...}`` of robot ``name``; a clear error if it is unknown."""
        if name not in self._stats:
            raise ValueError(
                f"No normalisation statistics for robot {name!r}; available robots: {self.robots}. "
                "Compute them from the robot's dataset with NormStats.compute(actions) (and states), "
                "register them with RobotNormStats.add(name, action=..., state=...) and save()."
            )
        entry = self._stats[name]
        return {"state": entry["state"], "action": entry["action"]}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        robots = {
            robot: {
                "action": entry["action"].to_dict(),
                "state": None if entry["state"] is None else entry["state"].to_dict(),
            }
            for robot, entry in sorted(self._stats.items())
        }
        return {"format": self.FORMAT, "version": self.VERSION, "robots": robots}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RobotNormStats:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT or "robots" not in data:
            raise ValueError(f"Not an {cls.FORMAT} file; write one with RobotNormStats.save().")
        if data.get("version") != cls.VERSION:
            raise ValueError(
                f"Unsupported norm-stats version {data.get('version')!r}; expected {cls.VERSION}."
            )
        out = cls()
        for robot, entry in data["robots"].items():
            state = entry.get("state")
            out.add(
                robot,
                action=NormStats.from_dict(entry["action"]),
                state=None if state is None else NormStats.from_dict(state),
            )
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically (temporary file + rename), so a crash never leaves half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.to_dict(), handle, indent=2)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> RobotNormStats:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(
                f"Norm-stats file {path} not found; compute stats and RobotNormStats.save() them."
            )
        return cls.from_dict(read_json(path, "norm-stats file"))


def pad_to_dim(x: Array, dim: int) -> Array:
    """Zero-pad the last dimension of ``x`` up to ``dim`` (a model's fixed action/state width)."""
    size = x.shape[-1]
    if dim < size:
        raise ValueError(f"Cannot pad last dimension {size} down to {dim}; use unpad(x, {dim}) to cut it.")
    if dim == size:
        return x
    if isinstance(x, torch.Tensor):
        return torch.nn.functional.pad(x, (0, dim - size))
    widths = [(0, 0)] * (x.ndim - 1) + [(0, dim - size)]
    return np.pad(x, widths)


def unpad(x: Array, dim: int) -> Array:
    """Keep the first ``dim`` entries of the last dimension (inverse of :func:`pad_to_dim`)."""
    size = x.shape[-1]
    if dim > size:
        raise ValueError(f"Cannot unpad last dimension {size} to the larger {dim}; use pad_to_dim(x, {dim}).")
    if dim < 1:
        raise ValueError(f"unpad needs dim >= 1, got {dim}.")
    return x[..., :dim]


def chunk_windows(actions: Array, horizon: int) -> tuple[Array, Array]:
    """Action chunk starting at every step of an episode.

    ``actions`` [T, D] → ``chunks`` [T, horizon, D] with ``chunks[t, k] = actions[min(t + k, T - 1)]``
    (past the end the last action repeats, i.e. the robot holds still) and boolean ``is_pad``
    [T, horizon] marking those repeated steps, so a loss can ignore them.
    """
    if actions.ndim != 2 or actions.shape[0] == 0:
        raise ValueError(
            f"chunk_windows needs actions shaped [T, D] with T >= 1, got {tuple(actions.shape)}."
        )
    if not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be an int >= 1, got {horizon!r}.")
    steps = actions.shape[0]
    raw = np.arange(steps)[:, None] + np.arange(horizon)[None, :]
    index = np.minimum(raw, steps - 1)
    is_pad = raw >= steps
    if isinstance(actions, torch.Tensor):
        index_t = torch.as_tensor(index, device=actions.device)
        return actions[index_t], torch.as_tensor(is_pad, device=actions.device)
    return actions[index], is_pad
