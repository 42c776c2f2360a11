"""Re-planning rules from specs, the subgoal-reached rule, and its calibration."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from emcot import EmCoTPolicy, PolicySession
from emcot.runtime import (
    SUBGOAL_REACHED_THRESHOLD,
    EveryK,
    InstructionChanged,
    OnRequest,
    PlanAge,
    StepContext,
    SubgoalReached,
    parse_rules,
)
from emcot.runtime.calibration import CalibrationEpisode, best_threshold, calibrate_subgoal_threshold, roc_auc
from emcot.synthetic.world import push_frames, synthetic_samples


@pytest.fixture(scope="module")
def policy():
    return EmCoTPolicy.synthetic()


def test_parse_rules_builds_the_typed_rules():
    rules = parse_rules("requested, instruction-changed,plan_age=8,every_k=4,subgoal_reached=0.5")
    assert rules == (OnRequest(), InstructionChanged(), PlanAge(8), EveryK(4), SubgoalReached(0.5))
    assert parse_rules("subgoal_reached") == (SubgoalReached(SUBGOAL_REACHED_THRESHOLD),)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("plan_aeg=3", r"unknown re-planning rule 'plan_aeg'; did you mean 'plan_age'\?"),
        ("plan_age", r"'plan_age' needs a value"),
        ("requested=2", r"'requested' takes no value"),
        ("every_k=two", r"'every_k': 'two' is not a int"),
        ("every_k=0", r"EveryK.k must be ≥ 1"),
        ("subgoal_reached=nan", r"SubgoalReached.threshold"),
        (" , ", r"no re-planning rule"),
    ],
)
def test_bad_rule_specs_are_clear(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_rules(spec)


def test_subgoal_reached_truth_table_and_lazy_distance():
    calls = []

    def ctx(distance, age=3):
        def measure():
            calls.append(distance)
            return distance

        return StepContext(
            step=5, plan_age=age, instruction_changed=False, requested=False, measure_subgoal_distance=measure
        )

    rule = SubgoalReached(0.2, min_plan_age=2)
    assert [rule.fires(ctx(d)) for d in (0.1, 0.19, 0.2, 0.5, None)] == [True, True, False, False, False]
    calls.clear()
    assert not rule.fires(ctx(0.0, age=1))  # too young: the distance is not even measured
    assert calls == []
    context = ctx(0.1)
    assert context.subgoal_distance == context.subgoal_distance == 0.1
    assert calls == [0.1]  # measured once per step
    assert not PlanAge(8).fires(ctx(0.0)) and calls == [0.1]  # rules that do not look do not pay


def test_session_reports_subgoal_reached(policy):
    scene = synthetic_samples(1, seed=2)[0]
    always = PolicySession(policy, [SubgoalReached(1e6)], seed=0)
    always.reset(scene.instruction)
    reasons = [always.step(scene.observation).reason for _ in range(3)]
    assert reasons == ["no_plan", "subgoal_reached", "subgoal_reached"]
    never = PolicySession(policy, [SubgoalReached(1e-9)], seed=0)
    never.reset(scene.instruction)
    assert [never.step(scene.observation).reason for _ in range(3)] == ["no_plan", None, None]


def test_best_threshold_truth_table():
    threshold, accuracy = best_threshold(np.array([0.1, 0.2]), np.array([0.4, 0.5, 0.6]))
    assert threshold == pytest.approx(0.3) and accuracy == 1.0
    threshold, accuracy = best_threshold(np.array([0.1, 0.45]), np.array([0.4, 0.5]))
    assert accuracy == 0.75 and (np.array([0.1, 0.45]) < threshold).sum() >= 1
    assert roc_auc(np.array([0.1]), np.array([0.2, 0.3])) == 1.0
    assert roc_auc(np.array([0.3]), np.array([0.3])) == 0.5
    with pytest.raises(ValueError, match="both reached and not-reached"):
        best_threshold(np.array([]), np.array([0.1]))


def test_calibration_on_true_subgoals_separates_reached_frames(policy):
    samples = synthetic_samples(4, seed=9)
    episodes = []
    for sample in samples:
        frames = push_frames(sample)
        reached = [i >= len(frames) - 2 for i in range(len(frames))]
        episode = CalibrationEpisode(sample.observation, sample.instruction, frames, reached)
        episodes.append(dataclasses.replace(episode, subgoal=sample.subgoal))
    result = calibrate_subgoal_threshold(policy, episodes)
    assert result.reached.size == 8 and result.not_reached.size == 56
    assert result.reached.min() == 0.0  # the last frame is the subgoal itself
    assert result.auc > 0.9 and result.balanced_accuracy > 0.85
    assert result.reached.max() < result.threshold or result.balanced_accuracy < 1.0
    with pytest.raises(ValueError, match="one 'reached' flag per frame"):
        CalibrationEpisode(samples[0].observation, "x", [samples[0].subgoal], [True, False])
