"""Every loading path reproduces the saved model: buffers, text logits and whole traces (DESIGN §8)."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoModel

from emcot import EmCoTModel, EmCoTPolicy
from emcot.io_utils import load_safetensors_folder
from emcot.model.loading import load_model, read_config
from emcot.policy.policy import SYNTHETIC_POLICY

IDS = torch.tensor([[3, 17, 42, 99, 7, 256, 5]])


def _meta_device(folder):
    """Built on the meta device, materialised empty, then filled: what big-model loaders do."""
    with torch.device("meta"):
        model = EmCoTModel(read_config(folder))
    model.to_empty(device="cpu")
    model.load_state_dict(load_safetensors_folder(folder), strict=False)
    model.understanding.lm_head.weight = model.understanding.embed_tokens.weight
    return model.eval()


FP32_PATHS = {
    "EmCoTPolicy.from_pretrained": lambda f: EmCoTPolicy.from_pretrained(f).model,
    "load_model(low_memory=False)": lambda f: load_model(f, low_memory=False),
    "EmCoTModel.from_pretrained": lambda f: EmCoTModel.from_pretrained(f),
    "EmCoTModel.from_pretrained(low_cpu_mem_usage=False)": lambda f: EmCoTModel.from_pretrained(
        f, low_cpu_mem_usage=False
    ),
    "AutoModel.from_pretrained": lambda f: AutoModel.from_pretrained(f),
    "meta device": _meta_device,
}
BF16_PATHS = {
    "EmCoTPolicy bf16": lambda f: EmCoTPolicy.from_pretrained(f, torch_dtype="bfloat16").model,
    "EmCoTModel bf16": lambda f: EmCoTModel.from_pretrained(f, torch_dtype=torch.bfloat16),
    "AutoModel dtype=bf16": lambda f: AutoModel.from_pretrained(f, dtype=torch.bfloat16),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    target = tmp_path_factory.mktemp("loading") / "policy"
    shutil.copytree(SYNTHETIC_POLICY, target)
    return target


@pytest.fixture(scope="module")
def reference(folder):
    return EmCoTPolicy.from_pretrained(folder)


def qwen2_inv_freq(model: EmCoTModel) -> torch.Tensor:
    """Qwen2's frequencies, computed here independently of the model."""
    cfg = model.config.experts["und"]
    exponent = torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).float() / cfg.head_dim
    return 1.0 / (model.config.rope_theta**exponent)


@pytest.mark.parametrize("path", sorted(FP32_PATHS))
def test_fp32_paths_reproduce_buffers_logits_and_traces(folder, reference, path):
    model = FP32_PATHS[path](folder)
    assert isinstance(model, EmCoTModel)
    ref_buffers = dict(reference.model.named_buffers())
    buffers = dict(model.named_buffers())
    assert buffers.keys() == ref_buffers.keys()
    for name, value in buffers.items():
        torch.testing.assert_close(value, ref_buffers[name], rtol=0, atol=0)
    torch.testing.assert_close(model.backbone.rotary.inv_freq(), qwen2_inv_freq(model), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=IDS).logits, reference.model(input_ids=IDS).logits, rtol=0, atol=0
        )
    policy = EmCoTPolicy(model, reference.processor, reference.generation)
    obs = reference.example_observation()
    for mode in ("full", "reason"):
        ours = policy.generate_trace(obs, "push the red block to the left", mode=mode, seed=3)
        theirs = reference.generate_trace(obs, "push the red block to the left", mode=mode, seed=3)
        assert ours.reasoning == theirs.reasoning
        assert (ours.actions == theirs.actions).all()


@pytest.mark.parametrize("path", sorted(BF16_PATHS))
def test_bf16_paths_keep_float32_frequencies_and_match_a_cast_model(folder, reference, path):
    model = BF16_PATHS[path](folder)
    assert model.dtype == torch.bfloat16
    freq = model.backbone.rotary.inv_freq()
    assert freq.dtype == torch.float32
    torch.testing.assert_close(freq, qwen2_inv_freq(model), rtol=0, atol=0)
    cast = load_model(folder, torch_dtype=torch.bfloat16, low_memory=False)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS).logits, cast(input_ids=IDS).logits, rtol=0, atol=0)


def test_every_path_loads_the_same_twice(folder):
    """The reported defect changed the logits on every load; two loads must agree bit for bit."""
    with torch.no_grad():
        first = AutoModel.from_pretrained(folder)(input_ids=IDS).logits
        second = AutoModel.from_pretrained(folder)(input_ids=IDS).logits
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_from_pretrained_is_the_safe_loader(folder, tmp_path):
    """No pickle, no silently re-initialised tensors: the inherited loader's behaviour is gone."""
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(folder / "config.json", pickled)
    torch.save(load_safetensors_folder(folder), pickled / "pytorch_model.bin")
    for load in (EmCoTModel.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(ValueError, match="safetensors only"):
            load(pickled)
    from safetensors.torch import save_file

    partial = tmp_path / "partial"
    shutil.copytree(folder, partial)
    state = load_safetensors_folder(folder)
    state.pop("action.action_out.weight")
    save_file(state, str(partial / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \(1\): \['action.action_out.weight'\]"):
        EmCoTModel.from_pretrained(partial)
