"""Asynchronous thinking: steps act on the last finished plan, a new plan swaps in whole."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from emcot import EmCoTPolicy, PolicySession
from emcot.runtime import EveryK, OnRequest
from emcot.synthetic.world import synthetic_samples

INSTRUCTION = "push the red block to the left"


class GatedPolicy(EmCoTPolicy):
    """The bundled policy whose planning traces off the main thread wait for ``gate``."""

    def __init__(self, base: EmCoTPolicy) -> None:
        super().__init__(base.model, base.processor, base.generation)
        self.gate = threading.Event()
        self.started = threading.Event()

    def stream_trace(self, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            self.started.set()
            assert self.gate.wait(60), "the test never opened the gate"
        return super().stream_trace(*args, **kwargs)


@pytest.fixture(scope="module")
def base():
    return EmCoTPolicy.synthetic()


@pytest.fixture(scope="module")
def scenes():
    return [s.observation for s in synthetic_samples(3, seed=11)]


def test_steps_act_on_one_plan_while_the_next_is_thought(base, scenes):
    policy = GatedPolicy(base)
    with PolicySession(policy, [OnRequest()], seed=3, async_replan=True) as session:
        session.reset(INSTRUCTION)
        first = session.step(scenes[0])  # no plan yet: planned on the robot's thread
        assert (first.replanned, first.reason, first.plan_id) == (True, "no_plan", 0)
        plan0 = session.plan
        session.replan()
        asked = session.step(scenes[1])
        assert (asked.replanned, asked.reason, asked.plan_id) == (False, "requested", 0)
        assert policy.started.wait(30) and session.thinking
        waiting = [session.step(scenes[i % 3]) for i in range(2, 5)]
        results = [first, asked, *waiting]
        assert all(r.plan_id == 0 and r.reason is None and not r.replanned for r in waiting)
        policy.gate.set()
        for _ in range(500):  # steps go on until the background plan is finished and swapped in
            results.append(session.step(scenes[0]))
            if results[-1].plan_id == 1:
                break
        swapped = results[-1]
        assert swapped.replanned and swapped.plan_id == 1 and session.plan is not plan0
        assert all(r.plan_id == 0 for r in results[:-1])
        plans = {0: plan0, 1: session.plan}
    # No step mixes two plans: each one's actions are those of acting on its own plan alone.
    for index, result in enumerate(results[1:], start=1):
        plan = plans[result.plan_id]
        scene = scenes[index % 3] if index < 5 else scenes[0]
        again, _ = base.act_on_plan(scene, plan, seed=3 + index)
        assert np.array_equal(result.actions, again.actions), index
        assert result.trace.reasoning == plan.reasoning


def test_reset_drops_a_plan_being_thought_and_errors_reach_the_robot(base, scenes):
    policy = GatedPolicy(base)
    with PolicySession(policy, [EveryK(2)], seed=0, async_replan=True) as session:
        session.reset(INSTRUCTION)
        session.step(scenes[0])
        session.step(scenes[1])
        assert session.step(scenes[2]).reason == "every_k" and session.thinking
        session.reset("push the blue block to the right")
        assert not session.thinking
        policy.gate.set()
        fresh = session.step(scenes[0])
        assert (fresh.reason, fresh.replanned) == ("no_plan", True)
        assert session.plan is not None and session.plan.instruction == "push the blue block to the right"

    class Failing(EmCoTPolicy):
        def stream_trace(self, *args, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                raise RuntimeError("thinking failed")
            return super().stream_trace(*args, **kwargs)

    with PolicySession(Failing(base.model, base.processor), [EveryK(1)], async_replan=True) as session:
        session.reset(INSTRUCTION)
        session.step(scenes[0])
        session.step(scenes[1])  # starts the failing background trace
        with pytest.raises(RuntimeError, match="thinking failed"):
            for _ in range(200):
                session.step(scenes[2])


def test_sync_sessions_stay_bit_deterministic(base, scenes):
    def actions(async_replan):
        with PolicySession(base, [EveryK(2)], seed=7, async_replan=async_replan) as session:
            session.reset(INSTRUCTION)
            return [session.step(scenes[i % 3]) for i in range(5)]

    a, b = actions(False), actions(False)
    assert [r.actions.tobytes() for r in a] == [r.actions.tobytes() for r in b]
    assert [r.plan_id for r in a] == [0, 0, 1, 1, 2]
    assert [r.replanned for r in a] == [True, False, True, False, True]
