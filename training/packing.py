"""Token-budget packing of weighted dataset mixtures, with a resumable, deterministic data order.

The k-th sample of the stream is a pure function of ``(seed, k)`` and of how many samples each
source has already given (which epoch of its shuffled order it is in), so the whole data position is
a handful of integers: saving them and restoring them continues the run exactly.

One optimizer step takes ``packs_per_step`` packs (the global batch). A pack is a list of samples
whose token count reaches ``expected_tokens`` without passing ``max_tokens``; with several
processes, process ``r`` of ``W`` trains on packs ``r, r + W, …``, so the global batch does not
depend on the number of processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from emcot.io_utils import AT_LEAST_ONE, check_fields
from emcot.types import EmCoTSample

if TYPE_CHECKING:  # only a type here; the registry module imports every data reader
    from emcot.training.data.sources import Source


@dataclass(frozen=True)
class PackingConfig:
    """Tokens per pack (the unit to tune instead of a batch size) and packs per optimizer step."""

    expected_tokens: int = 1024
    max_tokens: int = 1536
    packs_per_step: int = 1

    def __post_init__(self) -> None:
        check_fields(
            self,
            "data.packing",
            expected_tokens=AT_LEAST_ONE,
            max_tokens=AT_LEAST_ONE,
            packs_per_step=AT_LEAST_ONE,
        )
        if self.max_tokens < self.expected_tokens:
            raise ValueError(
                f"need 1 ≤ expected_tokens ≤ max_tokens, got {self.expected_tokens} and {self.max_tokens}"
            )


@dataclass
class StreamState:
    """Position in the mixture stream: samples drawn in total and from each source."""

    position: int = 0
    drawn: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-safe form."""
        return {"position": self.position, "drawn": list(self.drawn)}

    @classmethod
    def from_dict(cls, data: dict) -> StreamState:
        """Inverse of :meth:`to_dict`."""
        return cls(int(data["position"]), [int(n) for n in data["drawn"]])


class MixtureStream:
    """An endless, deterministic stream of ``(source, index)`` pairs drawn from weighted sources.

    Each source is read in a fresh seeded permutation per epoch; which source the k-th item
    comes from is drawn with probability proportional to its weight.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int = 0) -> None:
        if not sizes or len(sizes) != len(weights):
            raise ValueError("give one weight per data source (and at least one source)")
        if any(n < 1 for n in sizes):
            raise ValueError(f"every data source needs at least one sample, got sizes {list(sizes)}")
        shares = np.asarray(weights, dtype=np.float64)
        if (shares < 0).any() or shares.sum() <= 0:
            raise ValueError(f"data weights must be ≥ 0 with a positive sum, got {shares.tolist()}")
        self.sizes = list(sizes)
        self.probs = shares / shares.sum()
        self.seed = seed
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def initial_state(self) -> StreamState:
        """The stream's start."""
        return StreamState(0, [0] * len(self.sizes))

    def peek(self, state: StreamState) -> tuple[int, int]:
        """The ``(source, index)`` at ``state`` (without advancing)."""
        u = np.random.default_rng([self.seed, 0, state.position]).random()
        source = min(int(np.searchsorted(np.cumsum(self.probs), u, side="right")), len(self.sizes) - 1)
        epoch, offset = divmod(state.drawn[source], self.sizes[source])
        key = (source, epoch)
        if key not in self._perms:
            if len(self._perms) > 64:
                self._perms.clear()
            self._perms[key] = np.random.default_rng([self.seed, 1, source, epoch]).permutation(
                self.sizes[source]
            )
        return source, int(self._perms[key][offset])

    def advance(self, state: StreamState) -> StreamState:
        """The state after taking the item at ``state``."""
        source, _ = self.peek(state)
        drawn = list(state.drawn)
        drawn[source] += 1
        return StreamState(state.position + 1, drawn)


class TokenPacker:
    """Groups the stream's samples into packs by token budget; :meth:`next_step` gives one step's packs."""

    def __init__(
        self,
        sources: Sequence[Source],
        weights: Sequence[float],
        num_tokens: Callable[[EmCoTSample], int],
        config: PackingConfig,
        seed: int = 0,
    ) -> None:
        self.sources = sources
        self.config = config
        self.num_tokens = num_tokens
        self.stream = MixtureStream([len(s) for s in sources], weights, seed)
        self.state = self.stream.initial_state()
        self._lengths: dict[tuple[int, int], int] = {}

    def _length(self, key: tuple[int, int]) -> int:
        if key not in self._lengths:
            n = self.num_tokens(self.sources[key[0]][key[1]])
            if n > self.config.max_tokens:
                raise ValueError(
                    f"sample {key[1]} of data source {key[0]} has {n} tokens, more than max_tokens="
                    f"{self.config.max_tokens}; raise max_tokens (and expected_tokens) in the recipe"
                )
            self._lengths[key] = n
        return self._lengths[key]

    def next_pack(self) -> list[EmCoTSample]:
        """Samples in stream order until ``expected_tokens`` is reached; one that would pass ``max_tokens`` waits."""
        pack: list[EmCoTSample] = []
        total = 0
        while total < self.config.expected_tokens:
            key = self.stream.peek(self.state)
            n = self._length(key)
            if pack and total + n > self.config.max_tokens:
                break
            pack.append(self.sources[key[0]][key[1]])
            total += n
            self.state = self.stream.advance(self.state)
        return pack

    def next_step(self) -> list[list[EmCoTSample]]:
        """The ``packs_per_step`` packs of one optimizer step (the global batch)."""
        return [self.next_pack() for _ in range(self.config.packs_per_step)]

    def state_dict(self) -> dict:
        """The data position, as plain integers."""
        return self.state.to_dict()

    def load_state_dict(self, data: dict) -> None:
        """Continue from a saved data position."""
        state = StreamState.from_dict(data)
        if len(state.drawn) != len(self.sources):
            raise ValueError(
                f"the checkpoint's data position covers {len(state.drawn)} sources but the recipe has "
                f"{len(self.sources)}; resume with the recipe the run started with"
            )
        self.state = state


def shard_packs(packs: list[list[EmCoTSample]], rank: int, world_size: int) -> list[tuple[int, list]]:
    """This process's packs with their global indices: ``rank, rank + world_size, …``."""
    if len(packs) % world_size:
        raise ValueError(
            f"packs_per_step={len(packs)} is not a multiple of the {world_size} processes; "
            "set data.packs_per_step to a multiple of the number of processes"
        )
    return [(i, packs[i]) for i in range(rank, len(packs), world_size)]
