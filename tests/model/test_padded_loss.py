"""A real ``[B, L]`` padded batch gives the packed batch's losses: same rows, same draws, same terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emcot.synthetic.world import (
    build_synthetic_policy,
    synthetic_action_samples,
    synthetic_generation_samples,
    synthetic_samples,
    synthetic_vqa_samples,
)
from emcot.training.collate import ConditionDropout, SampleCollator


@pytest.fixture(scope="module")
def setup():
    policy = build_synthetic_policy(synthetic_samples(4, seed=0))
    samples = (
        synthetic_samples(2, seed=1)
        + synthetic_action_samples(1, seed=2)
        + synthetic_vqa_samples(1, seed=3)
        + synthetic_generation_samples(1, seed=4)
    )
    return policy, SampleCollator(policy.processor, ConditionDropout()), samples


def test_padded_rows_equal_the_packed_sequence(setup):
    policy, collate, samples = setup
    model = policy.model.eval()  # posterior means: the codec draws nothing, so draws line up
    packed = collate(samples, rng=np.random.default_rng(0))
    rows = [collate([sample], rng=np.random.default_rng(0)) for sample in samples]
    assert len({row.num_tokens for row in rows}) > 1  # the rows really need padding
    with torch.no_grad():
        reference = model.compute_loss(packed, torch.Generator().manual_seed(3))
        padded = model.compute_padded_loss(rows, torch.Generator().manual_seed(3))
    assert set(padded.terms) == set(reference.terms) == {"text", "subgoal", "action"}
    assert padded.counts == reference.counts
    for key in reference.terms:
        torch.testing.assert_close(padded.terms[key], reference.terms[key], rtol=1e-4, atol=1e-5)


def test_padded_batches_train_and_refuse_what_they_cannot_run(setup):
    policy, collate, samples = setup
    model = policy.model.train()
    rows = [collate([sample], rng=np.random.default_rng(0)) for sample in samples[:3]]
    out = model.compute_padded_loss(rows, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert model.action.action_out.weight.grad is not None and torch.isfinite(out.loss)
    model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="at least one batch"):
        model.compute_padded_loss([])
    model.set_attention_backend("flex")
    try:
        with pytest.raises(ValueError, match="per-row masks, which the flex backend lacks"):
            model.compute_padded_loss(rows)
    finally:
        model.set_attention_backend("sdpa")
