"""The memory switches in the model: off is today's model exactly, Top-K per layer reduces to full
attention when K covers the history and its two paths agree, the state-aware re-representation
and video-QA co-training (its own loss term, weighted by λ), with parameter counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emcot.config import EmCoTConfig
from emcot.memory import MemoryConfig
from emcot.model.modeling import EmCoTModel
from emcot.synthetic.cue import cue_action_samples, cue_vqa_samples
from emcot.training.collate import SampleCollator


def _loss(policy, samples, seed: int = 0) -> dict[str, float]:
    batch = SampleCollator(policy.processor)(samples, rng=np.random.default_rng(0))
    out = policy.model.compute_loss(batch, torch.Generator().manual_seed(seed))
    return {"loss": float(out.loss.detach()), **{k: float(v.detach()) for k, v in out.terms.items()}}


def _perturbed(policy):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # zero-initialised heads would hide differences
    return policy


def test_memory_off_is_todays_model_exactly():
    plain = EmCoTConfig.from_preset("tiny")
    saved = plain.to_dict()
    saved.pop("memory")  # a config.json written before memory existed
    torch.manual_seed(0)
    old = EmCoTModel(EmCoTConfig(**saved))
    torch.manual_seed(0)
    new = EmCoTModel(EmCoTConfig.from_preset("tiny", memory=MemoryConfig()))
    assert old.state_dict().keys() == new.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))


def test_parameter_counts_of_the_switches(make_policy):
    base = sum(p.numel() for p in make_policy().model.parameters())
    history = sum(p.numel() for p in make_policy(history_length=4, top_k=8).model.parameters())
    rerep = make_policy(state_aware=True, state_aware_rank=32).model
    hidden, rank = rerep.config.hidden_size, 32
    expected = 2 * (hidden * rank + rank) + rank + rank + (rank * hidden + hidden)
    assert history == base  # history and Top-K reuse the experts' weights
    assert sum(p.numel() for p in rerep.parameters()) - base == expected
    assert sum(p.numel() for p in rerep.state_aware.parameters()) == expected


def test_a_fresh_re_representation_changes_nothing_until_trained(make_policy, demos):
    samples = cue_action_samples(demos)[:3]
    off, on = make_policy(), make_policy(state_aware=True)
    on.model.load_state_dict(off.model.state_dict(), strict=False)
    assert _loss(off, samples) == pytest.approx(_loss(on, samples), abs=1e-6)
    _perturbed(on).model.train()  # the fresh action head is zero and would pass no gradient back
    on.model.compute_loss(SampleCollator(on.processor)(samples)).loss.backward()
    assert on.model.state_aware.out.weight.grad.abs().sum() > 0  # it learns from the action loss


def test_top_k_covering_the_history_is_full_attention(make_policy, demos):
    samples = [s for s in cue_action_samples(demos) if s.history][:3]
    full = _perturbed(make_policy(history_length=4))
    covering = make_policy(history_length=4, top_k=10_000)
    covering.model.load_state_dict(full.model.state_dict())
    for train in (False, True):
        full.model.train(train)
        covering.model.train(train)
        assert _loss(covering, samples) == pytest.approx(_loss(full, samples), abs=1e-5)


def test_top_k_paths_agree_and_differ_from_full_attention(make_policy, demos):
    samples = [s for s in cue_action_samples(demos) if s.history][:3]
    sparse = _perturbed(make_policy(history_length=4, top_k=3))
    full = make_policy(history_length=4)
    full.model.load_state_dict(sparse.model.state_dict())
    sparse.model.train()  # the straight-through path
    straight = _loss(sparse, samples)
    sparse.model.eval()
    with torch.no_grad():
        gathered = _loss(sparse, samples)  # the hard gather
    assert straight == pytest.approx(gathered, abs=1e-5)
    assert abs(straight["action"] - _loss(full, samples)["action"]) > 1e-4


def test_top_k_needs_a_dense_backend(make_policy, demos):
    policy = make_policy(history_length=2, top_k=2)
    policy.model.set_attention_backend("flex")
    with pytest.raises(ValueError, match="use the sdpa or eager"):
        _loss(policy, [s for s in cue_action_samples(demos) if s.history][:1])


def test_video_qa_is_its_own_term_weighted_by_lambda(make_policy, demos):
    policy = _perturbed(make_policy(history_length=4))
    vqa = cue_vqa_samples(demos)[:2]
    actions = cue_action_samples(demos)[:2]
    batch = SampleCollator(policy.processor)(vqa + actions)
    assert batch.vqa_loss_targets.numel() > 0 and batch.text_loss_targets.numel() == 0
    assert policy.model.loss_counts(batch)["vqa"] == batch.vqa_loss_targets.numel()
    terms = {}
    for weight in (0.0, 1.0):
        policy.model.config.loss.vqa_weight = weight
        terms[weight] = _loss(policy, vqa + actions)
    assert terms[0.0]["loss"] == pytest.approx(terms[0.0]["action"], abs=1e-6)
    assert terms[1.0]["loss"] == pytest.approx(terms[1.0]["action"] + terms[1.0]["vqa"], abs=1e-5)
    roles = {s.role for s in batch.plan.segments}
    assert "video_answer" in roles and "answer" not in roles


def test_plain_vqa_stays_in_the_text_term(make_policy):
    from emcot.synthetic.world import synthetic_vqa_samples

    policy = make_policy(history_length=2)
    batch = SampleCollator(policy.processor)(synthetic_vqa_samples(2))
    assert batch.vqa_loss_targets.numel() == 0 and batch.text_loss_targets.numel() > 0
