"""Which policy an evaluation runs, and how each worker builds one session per episode from it.

API:
- ``PolicyKind`` — ``emcot`` (a policy folder or ``default``), ``expert``, ``random``.
- ``AgentSpec(policy="default", modes=("full",), replan=None, n_action_steps=None,
  camera_map=None, image_size=None, async_replan=False)`` — ``mode_names`` are the result columns
  (the trace modes for an emcot policy; ``("expert",)`` / ``("random",)`` otherwise).
- ``AgentFactory(spec, env_config, bench=None)`` — (``bench``: the benchmark, default Meta-World) loads the policy once (one per worker), checks the adapter
  (``ValueError`` for cameras/state/actions the environment cannot feed) and answers
  ``env_cameras`` and ``make(task, mode, seed) -> Agent`` (a fresh session per episode, seeded with
  the episode's seed, so an episode never depends on which worker ran what before it).
- ``policy_card(policy) -> PolicyCard | None`` — what an emcot policy was trained on (its tasks).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from emcot.eval.adapters import BLIND_ADAPTER, EXPERT_ADAPTER, ObservationAdapter, adapter_for_policy
from emcot.eval.envs.benchmarks import Benchmark, EnvSettings, benchmark
from emcot.eval.policies import RandomSession
from emcot.eval.rollout import Agent
from emcot.io_utils import check_fields
from emcot.sequence.layouts import TraceMode

if TYPE_CHECKING:
    from emcot.policy.card import PolicyCard
    from emcot.policy.policy import EmCoTPolicy
    from emcot.runtime.rules import ReplanRule


class PolicyKind(str, Enum):
    """What ``--policy`` names."""

    EMCOT = "emcot"
    EXPERT = "expert"
    RANDOM = "random"

    @classmethod
    def of(cls, policy: str) -> PolicyKind:
        """``expert`` and ``random`` are the reference policies; anything else is an emcot policy."""
        return {"expert": cls.EXPERT, "random": cls.RANDOM}.get(policy, cls.EMCOT)


@dataclass(frozen=True)
class AgentSpec:
    """The policy (a bundled name, a folder, ``expert`` or ``random``), its trace modes, re-planning
    rules spec, actions executed per step, camera map (env camera → policy camera), image side, and
    whether the session thinks in a background thread while it acts (``async_replan``)."""

    policy: str = "default"
    modes: tuple[str, ...] = ("full",)
    replan: str | None = None
    n_action_steps: int | None = None
    camera_map: tuple[tuple[str, str], ...] | None = None
    image_size: int | None = None
    async_replan: bool = False

    def __post_init__(self) -> None:
        check_fields(self, "AgentSpec")
        if not self.modes:
            raise ValueError("AgentSpec.modes needs at least one trace mode (full, reason, reactive)")
        object.__setattr__(self, "modes", tuple(TraceMode.parse(mode).value for mode in self.modes))
        if self.replan is not None:
            self.rules()  # a bad spec fails here, before any worker starts
        if self.n_action_steps is not None and self.n_action_steps < 1:
            raise ValueError(f"n_action_steps must be ≥ 1, got {self.n_action_steps}")

    @property
    def kind(self) -> PolicyKind:
        """Which kind of policy this is."""
        return PolicyKind.of(self.policy)

    @property
    def mode_names(self) -> tuple[str, ...]:
        """The columns results are filed under."""
        return self.modes if self.kind is PolicyKind.EMCOT else (self.kind.value,)

    def rules(self) -> tuple[ReplanRule, ...] | None:
        """The re-planning rules ``replan`` spells (None: the session's defaults)."""
        if self.replan is None:
            return None
        # Imported only when asked: emcot.runtime pulls in the model stack, which expert runs never need.
        from emcot.runtime.rules import parse_rules

        return parse_rules(self.replan)


def policy_card(policy: str) -> PolicyCard | None:
    """The card of an emcot policy (a bundled name or a folder), without loading its weights."""
    from emcot.policy.card import PolicyCard
    from emcot.policy.policy import policy_folder

    if PolicyKind.of(policy) is not PolicyKind.EMCOT:
        return None
    return PolicyCard.load(policy_folder(policy))


def _load_policy(name: str) -> EmCoTPolicy:
    from emcot.policy.policy import EmCoTPolicy

    return EmCoTPolicy.load(name)


class AgentFactory:
    """Builds the agents of one evaluation; the emcot policy is loaded once, here."""

    def __init__(self, spec: AgentSpec, env_config: EnvSettings, bench: Benchmark | None = None) -> None:
        self.spec = spec
        self.env_config = env_config
        self.bench = bench or benchmark("metaworld")
        self.policy: EmCoTPolicy | None = None
        self.adapter: ObservationAdapter = EXPERT_ADAPTER if spec.kind is PolicyKind.EXPERT else BLIND_ADAPTER
        if spec.kind is PolicyKind.EMCOT:
            self.policy = _load_policy(spec.policy)
            self.adapter = adapter_for_policy(
                self.policy,
                env_cameras=self.bench.cameras,
                resolution=env_config.resolution,
                state_dim=self.bench.state_dim,
                action_dim=self.bench.action_dim,
                camera_map=None if spec.camera_map is None else dict(spec.camera_map),
                image_size=spec.image_size,
            )
        self._rules = spec.rules()

    @property
    def env_cameras(self) -> tuple[str, ...]:
        """The cameras the environment must render for this policy."""
        return self.adapter.env_cameras

    def make(self, task: str, mode: str, seed: int) -> Agent:
        """A fresh agent for one episode of ``task`` under ``mode``, seeded with ``seed``."""
        kind = self.spec.kind
        if kind is PolicyKind.EXPERT:
            return Agent(mode, self.bench.make_expert(task), self.adapter)
        if kind is PolicyKind.RANDOM:
            session = RandomSession(
                self.bench.action_dim, n_action_steps=self.spec.n_action_steps or 1, seed=seed
            )
            return Agent(mode, session, self.adapter)
        from emcot.runtime.rules import DEFAULT_RULES
        from emcot.runtime.session import PolicySession

        assert self.policy is not None
        rules = DEFAULT_RULES if self._rules is None else self._rules
        policy_session = PolicySession(
            self.policy,
            rules,
            mode=mode,
            n_action_steps=self.spec.n_action_steps,
            seed=seed,
            async_replan=self.spec.async_replan,
        )
        return Agent(mode, policy_session, self.adapter)
