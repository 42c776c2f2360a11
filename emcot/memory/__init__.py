"""The memory systems of the seeds' other documents: history segments with their rolling buffer,
Top-K sparse attention over history keys, and the switches of both (``config.memory``).

API: ``MemoryConfig``; ``topk_attention(q, k, v, top_k, *, training, mask=None, candidates=None)``
and ``full_attention`` (its reference); ``select_history``, ``history_segments``,
``encode_history``, ``HistoryBuffer``. The state-aware re-representation module lives with the
action expert (:mod:`emcot.experts.state_aware`).
"""

from emcot.memory.config import MemoryConfig
from emcot.memory.history import HistoryBuffer, encode_history, history_segments, select_history
from emcot.memory.topk import full_attention, topk_attention

__all__ = [
    "HistoryBuffer",
    "MemoryConfig",
    "encode_history",
    "full_attention",
    "history_segments",
    "select_history",
    "topk_attention",
]
