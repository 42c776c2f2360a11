"""How a server is set up and what it tells its clients: `ServerConfig` (where it listens, what it
accepts), `SessionConfig` (the `PolicySession` each connection gets) and the metadata frame sent
before anything else (what to send, what comes back, how the policy plans)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emcot.io_utils import AT_LEAST_ONE, Range, check_fields
from emcot.runtime.rules import DEFAULT_RULES, ReplanRule
from emcot.runtime.session import PolicySession
from emcot.sequence.layouts import TraceMode

if TYPE_CHECKING:
    from emcot.policy.policy import EmCoTPolicy
    from emcot.serving.observations import ObservationSpec

PROTOCOL = "openpi-websocket/msgpack-numpy"
PROTOCOL_VERSION = 1
# Keys of every reply: the session's output, then what the server adds.
REPLY_KEYS = ("actions", "reasoning", "replanned", "policy_timing", "server_timing", "server_step")


@dataclass(frozen=True)
class ServerConfig:
    """Where the server listens and what it accepts.

    ``port`` 0 picks a free port. ``api_key``: when set, a connection needs the header
    ``Authorization: Api-Key <key>`` (what openpi-client sends) or is refused with 401.
    ``max_message_size``: larger frames close the connection with 1009. ``max_queue``: requests
    waiting for (or in) the policy across all clients; one more is refused with 1013.
    ``obs_map``: ``(flat key, target)`` pairs, see :class:`~emcot.serving.observations.ObservationSpec`.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = field(default=None, repr=False)  # never in logs or reprs
    max_message_size: int = 16 * 2**20
    max_queue: int = 8
    obs_map: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        check_fields(
            self,
            "ServerConfig",
            port=Range(ge=0, le=65535),
            max_message_size=Range(ge=1024),
            max_queue=AT_LEAST_ONE,
        )
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("ServerConfig.api_key must not be empty (leave it unset to accept every client)")


@dataclass(frozen=True)
class SessionConfig:
    """How each connection's :class:`~emcot.runtime.PolicySession` runs: its re-planning rules,
    trace ``mode``, the ``n_action_steps`` of the chunk it returns (None: all), its ``seed`` (step
    ``i`` of a connection uses ``seed + i``, so connections with the same requests get the same
    replies) and whether it thinks in the background (``async_replan``)."""

    replan: tuple[ReplanRule, ...] = DEFAULT_RULES
    mode: TraceMode = TraceMode.FULL
    n_action_steps: int | None = None
    seed: int | None = None
    async_replan: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", TraceMode.parse(self.mode))
        check_fields(self, "SessionConfig", n_action_steps=AT_LEAST_ONE)

    def open(self, policy: EmCoTPolicy) -> PolicySession:
        """A fresh session over ``policy`` (sessions share only the weights)."""
        return PolicySession(
            policy,
            self.replan,
            mode=self.mode,
            n_action_steps=self.n_action_steps,
            seed=self.seed,
            async_replan=self.async_replan,
        )


def describe_rule(rule: ReplanRule) -> dict[str, Any]:
    """A rule as plain data: its name and, for dataclass rules, its settings (``{"name": "plan_age",
    "max_steps": 8}``)."""
    described: dict[str, Any] = {"name": rule.name}
    if dataclasses.is_dataclass(rule):
        for field in dataclasses.fields(rule):
            value = getattr(rule, field.name)
            if field.name != "name" and isinstance(value, (bool, int, float, str)):
                described[field.name] = value
    return described


def server_metadata(
    policy: EmCoTPolicy, spec: ObservationSpec, session: SessionConfig, config: ServerConfig, *, name: str
) -> dict[str, Any]:
    """The first frame of every connection (plain types only, so any msgpack client reads it)."""
    from emcot import __version__

    action = policy.config.action
    vision = policy.config.vision
    return {
        "protocol": PROTOCOL,
        "protocol_version": PROTOCOL_VERSION,
        "server": "emcot",
        "emcot_version": __version__,
        "policy": name,
        "cameras": list(spec.cameras),
        # Images of any size are resized inside the policy; these are the bounds it resizes to.
        "image_size": {"min_side_px": int(vision.min_side_px), "max_side_px": int(vision.max_side_px)},
        "state_dim": int(action.state_dim),
        "action_dim": int(action.action_dim),
        "chunk_length": int(action.horizon),
        # The rows of "actions" in each reply: what openpi's ActionChunkBroker should replay.
        "action_horizon": int(session.n_action_steps or action.horizon),
        "mode": session.mode.value,
        "replan": [describe_rule(rule) for rule in session.replan],
        "async_replan": session.async_replan,
        "seed": session.seed,
        **spec.describe(),
        "reply_keys": list(REPLY_KEYS),
        "max_message_size": config.max_message_size,
    }
