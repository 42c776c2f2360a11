"""A memory-enabled tiny policy for the cue task and demos of it (shared by the memory tests)."""

from __future__ import annotations

import pytest

from emcot.synthetic.cue import build_cue_policy, cue_action_samples, cue_demos


@pytest.fixture(scope="module")
def demos():
    return cue_demos(6, seed=3)


@pytest.fixture(scope="module")
def make_policy(demos):
    samples = cue_action_samples(demos)

    def make(**memory):
        policy = build_cue_policy(samples, seed=0, memory=memory)
        policy.model.eval()
        return policy

    return make
