"""Understanding/text expert I/O: token embeddings, the ViT connector and the LM head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from emcot.experts.embeddings import sincos_2d


class VisionConnector(nn.Module):
    """ViT features → LLM width: ``fc2(act(fc1(x)))``, then a fixed 2-D sin-cos position (BAGEL style)."""

    def __init__(self, vit_hidden: int, hidden_size: int, act: str = "gelu_pytorch_tanh") -> None:
        super().__init__()
        self.fc1 = nn.Linear(vit_hidden, hidden_size)
        self.act = ACT2FN[act]
        self.fc2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, features: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Project ``features [n, vit_hidden]`` with patch coordinates ``rows``/``cols`` ``[n]``."""
        x = self.fc2(self.act(self.fc1(features)))
        return x + sincos_2d(x.shape[-1], rows, cols).to(x.dtype)


class UnderstandingIO(nn.Module):
    """Input embedding and output head of the understanding expert (text + ViT tokens)."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        tie: bool,
        vit_hidden: int | None,
        act: str = "gelu_pytorch_tanh",
    ) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, hidden_size)
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)
        if tie:
            self.lm_head.weight = self.embed_tokens.weight
        self.connector = VisionConnector(vit_hidden, hidden_size, act) if vit_hidden else None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (float32, so the loss and sampling are stable in bf16 runs)."""
        return self.lm_head(hidden).float()

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy and token count (callers normalise across packed samples/processes)."""
        return F.cross_entropy(logits, targets, reduction="sum"), targets.numel()
