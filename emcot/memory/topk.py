"""Top-K sparse attention over history keys: each query attends only to its K most relevant keys.

Scores are the scaled dot products ``q·k/√d`` (keys the boolean ``mask`` forbids never count).
Both paths select, per query, the ``top_k`` highest-scoring allowed keys and take the softmax over
those keys only, so they agree in the forward pass:

- **training** (``training=True``): the selection is a hard 0/1 mask over all keys made
  differentiable with a straight-through estimator, ``mask_st = hard.detach() + p − p.detach()``
  where ``p`` is the softmax over every allowed competing key; the forward sees exactly the hard
  mask, the backward lets the gradient reach every score, chosen or not, so the model can learn which keys
  to choose. The forward runs the fused kernel under the hard mask; the estimator's term is
  added on the competing columns only.
- **evaluation** (``training=False``): the ``top_k`` keys and values are gathered and the softmax
  and weighted sum run over ``[B, H, Lq, K]`` only; no gradient is meant to flow.

A query with no allowed key gets a zero output (full attention would give NaN). With
``top_k >= Lk`` both paths are ordinary masked softmax attention. With ``candidates`` only the
marked keys (a sequence's history) compete for the ``top_k`` places; the other allowed keys are
always attended, in the same softmax.

API: ``topk_attention(q, k, v, top_k, *, training, mask=None, candidates=None)``;
``full_attention(q, k, v, mask=None)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _scores(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"topk_attention takes q [B, H, Lq, d], k and v [B, H, Lk, d]; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape[:-1] != v.shape[:-1] or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} disagree: k and v need one "
            "key per value, and q and k the same batch, heads and head size"
        )
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"mask must be boolean (True = may attend), got {mask.dtype}")


def _softmax_rows(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension; rows that are all -inf give zeros instead of NaN."""
    empty = torch.isneginf(scores).all(dim=-1, keepdim=True)
    return torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)


def full_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Masked softmax attention (the reference the Top-K paths reduce to when ``top_k >= Lk``)."""
    _check(q, k, v, mask)
    return torch.matmul(_softmax_rows(_scores(q, k, mask)), v)


def _straight_through(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    top_k: int,
    *,
    mask: torch.Tensor | None,
    cand: torch.Tensor,
) -> torch.Tensor:
    """The training path. Forward: fused attention under the hard selection. Backward: its exact
    gradient plus the straight-through term. With ``keep = hard + p − p.detach()`` in a
    mask-weighted softmax ``o = Σ e_j keep_j v_j / Σ e_j keep_j``, ``∂o/∂keep_j = a_j (v_j − o)``
    with ``a_j`` the kept-set softmax weight ``exp(s_j − logsumexp_kept s)``; that term is added as
    ``Σ_j (p_j − p_j.detach()) a_j (v_j − o)`` (zero in value) on the competing columns only, so
    the ``[Lq, Lk]`` work stays in the fused kernel (written as one masked softmax it cost ~8×)."""
    columns = _competing_columns(cand, k.shape[-2])
    sub_mask = None if mask is None else mask.index_select(-1, columns)
    sub_scores = _scores(q, k.index_select(-2, columns), sub_mask)  # [B, H, Lq, C], differentiable
    sub_cand = cand.index_select(-1, columns).expand_as(sub_scores)
    sub_scores = sub_scores.masked_fill(~sub_cand, float("-inf"))
    chosen = sub_scores.detach().topk(top_k, dim=-1).indices
    hard = torch.zeros_like(sub_scores, dtype=torch.bool).scatter_(-1, chosen, True)
    hard &= ~torch.isneginf(sub_scores)  # a forbidden key is never chosen
    with torch.no_grad():
        scores = _scores(q, k, mask)
        allowed = ~torch.isneginf(scores)
        # a column that does not compete for some row (another padded row's history) stays allowed there
        keep = allowed.index_copy(-1, columns, (hard | ~sub_cand) & allowed.index_select(-1, columns))
        empty = ~keep.any(-1, keepdim=True)
        kept_lse = scores.masked_fill(~keep, float("-inf")).logsumexp(-1, keepdim=True)
        weight = torch.exp(sub_scores.detach() - kept_lse).nan_to_num(0.0)  # a_j; 0 where forbidden
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep | empty).masked_fill(empty, 0.0)
    soft = _softmax_rows(sub_scores)  # p over the competing keys
    delta = torch.where(sub_cand, soft - soft.detach(), torch.zeros_like(soft)) * weight
    v_cols = v.detach().index_select(-2, columns)
    return out + torch.matmul(delta, v_cols) - delta.sum(-1, keepdim=True) * out.detach()


def _competing_columns(cand: torch.Tensor, lk: int) -> torch.Tensor:
    """Indices of the keys some query may choose among (the rest never need a selection)."""
    return cand.expand(*cand.shape[:-1], lk).reshape(-1, lk).any(0).nonzero().squeeze(1)


def topk_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    top_k: int,
    *,
    training: bool,
    mask: torch.Tensor | None = None,
    candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of ``q [B, H, Lq, d]`` over the ``top_k`` best keys of ``k/v [B, H, Lk, d]`` each
    (see the module docstring for the two paths); ``mask`` (bool, True = may attend) broadcasts to
    ``[B, H, Lq, Lk]``. ``candidates`` (bool, broadcasting like ``mask``; None = every key) marks
    the keys that compete for the ``top_k`` places — the history keys of a sequence — while every
    other allowed key is always attended. Returns ``[B, H, Lq, d]``."""
    _check(q, k, v, mask)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if candidates is not None and candidates.dtype != torch.bool:
        raise ValueError(f"candidates must be boolean (True = competes for a place), got {candidates.dtype}")
    lk = k.shape[-2]
    cand = torch.ones(lk, dtype=torch.bool, device=k.device) if candidates is None else candidates
    if top_k >= int(cand.sum(-1).max()):
        return torch.matmul(_softmax_rows(_scores(q, k, mask)), v)
    if training:
        return _straight_through(q, k, v, top_k, mask=mask, cand=cand)
    scores = _scores(q, k, mask)
    columns = _competing_columns(cand, lk)
    sub_cand = cand.index_select(-1, columns)
    sub_scores = scores.index_select(-1, columns).masked_fill(~sub_cand, float("-inf"))  # [B, H, Lq, C]
    chosen = sub_scores.topk(top_k, dim=-1).indices  # [B, H, Lq, K], into the columns
    chosen = columns[chosen]  # back to key indices
    cand_scores = scores.masked_fill(~cand.expand_as(scores), float("-inf"))
    picked = cand_scores.gather(-1, chosen)  # [B, H, Lq, K]
    b, h, lq, kk = chosen.shape
    flat = chosen.reshape(b, h, lq * kk, 1).expand(b, h, lq * kk, v.shape[-1])
    values = v.gather(-2, flat).reshape(b, h, lq, kk, v.shape[-1])  # [B, H, Lq, K, d]
    if candidates is None:
        return torch.matmul(_softmax_rows(picked).unsqueeze(-2), values).squeeze(-2)
    # one softmax over the always-attended keys and the chosen candidates together
    fixed = scores.masked_fill(cand, float("-inf"))
    weights = _softmax_rows(torch.cat([fixed, picked], dim=-1))
    return torch.matmul(weights[..., :lk], v) + torch.matmul(weights[..., lk:].unsqueeze(-2), values).squeeze(
        -2
    )
