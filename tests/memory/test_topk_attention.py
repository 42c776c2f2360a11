"""Top-K sparse attention: full attention when K covers the history, the straight-through and
gather paths agree in the forward, gradients reach every score in training, masks and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from emcot.memory import full_attention, topk_attention


def qkv(lq: int = 5, lk: int = 12, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 3, n, d, generator=g, dtype=torch.float64) for n in (lq, lk, lk))


@pytest.mark.parametrize("training", [True, False])
def test_k_at_least_the_history_is_full_attention(training):
    q, k, v = qkv()
    reference = F.scaled_dot_product_attention(q, k, v)
    for top_k in (12, 50):
        torch.testing.assert_close(
            topk_attention(q, k, v, top_k, training=training), reference, rtol=0, atol=1e-12
        )
    mask = torch.rand(5, 12, generator=torch.Generator().manual_seed(1)) > 0.4
    mask[:, 0] = True
    masked = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(
        topk_attention(q, k, v, 12, training=training, mask=mask), masked, rtol=0, atol=1e-12
    )


def brute_force(q, k, v, top_k, mask=None):
    """Per query: the top_k scores' keys, softmax over them only (loops, no tricks)."""
    out = torch.zeros_like(q)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for i in range(q.shape[2]):
                row = scores[b, h, i]
                allowed = int(torch.isfinite(row).sum())
                keep = row.topk(min(top_k, allowed)).indices
                if len(keep):
                    out[b, h, i] = torch.softmax(row[keep], 0) @ v[b, h, keep]
    return out


@pytest.mark.parametrize("top_k", [1, 3, 7])
def test_both_paths_agree_with_a_brute_force_top_k(top_k):
    q, k, v = qkv()
    mask = torch.ones(5, 12, dtype=torch.bool).tril(
        diagonal=6
    )  # causal-in-time history: query i sees keys ≤ i + 6
    expected = brute_force(q, k, v, top_k, mask)
    train = topk_attention(q, k, v, top_k, training=True, mask=mask)
    gather = topk_attention(q, k, v, top_k, training=False, mask=mask)
    torch.testing.assert_close(train, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(gather, expected, rtol=0, atol=1e-12)


def test_gradients_reach_every_score_in_training_and_only_chosen_keys_when_gathering():
    q, k, v = qkv(lq=2, lk=10)
    scores = (q @ k.transpose(-1, -2) / 8**0.5).detach().requires_grad_(True)
    # feed the scores through q = I-like keys so that d(out)/d(scores) is what topk_attention sees
    eye = torch.eye(10, dtype=torch.float64).expand(2, 3, 10, 10)
    out = topk_attention(scores * 10**0.5, eye, v, 3, training=True)
    out.pow(2).sum().backward()
    assert (scores.grad.abs() > 0).all(), "some unchosen key got no gradient"
    scores.grad = None
    out = topk_attention(scores * 10**0.5, eye, v, 3, training=False)
    out.pow(2).sum().backward()
    nonzero = (scores.grad.abs() > 0).sum(-1)
    assert (nonzero == 3).all()  # the hard gather: only the chosen keys' scores move


def test_a_query_with_no_allowed_key_gets_zeros_and_bad_input_is_refused():
    q, k, v = qkv(lq=2, lk=6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1] = False
    for training in (True, False):
        out = topk_attention(q, k, v, 2, training=training, mask=mask)
        assert torch.isfinite(out).all() and (out[:, :, 1] == 0).all()
    torch.testing.assert_close(full_attention(q, k, v, mask)[:, :, 1], torch.zeros_like(q[:, :, 1]))
    with pytest.raises(ValueError, match="positive integer"):
        topk_attention(q, k, v, 0, training=False)
    with pytest.raises(ValueError, match="boolean"):
        topk_attention(q, k, v, 2, training=False, mask=mask.float())
    with pytest.raises(ValueError, match="disagree"):
        topk_attention(q, k[..., :4], v, 2, training=False)
    with pytest.raises(ValueError, match=r"q \[B, H, Lq, d\]"):
        topk_attention(q[0], k, v, 2, training=False)


@pytest.mark.parametrize("training", [True, False])
def test_candidates_compete_and_other_allowed_keys_are_always_kept(training):
    torch.manual_seed(3)
    q, k, v = torch.randn(2, 2, 5, 8), torch.randn(2, 2, 12, 8), torch.randn(2, 2, 12, 8)
    mask = torch.rand(2, 1, 5, 12) > 0.2
    candidates = torch.zeros(12, dtype=torch.bool)
    candidates[:7] = True  # the history keys
    scores = (q @ k.transpose(-1, -2)) / 8**0.5
    history_scores = scores.masked_fill(~mask | ~candidates, float("-inf"))
    chosen = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, history_scores.topk(3).indices, True)
    keep = (chosen & ~torch.isneginf(history_scores)) | (mask & ~candidates)
    got = topk_attention(q, k, v, 3, training=training, mask=mask, candidates=candidates)
    torch.testing.assert_close(got, full_attention(q, k, v, keep), rtol=0, atol=1e-6)
    covering = topk_attention(q, k, v, 7, training=training, mask=mask, candidates=candidates)
    torch.testing.assert_close(covering, full_attention(q, k, v, mask), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="candidates must be boolean"):
        topk_attention(q, k, v, 3, training=training, candidates=candidates.float())


def dense_straight_through(q, k, v, top_k, mask, candidates):
    """The estimator written out densely: a mask-weighted softmax over every key with
    ``keep = hard + p − p.detach()`` on the candidates (``p`` = softmax over the allowed candidates)."""
    scores = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).masked_fill(~mask, float("-inf"))
    cand_scores = scores.masked_fill(~candidates, float("-inf"))
    hard = torch.zeros_like(scores).scatter(-1, cand_scores.topk(top_k).indices, 1.0)
    hard = hard.masked_fill(torch.isneginf(cand_scores), 0.0)
    soft = torch.softmax(cand_scores, -1)
    keep = torch.where(candidates, hard + soft - soft.detach(), torch.ones_like(soft))
    weights = torch.exp(scores - scores.amax(-1, keepdim=True).detach()) * keep
    return (weights / weights.sum(-1, keepdim=True)) @ v


def test_the_training_path_has_the_dense_estimators_gradients():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g, dtype=torch.float64) for n in (9, 14, 14))
    mask = torch.ones(9, 14, dtype=torch.bool).tril(diagonal=6)
    candidates = torch.zeros(14, dtype=torch.bool)
    candidates[1:8] = True
    upstream = torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64)
    grads = []
    for attention in (
        lambda q, k, v: topk_attention(q, k, v, 3, training=True, mask=mask, candidates=candidates),
        lambda q, k, v: dense_straight_through(q, k, v, 3, mask, candidates),
    ):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = attention(*leaves)
        (out * upstream).sum().backward()
        grads.append([out.detach()] + [t.grad for t in leaves])
    for got, expected in zip(*grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
