"""History segments: selection truth table, layout, causality in time, train layout = inference
layout, the session's rolling buffer and the boundary errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from emcot.memory import HistoryBuffer, MemoryConfig, encode_history, history_segments, select_history
from emcot.runtime.session import PolicySession
from emcot.sequence.plan import SequencePlan
from emcot.synthetic.cue import cue_action_samples
from emcot.training.collate import SampleCollator
from emcot.types import HistoryStep, Observation


def _steps(n: int) -> list[HistoryStep]:
    return [HistoryStep(np.full((32, 32, 3), i, np.uint8), np.full(4, i, np.float32), None) for i in range(n)]


@pytest.mark.parametrize(
    ("length", "stride", "past", "picked"),
    [
        (0, 1, 5, []),
        (3, 1, 5, [2, 3, 4]),
        (3, 2, 5, [1, 3]),  # from step 5: steps 3 and 1
        (2, 2, 6, [2, 4]),
        (4, 3, 5, [2]),
        (3, 1, 0, []),
        (5, 1, 2, [0, 1]),
    ],
)
def test_select_history_takes_every_stride_th_step_back_oldest_first(length, stride, past, picked):
    memory = MemoryConfig(history_length=length, history_stride=stride)
    chosen = select_history(_steps(past), memory)
    assert [int(s.frame[0, 0, 0]) for s in chosen] == picked


def test_buffer_is_bounded_and_matches_select_history():
    memory = MemoryConfig(history_length=2, history_stride=3)
    buffer, everything = HistoryBuffer(memory), _steps(10)
    for i, step in enumerate(everything):
        assert buffer.current() == select_history(everything[:i], memory)
        buffer.push(step)
        assert len(buffer) <= 6
    buffer.clear()
    assert buffer.current() == ()


def test_history_segments_are_frame_state_actions_per_step_and_causal_in_time():
    segments = history_segments([4, 4], states=True, actions=True, horizon=8)
    assert [(s.role, s.length) for s in segments] == [
        ("history_frame", 4),
        ("history_state", 1),
        ("history_actions", 8),
    ] * 2
    assert all(s.is_history for s in segments)
    layout = SequencePlan(segments).layout()
    mask = layout.mask()
    first, second = slice(0, 13), slice(13, 26)
    assert not mask[first, second].any()  # a past step never sees a later one
    assert mask[second, first].all()  # and sees every earlier one
    assert layout.history.all()


def test_training_and_inference_lay_out_history_identically(make_policy, demos):
    policy = make_policy(history_length=3, history_image_size=16)
    sample = cue_action_samples(demos)[1]  # a push step: its history holds the reaching step
    assert len(sample.history) == 1
    batch = SampleCollator(policy.processor)([sample])
    trace = policy.generate_trace(
        sample.observation,
        sample.instruction,
        mode="reactive",
        seed=0,
        history=select_history(sample.history, policy.config.memory),
    )
    assert trace.layout.segments == batch.plan.segments
    assert batch.plan.segments[0].length == 4  # 16 px frame, 8 px patches: selective sampling


def test_a_model_without_memory_reads_no_history_from_the_same_samples(make_policy, demos):
    policy = make_policy()
    batch = SampleCollator(policy.processor)(cue_action_samples(demos)[:2])
    assert not any(s.is_history for s in batch.plan.segments)


def test_history_changes_the_actions_and_only_through_its_frames_states_and_chunks(make_policy, demos):
    policy = make_policy(history_length=2)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # a fresh action head is zero
    step = demos[0].steps[1]
    obs = Observation({"head": step.frame}, step.state)
    instruction = "push the red block to the side the light showed"
    alone = policy.generate_trace(obs, instruction, mode="reactive", seed=0).actions
    past = demos[0].history(1)
    remembered = policy.generate_trace(obs, instruction, mode="reactive", seed=0, history=past).actions
    assert not np.allclose(alone, remembered)


def test_the_session_keeps_the_episode_and_forgets_it_on_reset(make_policy, demos):
    policy = make_policy(history_length=2, history_stride=1)
    session = PolicySession(policy, seed=0, mode="reactive")
    session.reset("push the red block to the side the light showed")
    roles = []
    for step in (demos[0].steps + demos[1].steps)[:3]:
        result = session.step(Observation({"head": step.frame}, step.state))
        roles.append(sum(s.role == "history_frame" for s in result.trace.layout.segments))
    assert roles == [0, 1, 2]
    assert len(session.history) == 2
    kept = session.history.current()[-1]
    assert np.array_equal(kept.actions, result.actions)
    session.reset("push the red block to the side the light showed")
    assert len(session.history) == 0


def test_errors_name_the_fix(make_policy, demos):
    plain = make_policy()
    with pytest.raises(ValueError, match="has no history memory"):
        encode_history(plain.processor, demos[0].history(1))
    policy = make_policy(history_length=1)
    with pytest.raises(ValueError, match="at most 1"):
        encode_history(policy.processor, demos[0].history(1) * 2)
    no_actions = [dataclasses.replace(demos[0].history(1)[0], actions=None)]
    with pytest.raises(ValueError, match="record the executed chunk"):
        encode_history(policy.processor, no_actions)
    with pytest.raises(ValueError, match="history_camera 'wrist'"):
        PolicySession(make_policy(history_length=1, history_camera="wrist"))
    with pytest.raises(ValueError, match="top_k selects history keys"):
        MemoryConfig(top_k=4)
    with pytest.raises(ValueError, match="uint8"):
        HistoryStep(np.zeros((4, 4, 3), np.float32))
