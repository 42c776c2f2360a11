"""A process-wide, byte-budgeted LRU of decoded video segments.

Token packing draws samples from random episodes, so a per-dataset "last episode" cache misses
almost always, and decoding one episode's video costs 45–75 ms at 128 px — more than half of a
`small` training step on 2 CPU cores. Decoded frames are small (a 128 px Meta-World episode is
~4 MB), so one shared cache holds a whole dataset: every ``LeRobotDataset`` of the process (a
recipe opens one per data source, often on the same folder) reads through it and decodes each
segment once.

    from emcot.training.data.frame_cache import frame_cache
    frame_cache().set_budget(4 << 30)   # or data.frame_cache_gb in a recipe
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

DEFAULT_BUDGET_BYTES = 2 << 30


@dataclass(frozen=True)
class FrameCacheStats:
    """Counters of a :class:`FrameCache` since it was created or cleared."""

    hits: int
    misses: int
    entries: int
    bytes: int
    budget: int


class FrameCache:
    """Least-recently-used arrays under a total byte budget (0 disables caching).

    Cached arrays are shared between readers, so they are made read-only. An array larger than
    the whole budget is returned without being kept.
    """

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self._entries: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = self._hits = self._misses = 0
        self._lock = threading.Lock()
        self.budget = 0
        self.set_budget(budget_bytes)

    def set_budget(self, budget_bytes: int) -> None:
        """Change the byte budget, evicting the oldest entries that no longer fit."""
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 0:
            raise ValueError(f"the frame cache budget must be an int >= 0 bytes, got {budget_bytes!r}")
        with self._lock:
            self.budget = budget_bytes
            self._evict()

    def get(self, key: Hashable, load: Callable[[], np.ndarray]) -> np.ndarray:
        """The array cached under ``key``, or ``load()``'s result, cached when it fits."""
        with self._lock:
            array = self._entries.get(key)
            if array is not None:
                self._entries.move_to_end(key)
                self._hits += 1
                return array
            self._misses += 1
        # Decoding runs outside the lock; two threads missing the same key both decode it once.
        array = load()
        array.setflags(write=False)
        with self._lock:
            if array.nbytes <= self.budget and key not in self._entries:
                self._entries[key] = array
                self._bytes += array.nbytes
                self._evict()
        return array

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._entries.clear()
            self._bytes = self._hits = self._misses = 0

    def stats(self) -> FrameCacheStats:
        """Hits, misses, entries and bytes held."""
        with self._lock:
            return FrameCacheStats(self._hits, self._misses, len(self._entries), self._bytes, self.budget)

    def _evict(self) -> None:
        while self._bytes > self.budget and self._entries:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.nbytes


_CACHE = FrameCache()


def frame_cache() -> FrameCache:
    """The process-wide cache that ``LeRobotDataset`` decodes videos through."""
    return _CACHE
