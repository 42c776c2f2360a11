"""The stages prefill / reason / imagine / act compose into ``stream_trace``, whose final state is
public; trace modes parse from their names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emcot.inference.options import GenerationOptions
from emcot.inference.stages import TraceStages
from emcot.policy.policy import EmCoTPolicy
from emcot.sequence.layouts import TraceMode
from emcot.sequence.plan import AttnMode
from emcot.synthetic.world import synthetic_samples


@pytest.fixture(scope="module")
def policy():
    return EmCoTPolicy.synthetic()


@pytest.fixture(scope="module")
def sample():
    return synthetic_samples(1, seed=0)[0]


@pytest.mark.parametrize("mode", list(TraceMode))
def test_stages_run_one_by_one_are_stream_trace(policy, sample, mode):
    done = list(policy.stream_trace(sample.observation, sample.instruction, mode=mode, seed=3))[-1]
    trace, final = done.trace, done.state

    stages = TraceStages(policy.model, policy.processor)
    options = policy.generation.replace(mode=mode)
    state = stages.prefill(sample.observation, sample.instruction, options, seed=3)
    reasoning = "".join(e.text for e in stages.reason(state, options)) if mode.reasons else ""
    subgoal = stages.imagine(state, options) if mode.imagines else None
    actions = stages.act(state, options)

    assert reasoning == trace.reasoning and np.array_equal(actions, trace.actions)
    assert (subgoal is None) == (trace.subgoal is None) == (not mode.imagines)
    if subgoal is not None:
        assert np.array_equal(np.asarray(subgoal), np.asarray(trace.subgoal))
        assert torch.equal(state.x0, final.x0) and trace.subgoal_latents is final.x0
    else:
        assert final.x0 is None and trace.subgoal_latents is None
    assert state.layout.segments == final.layout.segments == trace.layout.segments
    assert state.text_ids == final.text_ids
    # Noise segments are in the layout but never in the cache.
    assert [s for s in final.layout.segments if s.mode is not AttnMode.NOISE] == final.plan.segments
    assert len(final.cache) == len(final.plan)
    ran = ["prefix"] + ["reasoning"] * mode.reasons + ["subgoal"] * mode.imagines + ["actions"]
    assert list(final.timings) == ran and list(trace.timings) == ran + ["total"]


def test_modes_parse_from_their_names_and_a_typo_names_the_closest():
    assert TraceMode.parse("reason") is TraceMode.REASON and TraceMode.parse(TraceMode.FULL) is TraceMode.FULL
    assert GenerationOptions(mode="reactive").mode is TraceMode.REACTIVE
    with pytest.raises(ValueError, match=r"unknown mode 'resaon' \(did you mean 'reason'\?\)"):
        GenerationOptions(mode="resaon")
