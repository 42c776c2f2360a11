"""The bad-input corpus: every hostile or edge input we have tried, with the outcome it must have.

A case is data: an id, a callable that performs the input against a scratch folder, and the
outcome — a ``ValueError`` (or another exception type) whose message matches ``match``, or
``None`` for an input that must be handled normally. New findings are added as new cases; the
tests in this folder run them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BadInput:
    """One tried input. ``run(scratch)`` performs it; ``error``/``match`` say how it must end."""

    id: str
    run: Callable[[Path], object]
    match: str | None
    error: type[BaseException] | None = ValueError

    def __post_init__(self) -> None:
        if (self.error is None) != (self.match is None):
            raise ValueError(f"case {self.id}: give both error and match, or neither (must succeed)")
