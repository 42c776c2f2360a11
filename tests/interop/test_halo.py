"""`emcot convert halo`: a tiny checkpoint in HALO's exact key layout converts into a working policy."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from emcot.cli.convert import add_convert_arguments, run_convert
from emcot.interop.halo import convert_halo_checkpoint
from emcot.model.loading import load_model
from emcot.model.modeling import EmCoTModel
from emcot.policy.policy import EmCoTPolicy
from emcot.tokenizers.text import HFTextTokenizer
from emcot.tokenizers.vae import VAEConfig
from emcot.types import Observation

H, LAYERS, HEADS, KV_HEADS, HEAD_DIM, MLP, ACT_MLP = 64, 2, 4, 2, 16, 96, 48
VIT, VIT_MLP, VIT_HEADS, VIT_LAYERS, PATCH, VIT_GRID = 32, 64, 4, 2, 4, 8
LATENT_GRID, ACTION_DIM, SUBGOAL = 4, 14, (16, 16)
EXPERT_SUFFIXES = {"und": "", "gen": "_moe_gen", "act": "_moe_act"}


def halo_sincos_table(dim: int, grid: int) -> torch.Tensor:
    """HALO's get_2d_sincos_pos_embed (meshgrid 'xy': first half encodes w), rounded to bf16."""

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    ww, hh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    table = np.concatenate([one_d(dim // 2, ww), one_d(dim // 2, hh)], axis=1)
    return torch.from_numpy(table).float().to(torch.bfloat16).float()


def halo_state_dict(vocab_rows: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Every key of a HALO ``ema.safetensors`` (qk-norm on, narrow act MLP), at tiny sizes."""

    def rand(*shape, scale=0.1):
        return torch.randn(*shape, generator=gen) * scale

    def norm(n):
        return 1.0 + rand(n)

    sd = {
        "language_model.model.embed_tokens.weight": rand(vocab_rows, H, scale=1.0),
        "language_model.lm_head.weight": rand(vocab_rows, H, scale=0.5),
    }
    for suffix in EXPERT_SUFFIXES.values():
        sd[f"language_model.model.norm{suffix}.weight"] = norm(H)
        mlp = ACT_MLP if suffix == "_moe_act" else MLP
        for i in range(LAYERS):
            p = f"language_model.model.layers.{i}."
            for proj, rows in (("q_proj", HEADS), ("k_proj", KV_HEADS), ("v_proj", KV_HEADS)):
                sd[f"{p}self_attn.{proj}{suffix}.weight"] = rand(rows * HEAD_DIM, H, scale=0.3)
                sd[f"{p}self_attn.{proj}{suffix}.bias"] = rand(rows * HEAD_DIM)
            sd[f"{p}self_attn.o_proj{suffix}.weight"] = rand(H, HEADS * HEAD_DIM, scale=0.3)
            sd[f"{p}self_attn.q_norm{suffix}.weight"] = norm(HEAD_DIM)
            sd[f"{p}self_attn.k_norm{suffix}.weight"] = norm(HEAD_DIM)
            sd[f"{p}mlp{suffix}.gate_proj.weight"] = rand(mlp, H, scale=0.3)
            sd[f"{p}mlp{suffix}.up_proj.weight"] = rand(mlp, H, scale=0.3)
            sd[f"{p}mlp{suffix}.down_proj.weight"] = rand(H, mlp, scale=0.3)
            sd[f"{p}input_layernorm{suffix}.weight"] = norm(H)
            sd[f"{p}post_attention_layernorm{suffix}.weight"] = norm(H)
    v = "vit_model.vision_model."
    sd[f"{v}embeddings.patch_embedding.weight"] = rand(VIT, 3 * PATCH * PATCH, scale=0.2)
    sd[f"{v}embeddings.patch_embedding.bias"] = rand(VIT)
    sd[f"{v}embeddings.position_embedding.weight"] = rand(VIT_GRID**2, VIT)
    for j in range(VIT_LAYERS):
        p = f"{v}encoder.layers.{j}."
        for name in ("layer_norm1", "layer_norm2"):
            sd[f"{p}{name}.weight"], sd[f"{p}{name}.bias"] = norm(VIT), rand(VIT)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[f"{p}self_attn.{name}.weight"], sd[f"{p}self_attn.{name}.bias"] = (
                rand(VIT, VIT, scale=0.2),
                rand(VIT),
            )
        sd[f"{p}mlp.fc1.weight"], sd[f"{p}mlp.fc1.bias"] = rand(VIT_MLP, VIT, scale=0.2), rand(VIT_MLP)
        sd[f"{p}mlp.fc2.weight"], sd[f"{p}mlp.fc2.bias"] = rand(VIT, VIT_MLP, scale=0.2), rand(VIT)
    sd[f"{v}post_layernorm.weight"], sd[f"{v}post_layernorm.bias"] = norm(VIT), rand(VIT)
    sd["connector.fc1.weight"], sd["connector.fc1.bias"] = rand(H, VIT), rand(H)
    sd["connector.fc2.weight"], sd["connector.fc2.bias"] = rand(H, H), rand(H)
    sd["vit_pos_embed.pos_embed"] = halo_sincos_table(H, VIT_GRID)
    for name in ("time_embedder", "action_time_embedder"):
        sd[f"{name}.mlp.0.weight"], sd[f"{name}.mlp.0.bias"] = rand(H, 256), rand(H)
        sd[f"{name}.mlp.2.weight"], sd[f"{name}.mlp.2.bias"] = rand(H, H), rand(H)
    sd["vae2llm.weight"], sd["vae2llm.bias"] = rand(H, 64), rand(H)
    sd["llm2vae.weight"], sd["llm2vae.bias"] = rand(64, H), rand(64)
    sd["latent_pos_embed.pos_embed"] = halo_sincos_table(H, LATENT_GRID)
    sd["input_linear_layer.weight"], sd["input_linear_layer.bias"] = rand(H, ACTION_DIM), rand(H)
    sd["output_linear_layer.weight"], sd["output_linear_layer.bias"] = rand(ACTION_DIM, H), rand(ACTION_DIM)
    return sd


def diffusers_to_ldm(sd: dict[str, torch.Tensor], num_up: int) -> dict[str, torch.Tensor]:
    """The test's own inverse table: diffusers AutoencoderKL names → BFL/LDM names (4-D attention)."""
    rules = [
        (r"conv_norm_out\.", lambda m: "norm_out."),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"encoder.down.{m[1]}.block.{m[2]}."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
        (
            r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
            lambda m: f"decoder.up.{num_up - 1 - int(m[1])}.block.{m[2]}.",
        ),
        (
            r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{num_up - 1 - int(m[1])}.upsample.",
        ),
        (r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}."),
        (r"mid_block\.attentions\.0\.group_norm\.", lambda m: "mid.attn_1.norm."),
        (r"mid_block\.attentions\.0\.to_([qkv])\.", lambda m: f"mid.attn_1.{m[1]}."),
        (r"mid_block\.attentions\.0\.to_out\.0\.", lambda m: "mid.attn_1.proj_out."),
        (r"conv_shortcut", lambda m: "nin_shortcut"),
    ]
    out = {}
    for key, value in sd.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        if re.search(r"attn_1\.(q|k|v|proj_out)\.weight$", key):
            value = value[:, :, None, None]
        out[key] = value.clone()
    return out


@pytest.fixture(scope="module")
def halo(tmp_path_factory):
    """A HALO-format folder (src, weights without the gen branch) over a pretrained base folder."""
    from diffusers import AutoencoderKL

    gen = torch.Generator().manual_seed(0)
    root = tmp_path_factory.mktemp("halo")
    base, src = root / "halo_pt_weight", root / "halo_ft_weight"
    base.mkdir(), src.mkdir()
    corpus = ["you are an embodied agent. your task is to: put the cube in the bowl. plan and act."] * 4
    tokenizer = HFTextTokenizer.train(corpus, 300, src)
    rows = len(tokenizer) - 2  # HALO's vocabulary lacks emcot's two think markers
    pretrained = halo_state_dict(rows, gen)
    finetuned = {k: v + 0.01 for k, v in halo_state_dict(rows, gen).items() if "pos_embed" not in k}
    for key in ("time_embedder", "vae2llm", "llm2vae", "latent_pos_embed"):
        finetuned = {k: v for k, v in finetuned.items() if not k.startswith(key)}
    save_file(pretrained, str(base / "ema.safetensors"))
    save_file(finetuned, str(src / "ema.safetensors"))
    llm_config = dict(
        model_type="qwen2", vocab_size=rows, hidden_size=H, intermediate_size=MLP, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, rms_norm_eps=1e-6, rope_theta=10000.0,
        hidden_act="silu", tie_word_embeddings=True, max_position_embeddings=512,
    )  # fmt: skip
    vit_config = dict(
        model_type="siglip_vision_model", hidden_size=VIT, intermediate_size=VIT_MLP, num_attention_heads=VIT_HEADS,
        num_hidden_layers=VIT_LAYERS + 1, patch_size=PATCH, image_size=PATCH * VIT_GRID,
    )  # fmt: skip
    (src / "llm_config.json").write_text(json.dumps(llm_config))
    (src / "vit_config.json").write_text(json.dumps(vit_config))
    vae_config = VAEConfig(
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32, image_size=SUBGOAL
    )
    vae = AutoencoderKL(**vae_config.diffusers_kwargs())
    with torch.no_grad():
        for name, param in vae.named_parameters():
            param.add_(torch.randn(param.shape, generator=gen) * (0.1 if "norm" in name else 0.02))
    save_file(
        diffusers_to_ldm(vae.state_dict(), len(vae_config.block_out_channels)), str(base / "ae.safetensors")
    )
    dst = root / "converted"
    convert_halo_checkpoint(src, dst, base=base, subgoal_size=SUBGOAL)
    merged = {**pretrained, **finetuned}
    return dict(
        src=src, base=base, dst=dst, sd=merged, vae=vae.eval(), rows=rows, llm_config=llm_config, root=root
    )


@pytest.fixture(scope="module")
def policy(halo):
    return EmCoTPolicy.from_pretrained(halo["dst"])


# Every loading path of the converted folder must give the official model's logits (the Hugging
# Face paths once returned an uninitialised RoPE buffer).
LOADERS = {
    "EmCoTPolicy": lambda dst: EmCoTPolicy.from_pretrained(dst).model,
    "EmCoTModel": lambda dst: EmCoTModel.from_pretrained(dst),
    "AutoModel": lambda dst: AutoModel.from_pretrained(dst),
    "EmCoTPolicy-full-memory": lambda dst: load_model(dst, low_memory=False),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_text_logits_match_qwen3_with_halo_und_weights(halo, policy, loader):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    model = LOADERS[loader](halo["dst"])

    rows, sd = halo["rows"], halo["sd"]
    ref = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=rows, hidden_size=H, intermediate_size=MLP, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, attention_bias=True,
            rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
        )
    )  # fmt: skip
    und = {k.replace("language_model.", "", 1): v for k, v in sd.items() if k.startswith("language_model.")}
    und = {k: v for k, v in und.items() if "_moe_" not in k}
    for i in range(LAYERS):
        und[f"model.layers.{i}.self_attn.o_proj.bias"] = torch.zeros(H)
    ref.load_state_dict(und, strict=True)
    ids = torch.randint(0, rows, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        theirs = ref.eval()(input_ids=ids).logits
    assert ours.shape[-1] == len(policy.processor.tokenizer) >= rows + 2
    torch.testing.assert_close(ours[..., :rows], theirs, atol=1e-4, rtol=1e-4)
    embed = model.understanding.embed_tokens.weight
    torch.testing.assert_close(
        embed[rows:], sd["language_model.model.embed_tokens.weight"].mean(0).expand(2, -1)
    )


def test_gen_and_act_weights_land_in_their_experts(halo, policy):
    sd, state = halo["sd"], policy.model.state_dict()
    pairs = {
        "backbone.norms.gen.weight": "language_model.model.norm_moe_gen.weight",
        "backbone.norms.act.weight": "language_model.model.norm_moe_act.weight",
        "subgoal.latent_in.weight": "vae2llm.weight",
        "subgoal.latent_out.bias": "llm2vae.bias",
        "subgoal.time_embedder.mlp.2.weight": "time_embedder.mlp.2.weight",
        "action.action_in.weight": "input_linear_layer.weight",
        "action.action_out.weight": "output_linear_layer.weight",
        "action.time_embedder.mlp.0.weight": "action_time_embedder.mlp.0.weight",
        "understanding.connector.fc1.weight": "connector.fc1.weight",
    }
    for i in range(LAYERS):
        for expert in ("gen", "act"):
            s, ours = EXPERT_SUFFIXES[expert], f"backbone.layers.{i}.experts.{expert}."
            theirs = f"language_model.model.layers.{i}."
            pairs[ours + "q_proj.bias"] = f"{theirs}self_attn.q_proj{s}.bias"
            pairs[ours + "k_norm.weight"] = f"{theirs}self_attn.k_norm{s}.weight"
            pairs[ours + "o_proj.weight"] = f"{theirs}self_attn.o_proj{s}.weight"
            pairs[ours + "mlp.down_proj.weight"] = f"{theirs}mlp{s}.down_proj.weight"
            pairs[ours + "post_attention_layernorm.weight"] = f"{theirs}post_attention_layernorm{s}.weight"
    for ours, theirs in pairs.items():
        torch.testing.assert_close(state[ours], sd[theirs], rtol=0, atol=0, msg=ours)
    config = policy.config
    assert (
        config.experts["act"].intermediate_size == ACT_MLP and config.experts["gen"].intermediate_size == MLP
    )
    assert config.action.action_dim == ACTION_DIM and config.action.state_dim == 0
    assert not config.tie_word_embeddings and "action.state_in.weight" not in state
    # The generation branch came from the base folder, the rest from the fine-tune over it.
    base = load_file(str(halo["base"] / "ema.safetensors"))
    torch.testing.assert_close(state["subgoal.latent_in.weight"], base["vae2llm.weight"])
    assert not torch.equal(state["action.action_in.weight"], base["input_linear_layer.weight"])


def test_flux_ae_maps_onto_diffusers_autoencoder(halo, policy):
    codec, ref = policy.model.latent_codec, halo["vae"]
    images = torch.rand(2, 3, *SUBGOAL, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        latents = codec.encode(images, sample=False)
        expected = (ref.encode(images).latent_dist.mean - 0.1159) * 0.3611
        torch.testing.assert_close(latents, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            codec.decode(latents), ref.decode(latents / 0.3611 + 0.1159).sample, atol=1e-5, rtol=1e-5
        )
    assert codec.config.scaling_factor == pytest.approx(
        0.3611
    ) and codec.config.shift_factor == pytest.approx(0.1159)


def test_vit_features_match_halo_linear_patch_layout(halo, policy):
    from transformers import SiglipVisionConfig
    from transformers.models.siglip.modeling_siglip import SiglipEncoder

    from emcot.tokenizers.vision_processing import patchify

    sd, rows, cols = halo["sd"], 5, 7
    pixels = torch.rand(3, rows * PATCH, cols * PATCH, generator=torch.Generator().manual_seed(3)) * 2 - 1
    # HALO: patchify "chpwq->hwpqc" (channels last), Linear patch embedding, table ids h*70+w.
    halo_patches = torch.einsum("chpwq->hwpqc", pixels.reshape(3, rows, PATCH, cols, PATCH)).reshape(
        rows * cols, -1
    )
    v = "vit_model.vision_model."
    x = F.linear(
        halo_patches, sd[f"{v}embeddings.patch_embedding.weight"], sd[f"{v}embeddings.patch_embedding.bias"]
    )
    ids = (torch.arange(rows)[:, None] * VIT_GRID + torch.arange(cols)[None, :]).flatten()
    x = x + sd[f"{v}embeddings.position_embedding.weight"][ids]
    cfg = SiglipVisionConfig(
        hidden_size=VIT,
        intermediate_size=VIT_MLP,
        num_attention_heads=VIT_HEADS,
        num_hidden_layers=VIT_LAYERS,
    )
    encoder = SiglipEncoder(cfg)
    encoder.load_state_dict(
        {k[len(f"{v}encoder.") :]: t for k, t in sd.items() if k.startswith(f"{v}encoder.")}
    )
    with torch.no_grad():
        hidden = encoder.eval()(inputs_embeds=x[None]).last_hidden_state[0]
        expected = F.layer_norm(
            hidden, (VIT,), sd[f"{v}post_layernorm.weight"], sd[f"{v}post_layernorm.bias"], 1e-6
        )
        ours = policy.model.vision(patchify(pixels, PATCH), [(rows, cols)])
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert policy.config.vision.drop_last_layer and len(policy.model.vision.layers) == VIT_LAYERS


def test_converted_policy_generates_a_full_trace(policy):
    obs = policy.example_observation()
    assert obs.state is None and policy.cameras == ["head"]
    trace = policy.generate_trace(
        obs, "put the cube in the bowl", mode="full", seed=0, max_reasoning_tokens=3, subgoal_steps=2,
        action_steps=2, robot="robotwin",
    )  # fmt: skip
    assert trace.actions.shape == (16, ACTION_DIM) and np.isfinite(trace.actions).all()
    assert trace.subgoal is not None and trace.subgoal.size == SUBGOAL[::-1]
    with pytest.raises(ValueError, match="no state"):
        policy.generate_trace(Observation(obs.images, np.zeros(14, np.float32)), "go", mode="reactive")


def test_cli_arguments_convert(halo, tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    add_convert_arguments(parser)
    args = parser.parse_args(
        [str(halo["src"]), str(tmp_path / "out"), "--base", str(halo["base"]), "--robot", "aloha",
         "--subgoal-size", "16", "16", "--camera", "cam_high", "--horizon", "8"]
    )  # fmt: skip
    assert run_convert(args) == 0
    converted = EmCoTPolicy.from_pretrained(tmp_path / "out", robot="aloha")
    assert converted.cameras == ["cam_high"] and converted.config.action.horizon == 8
    assert "emcot policy" in capsys.readouterr().out


def test_missing_file_and_missing_base_are_clear_errors(halo, tmp_path):
    with pytest.raises(ValueError, match="ema.safetensors"):
        convert_halo_checkpoint(tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="ae.safetensors"):
        convert_halo_checkpoint(halo["src"], tmp_path / "out")
    with pytest.raises(ValueError, match="base folder"):
        convert_halo_checkpoint(halo["src"], tmp_path / "out", base=tmp_path)
    gen_branch = ("time_embedder", "vae2llm", "llm2vae", "latent_pos_embed")
    finetune_only = {k: v for k, v in halo["sd"].items() if not k.startswith(gen_branch)}
    with pytest.raises(ValueError, match="--base"):
        _convert_in_memory(halo, finetune_only)


def _convert_in_memory(halo, sd):
    from emcot.interop.halo_state import convert_halo_state_dict

    vit = json.loads((halo["src"] / "vit_config.json").read_text())
    ae = load_file(str(halo["base"] / "ae.safetensors"))
    return convert_halo_state_dict(sd, halo["llm_config"], vit, ae_sd=ae, subgoal_size=SUBGOAL)


def test_unmapped_key_and_shape_mismatch_are_clear_errors(halo):
    ours, kwargs = _convert_in_memory(halo, dict(halo["sd"]))
    assert kwargs["vocab_size"] == halo["rows"] and "latent_codec.vae.decoder.conv_in.weight" in ours
    with pytest.raises(ValueError, match="no counterpart.*language_model.model.extra_scale"):
        _convert_in_memory(halo, {**halo["sd"], "language_model.model.extra_scale": torch.ones(1)})
    bad = dict(halo["sd"])
    key = "language_model.model.layers.1.mlp_moe_act.down_proj.weight"
    bad[key] = bad[key][:, :-4]
    with pytest.raises(ValueError, match=re.escape(key)):
        _convert_in_memory(halo, bad)
    table = dict(halo["sd"])
    table["latent_pos_embed.pos_embed"] = table["latent_pos_embed.pos_embed"].flip(0)
    with pytest.raises(ValueError, match="position convention"):
        _convert_in_memory(halo, table)
    wrong_config = {**halo["llm_config"], "hidden_size": 128}
    with pytest.raises(ValueError, match="hidden_size"):
        from emcot.interop.halo_state import convert_halo_state_dict

        convert_halo_state_dict(halo["sd"], wrong_config, None)
