"""Text path of EmCoTModel: exact parity with Hugging Face Qwen2/Qwen3, generation and caches."""

from __future__ import annotations

import pytest
import torch

from emcot.model.modeling import EmCoTModel

CASES = [
    ("qwen2", dict(tie_word_embeddings=False, num_key_value_heads=2)),
    ("qwen2", dict(tie_word_embeddings=True, num_key_value_heads=1)),
    ("qwen2", dict(tie_word_embeddings=False, num_key_value_heads=4)),
    ("qwen3", dict(tie_word_embeddings=True, num_key_value_heads=2, head_dim=24, attention_bias=False)),
    ("qwen3", dict(tie_word_embeddings=False, num_key_value_heads=1, head_dim=16, attention_bias=True)),
]


@pytest.mark.parametrize("kind,overrides", CASES)
def test_logits_and_greedy_generate_match_transformers(make_llm, kind, overrides):
    folder, ref = make_llm(kind, **overrides)
    model = EmCoTModel.from_components(folder, preset="tiny").eval()
    ids = torch.randint(0, 320, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        err = (model(input_ids=ids).logits - ref(ids).logits).abs().max().item()
    assert err <= 1e-4
    ours = model.generate(ids, max_new_tokens=12)
    # An explicit mask: otherwise transformers treats prompt tokens equal to pad_token_id as padding.
    theirs = ref.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=12,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    assert torch.equal(ours, theirs)


def test_from_components_copies_understanding_into_all_experts(make_llm):
    folder, _ = make_llm("qwen2")
    model = EmCoTModel.from_components(
        folder, preset="tiny", expert_overrides={"act": {"intermediate_size": 48}}
    )
    for layer in model.backbone.layers:
        und, gen, act = (layer.experts[n] for n in ("und", "gen", "act"))
        assert torch.equal(und.q_proj.weight, gen.q_proj.weight)
        assert torch.equal(und.q_proj.bias, act.q_proj.bias)
        assert act.mlp.gate_proj.weight.shape[0] == 48
        assert torch.equal(act.mlp.gate_proj.weight, und.mlp.gate_proj.weight[:48])
        assert torch.equal(act.mlp.down_proj.weight, und.mlp.down_proj.weight[:, :48])
    assert torch.equal(model.backbone.norms["act"].weight, model.backbone.norms["und"].weight)


def test_qk_norm_can_be_added_to_a_qwen2_checkpoint(make_llm):
    folder, ref = make_llm("qwen2")
    model = EmCoTModel.from_components(folder, preset="tiny", qk_norm=True).eval()
    for layer in model.backbone.layers:
        for expert in layer.experts.values():
            assert torch.equal(expert.q_norm.weight, torch.ones(16))
            assert torch.equal(expert.k_norm.weight, torch.ones(16))
    assert torch.equal(model.understanding.embed_tokens.weight, ref.model.embed_tokens.weight)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.randint(0, 320, (1, 9))).logits).all()


def test_cached_incremental_decoding_equals_full_forward(make_llm):
    folder, _ = make_llm("qwen3", head_dim=16, num_key_value_heads=1, attention_bias=True)
    model = EmCoTModel.from_components(folder, preset="tiny").eval()
    ids = torch.randint(0, 320, (3, 20))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        cache = model.new_cache()
        parts = [model(input_ids=ids[:, :8], cache=cache).logits]
        parts += [model(input_ids=ids[:, i : i + 1], cache=cache).logits for i in range(8, 20)]
    assert len(cache) == 20
    assert (torch.cat(parts, dim=1) - full).abs().max().item() <= 1e-5


def test_left_padded_batch_equals_unpadded_rows(make_llm):
    folder, _ = make_llm("qwen2")
    model = EmCoTModel.from_components(folder, preset="tiny").eval()
    short, long = torch.randint(0, 320, (1, 5)), torch.randint(0, 320, (1, 9))
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    mask = torch.ones_like(batch)
    mask[0, :4] = 0
    with torch.no_grad():
        padded = model(input_ids=batch, attention_mask=mask).logits
        alone = model(input_ids=short).logits
    assert (padded[0, 4:] - alone[0]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("backend", ["eager", "flex"])
def test_attention_backends_agree(make_llm, backend):
    folder, _ = make_llm("qwen2")
    model = EmCoTModel.from_components(folder, preset="tiny").eval()
    ids = torch.randint(0, 320, (1, 16))
    with torch.no_grad():
        sdpa = model(input_ids=ids).logits
        model.set_attention_backend(backend)
        other = model(input_ids=ids).logits
    assert (sdpa - other).abs().max().item() <= 1e-4


def test_unknown_backend_and_bad_inputs_raise(make_llm):
    folder, _ = make_llm("qwen2")
    model = EmCoTModel.from_components(folder, preset="tiny")
    with pytest.raises(ValueError, match="choose one of"):
        model.set_attention_backend("cuda-magic")
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        model(input_ids=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="EmCoTPolicy"):
        model(input_ids=torch.zeros(1, 4, dtype=torch.long), pixel_values=None)


def test_gradient_checkpointing_gives_same_gradients(make_llm):
    folder, _ = make_llm("qwen2")
    model = EmCoTModel.from_components(folder, preset="tiny").train()
    ids = torch.randint(0, 320, (2, 10))

    def grads():
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return model.backbone.layers[0].experts["und"].q_proj.weight.grad.clone()

    plain = grads()
    model.gradient_checkpointing_enable()
    assert model.backbone.gradient_checkpointing
    assert torch.allclose(grads(), plain, atol=1e-6)


def test_sampling_is_reproducible_with_a_generator(make_llm):
    folder, _ = make_llm("qwen2")
    model = EmCoTModel.from_components(folder, preset="tiny").eval()
    ids = torch.randint(0, 320, (1, 4))
    a = model.generate(
        ids, 8, do_sample=True, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(3)
    )
    b = model.generate(
        ids, 8, do_sample=True, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(a, b) and a.shape == (1, 12)


def test_generate_stops_rows_at_eos(make_llm):
    folder, _ = make_llm("qwen2")
    model = EmCoTModel.from_components(folder, preset="tiny").eval()
    ids = torch.randint(0, 320, (1, 6))
    free = model.generate(ids, 6)
    eos = int(free[0, 7])
    stopped = model.generate(ids, 6, eos_token_id=eos)
    assert stopped.shape[1] == 8 and int(stopped[0, -1]) == eos
