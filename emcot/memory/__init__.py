"""The memory systems of the seeds' other documents: Top-K sparse attention over history keys.

API: ``topk_attention(q, k, v, top_k, *, training, mask=None)`` and ``full_attention`` (its
reference), from :mod:`emcot.memory.topk`.
"""

from emcot.memory.topk import full_attention, topk_attention

__all__ = ["full_attention", "topk_attention"]
