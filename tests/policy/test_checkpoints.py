"""Saving and loading: bit-exact policy round trips, component checkpoints, and loud, safe failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from emcot.model.loading import load_model
from emcot.model.modeling import EmCoTModel
from emcot.policy.policy import EmCoTPolicy
from emcot.synthetic.world import build_synthetic_policy, synthetic_samples


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    samples = synthetic_samples(3, seed=2)
    policy = build_synthetic_policy(samples)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # non-trivial heads, so traces depend on every weight
    folder = tmp_path_factory.mktemp("policy") / "p"
    policy.save_pretrained(folder)
    return policy, samples, folder


def test_policy_round_trip_is_bit_exact_and_gives_the_same_trace(saved):
    policy, samples, folder = saved
    back = EmCoTPolicy.from_pretrained(folder)
    a, b = policy.model.state_dict(), back.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    obs, instr = samples[0].observation, samples[0].instruction
    t1 = policy.generate_trace(obs, instr, seed=3, max_reasoning_tokens=6)
    t2 = back.generate_trace(obs, instr, seed=3, max_reasoning_tokens=6)
    assert t1.reasoning == t2.reasoning and np.array_equal(t1.actions, t2.actions)
    assert np.array_equal(np.asarray(t1.subgoal), np.asarray(t2.subgoal))
    assert back.generation == policy.generation and back.cameras == policy.cameras


def test_folder_contents_and_safetensors_only(saved):
    _, _, folder = saved
    names = {p.name for p in folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "processor_config.json",
        "norm_stats.json",
        "generation_config.json",
    } <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "emcot"


def test_sharded_save_loads_identically(saved, tmp_path):
    policy, _, _ = saved
    policy.save_pretrained(tmp_path / "sharded", max_shard_size="500KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    back = EmCoTPolicy.from_pretrained(tmp_path / "sharded")
    a, b = policy.model.state_dict(), back.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_subfolder_dtype_and_auto_model(saved, tmp_path):
    from transformers import AutoModel

    policy, _, _ = saved
    policy.save_pretrained(tmp_path / "repo" / "policy")
    back = EmCoTPolicy.from_pretrained(tmp_path / "repo", subfolder="policy", torch_dtype=torch.bfloat16)
    assert back.model.understanding.embed_tokens.weight.dtype == torch.bfloat16
    auto = AutoModel.from_pretrained(tmp_path / "repo" / "policy")
    assert isinstance(auto, EmCoTModel)
    assert torch.equal(auto.understanding.embed_tokens.weight, policy.model.understanding.embed_tokens.weight)


def test_low_memory_loading_matches_plain_loading(saved):
    _, _, folder = saved
    a = load_model(folder, low_memory=True).state_dict()
    b = load_model(folder, low_memory=False).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _copy(folder, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    return dst


def test_missing_and_unexpected_keys_are_listed(saved, tmp_path):
    _, _, folder = saved
    dst = _copy(folder, tmp_path)
    state = load_file(str(dst / "model.safetensors"))
    state.pop("action.action_in.weight")
    state["action.extra_head.weight"] = torch.zeros(2)
    save_file(state, str(dst / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \(1\).*action\.action_in\.weight") as err:
        EmCoTPolicy.from_pretrained(dst)
    assert "action.extra_head.weight" in str(err.value)


def test_shape_mismatch_names_parameter_and_shapes(saved, tmp_path):
    _, _, folder = saved
    dst = _copy(folder, tmp_path)
    state = load_file(str(dst / "model.safetensors"))
    state["action.action_out.weight"] = torch.zeros(7, 64)
    save_file(state, str(dst / "model.safetensors"))
    with pytest.raises(ValueError, match=r"action\.action_out\.weight.*\(7, 64\).*\(4, 64\)"):
        EmCoTPolicy.from_pretrained(dst)


def test_truncated_weights_file(saved, tmp_path):
    _, _, folder = saved
    dst = _copy(folder, tmp_path)
    data = (dst / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        EmCoTPolicy.from_pretrained(dst)


def test_pickle_weights_are_refused(saved, tmp_path):
    _, _, folder = saved
    dst = _copy(folder, tmp_path)
    (dst / "model.safetensors").unlink()
    (dst / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="safetensors only"):
        EmCoTPolicy.from_pretrained(dst)


def test_config_of_another_model_type(saved, tmp_path):
    _, _, folder = saved
    dst = _copy(folder, tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["model_type"] = "qwen2"
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="type 'qwen2', not 'emcot'.*from_components"):
        EmCoTPolicy.from_pretrained(dst)


def test_missing_normalisation_statistics(saved, tmp_path):
    _, _, folder = saved
    with pytest.raises(ValueError, match="ur5"):
        EmCoTPolicy.from_pretrained(folder, robot="ur5")
    dst = _copy(folder, tmp_path)
    (dst / "norm_stats.json").unlink()
    with pytest.raises(ValueError, match="norm_stats.json"):
        EmCoTPolicy.from_pretrained(dst)


def test_not_a_policy_folder(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        EmCoTPolicy.from_pretrained(tmp_path)


def test_save_is_atomic_when_it_fails(saved, tmp_path, monkeypatch):
    policy, _, _ = saved
    target = tmp_path / "atomic"
    policy.save_pretrained(target)
    before = sorted(p.name for p in target.iterdir())

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(policy.processor, "save_pretrained", boom)
    with pytest.raises(OSError):
        policy.save_pretrained(target)
    assert sorted(p.name for p in target.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".atomic.")]
