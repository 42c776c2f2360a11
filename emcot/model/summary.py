"""Human-readable summaries of models and policies (used by ``emcot info``)."""

from __future__ import annotations

from collections import Counter

from torch import nn


def parameter_breakdown(model: nn.Module) -> dict[str, int]:
    """Parameter count per part: each expert's backbone weights, the I/O modules, ViT and VAE.

    Tied weights are counted once.
    """
    counts: Counter[str] = Counter()
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        parts = name.split(".")
        if parts[0] == "backbone" and parts[1] == "layers":
            key = f"expert:{parts[4]}"
        elif parts[0] == "backbone" and parts[1] == "norms":
            key = f"expert:{parts[2]}"
        else:
            key = parts[0]
        counts[key] += param.numel()
    return dict(counts)


def format_count(n: int) -> str:
    """``1234567`` → ``"1.23M"``."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
