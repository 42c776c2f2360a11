"""PolicySession: plan reuse is the training layout, re-planning rules fire as declared, sessions repeat."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emcot import EmCoTPolicy, PolicySession
from emcot.config import FlowSamplerConfig
from emcot.inference.guidance import GuidanceBranches, action_query, velocity_fn
from emcot.inference.plan import KeptPlan
from emcot.model.flow import GuidedVelocity
from emcot.runtime import EveryK, InstructionChanged, OnRequest, PlanAge, StepContext
from emcot.sequence.layouts import TraceMode, trace_layout
from emcot.synthetic.world import synthetic_samples

INSTRUCTION = "push the red block to the left"


@pytest.fixture(scope="module")
def policy():
    return EmCoTPolicy.synthetic()


@pytest.fixture(scope="module")
def scenes():
    return [s.observation for s in synthetic_samples(3, seed=4)]


def planned(policy, observation, seed=0):
    for event in policy.stream_trace(observation, INSTRUCTION, mode="full", seed=seed):
        if event.kind == "done":
            return event.trace, event.state
    raise AssertionError("no done event")


def roles(plan):
    return [(s.role, s.modality, s.mode, s.length) for s in plan.segments]


def test_reuse_step_has_the_training_layout_of_the_kept_plan(policy, scenes):
    trace, state = planned(policy, scenes[0])
    plan = KeptPlan.from_step(trace, state)
    reused, _ = policy.act_on_plan(scenes[1], plan, seed=1)
    proc = policy.processor
    patches, grids = proc.encode_cameras(scenes[1])
    vit_copy = 0
    if policy.config.subgoal_vit_copy:
        _, grid = proc.vision(np.asarray(trace.subgoal))
        vit_copy = grid[0] * grid[1]
    expected = trace_layout(
        mode="full",
        vit_lengths=[h * w for h, w in grids],
        has_state=scenes[1].state is not None,
        framed_instruction=proc.frame_instruction(INSTRUCTION),
        special=proc.special,
        reasoning=plan.reasoning_ids[:-1],  # the builder closes it with <|think_end|>
        subgoal_tokens=policy.model.latent_grid[0] * policy.model.latent_grid[1],
        subgoal_vit_tokens=vit_copy,
        horizon=policy.config.action.horizon,
    )
    assert roles(reused.layout) == [(s.role, s.modality, s.mode, s.length) for s in expected.segments]
    assert roles(reused.layout) == roles(trace.layout)
    assert reused.reasoning == trace.reasoning and torch.equal(reused.subgoal_latents, trace.subgoal_latents)


@torch.no_grad()
def test_reuse_on_the_same_scene_equals_the_planning_step(policy, scenes):
    """Teacher-forcing the kept plan rebuilds the planning step's cache: the action velocity at any
    (x_t, t) is the one the planning step denoised with."""
    trace, state = planned(policy, scenes[0])
    _, reused = policy.act_on_plan(scenes[0], KeptPlan.from_step(trace, state), seed=0)
    model = policy.model
    sampler = FlowSamplerConfig.actions()
    query = action_query(model)
    x_t = torch.randn(1, query.segment.length, query.width, generator=torch.Generator().manual_seed(0))
    velocities = [
        velocity_fn(model, s.plan, s.cache, query, sampler=sampler, guidance=GuidanceBranches())(x_t, 0.6)
        for s in (state, reused)
    ]
    assert roles(state.plan) == roles(reused.plan)
    planned_v, reused_v = (v.cond if isinstance(v, GuidedVelocity) else v for v in velocities)
    torch.testing.assert_close(reused_v, planned_v, atol=1e-5, rtol=1e-5)


def run(session, scenes, steps):
    out = []
    for i in range(steps):
        result = session.step(scenes[i % len(scenes)])
        out.append((result.replanned, result.reason, result.actions.tobytes()))
    return out


def test_sessions_with_one_seed_repeat_and_share_nothing(policy, scenes):
    first, second = PolicySession(policy, [EveryK(3)], seed=5), PolicySession(policy, [EveryK(3)], seed=5)
    first.reset(INSTRUCTION)
    second.reset(INSTRUCTION)
    a = run(first, scenes, 5)
    b = run(second, scenes, 5)
    assert a == b
    assert [r for r, _, _ in a] == [True, False, False, True, False]
    assert [reason for _, reason, _ in a] == ["no_plan", None, None, "every_k", None]


def test_rules_truth_table():
    def ctx(step=0, age=0, changed=False, requested=False):
        return StepContext(step, age, changed, requested)

    assert [EveryK(3).fires(ctx(step=i)) for i in range(7)] == [True, False, False, True, False, False, True]
    assert [PlanAge(2).fires(ctx(age=a)) for a in range(4)] == [False, False, True, True]
    assert InstructionChanged().fires(ctx(changed=True)) and not InstructionChanged().fires(ctx())
    assert OnRequest().fires(ctx(requested=True)) and not OnRequest().fires(ctx())
    with pytest.raises(ValueError, match="EveryK.k must be ≥ 1"):
        EveryK(0)


def test_requests_instruction_changes_and_the_openpi_contract(policy, scenes):
    session = PolicySession(policy, seed=0, n_action_steps=4)
    session.reset(INSTRUCTION)
    assert session.step(scenes[0]).reason == "no_plan"
    assert not session.step(scenes[1]).replanned
    session.replan()
    assert session.step(scenes[2]).reason == "requested"
    assert session.step(scenes[0], "push the blue block to the right").reason == "instruction_changed"
    obs = {
        "images": dict(scenes[1].images),
        "state": scenes[1].state,
        "prompt": "push the blue block to the right",
    }
    reply = session.infer(obs)
    assert reply["actions"].shape == (4, policy.config.action.action_dim)
    assert reply["replanned"] is False and isinstance(reply["reasoning"], str)
    assert "step_ms" in reply["policy_timing"]


def test_bad_session_inputs_are_clear(policy, scenes):
    with pytest.raises(ValueError, match=r"call reset\(instruction\) before step"):
        PolicySession(policy).step(scenes[0])
    with pytest.raises(ValueError, match=r"n_action_steps must lie in \[1, 8\]"):
        PolicySession(policy, n_action_steps=9)
    with pytest.raises(ValueError, match="unknown trace mode|unknown mode"):
        PolicySession(policy, mode="fulll")
    with pytest.raises(ValueError, match="replan rules need a name"):
        PolicySession(policy, replan=["every_k"])
    session = PolicySession(policy)
    with pytest.raises(ValueError, match=r"unknown observation keys \['img'\]"):
        session.infer({"img": {}, "prompt": INSTRUCTION})
    assert PolicySession(policy, mode=TraceMode.REASON).mode is TraceMode.REASON
