"""Shared fixtures: tiny random component checkpoints written with the libraries' own save_pretrained."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Give norms and biases non-trivial values so parity tests exercise them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.2)
            elif name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
            else:
                # Larger weights than the 0.02 default give decisive logits, so greedy decoding
                # is not decided by float noise between near-tied tokens.
                param.mul_(4.0)


@pytest.fixture
def make_llm(tmp_path):
    """Factory: save a random tiny Qwen2/Qwen3 causal LM and return (folder, reference model)."""

    def make(kind: str = "qwen2", seed: int = 0, **overrides):
        from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

        torch.manual_seed(seed)
        base = dict(
            vocab_size=320,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_theta=10000.0,
            tie_word_embeddings=False,
        )
        base.update(overrides)
        if kind == "qwen2":
            model = Qwen2ForCausalLM(Qwen2Config(**base))
        elif kind == "qwen3":
            model = Qwen3ForCausalLM(Qwen3Config(**base))
        else:
            raise ValueError(kind)
        _perturb(model, seed)
        folder = tmp_path / f"{kind}-{seed}"
        model.save_pretrained(folder)
        return folder, model.eval()

    return make
