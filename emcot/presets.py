"""Named model sizes for :meth:`EmCoTConfig.from_preset`."""

from __future__ import annotations

from dataclasses import dataclass

from emcot.config import FlowSamplerConfig
from emcot.experts.config import EXPERT_NAMES, ExpertConfig
from emcot.io_utils import AT_LEAST_ONE, check_fields
from emcot.tokenizers.actions import ActionSpaceConfig
from emcot.tokenizers.vae import VAEConfig
from emcot.tokenizers.vision_config import VisionEncoderConfig


def tiny() -> dict:
    """A few million parameters: runs a full trace on a laptop CPU in well under a second."""
    return dict(
        experts={
            name: ExpertConfig(
                hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, qk_norm=True
            )
            for name in EXPERT_NAMES
        },
        vocab_size=512,
        tie_word_embeddings=True,
        rope_theta=10_000.0,
        vision=VisionEncoderConfig.tiny(),
        vae=VAEConfig.tiny(),
        action=ActionSpaceConfig(action_dim=4, state_dim=4, horizon=8, norm_mode="mean_std"),
        # Guidance off: tiny models are trained without condition dropout unless a recipe adds it.
        subgoal_sampler=FlowSamplerConfig.subgoal(num_steps=10, text_guidance=1.0, image_guidance=1.0),
        action_sampler=FlowSamplerConfig.actions(),
    )


@dataclass(frozen=True)
class SmallSize:
    """The knobs :func:`small` is sized by (``bench/preset_budget.py`` measures candidates of them)."""

    hidden_size: int = 192
    num_layers: int = 6
    num_heads: int = 6
    intermediate_size: int = 512
    vision_hidden_size: int = 128
    vision_layers: int = 4
    image_px: int = 128
    vision_patch: int = 16
    subgoal_px: int = 64
    vocab_size: int = 1024

    def __post_init__(self) -> None:
        names = [f for f in self.__dataclass_fields__]
        check_fields(self, "SmallSize", **{name: AT_LEAST_ONE for name in names})
        if self.image_px % self.vision_patch or self.hidden_size % self.num_heads:
            raise ValueError(
                "SmallSize: vision_patch must divide image_px and num_heads must divide hidden_size, got "
                f"{self.vision_patch}/{self.image_px} and {self.num_heads}/{self.hidden_size}"
            )


def small_sized(size: SmallSize) -> dict:
    """The ``small`` architecture at another size (for measuring candidates)."""
    vision = VisionEncoderConfig(
        hidden_size=size.vision_hidden_size,
        intermediate_size=4 * size.vision_hidden_size,
        num_layers=size.vision_layers,
        num_heads=max(1, size.vision_hidden_size // 32),
        patch_size=size.vision_patch,
        max_grid=size.image_px // size.vision_patch,
        max_side_px=size.image_px,
        min_side_px=size.vision_patch,
    )
    return dict(
        experts={
            name: ExpertConfig(
                hidden_size=size.hidden_size,
                num_layers=size.num_layers,
                num_heads=size.num_heads,
                num_kv_heads=max(1, size.num_heads // 3),
                intermediate_size=size.intermediate_size,
                qk_norm=True,
            )
            for name in EXPERT_NAMES
        },
        vocab_size=size.vocab_size,
        tie_word_embeddings=True,
        rope_theta=10_000.0,
        vision=vision,
        vae=VAEConfig.small(image_size=(size.subgoal_px, size.subgoal_px)),
        action=ActionSpaceConfig(action_dim=4, state_dim=4, horizon=8, norm_mode="mean_std"),
        # The mw recipes train with condition dropout, so guidance is usable; 2.0 / 1.5 are mild
        # scales for a model this size (HALO's 4.0 / 2.0 overshoot on small latents).
        subgoal_sampler=FlowSamplerConfig.subgoal(num_steps=20, text_guidance=2.0, image_guidance=1.5),
        action_sampler=FlowSamplerConfig.actions(),
    )


def small() -> dict:
    """The CPU-sized Meta-World policy: 9.1 M parameters, three experts of hidden 192 × 6 layers.

    Sized by ``bench/preset_budget.py`` (2 CPU cores shared with another training job, fp32,
    AdamW steps on packs of 1536 tokens of the mw mixture), tokens/s in four runs at 1-minute load
    3.9 / 1.9 / 2.3 / 1.7: hidden 128 × 4 layers (4.1 M params) 0.70 / 4.35 / 4.46 / 5.09 k;
    **192 × 6 (9.1 M) 0.34 / 1.54 / 2.18 / 2.53 k**; 256 × 6 (15.8 M) 0.24 / 1.54 / 1.56 / 1.76 k.
    192 × 6 keeps ≥ 2.4 M tokens in 2 h even on the busiest run (11-18 M at load ≤ 2.3), so a
    recipe sees the dataset's ~10 M EM-CoT trace tokens about once; 256 × 6 buys little width
    for 30 % fewer tokens and slower control steps.
    Frames: the 128 px ``corner2`` recording at patch 16 is an 8 × 8 grid, 64 ViT tokens, as 64 px
    at patch 8 — same tokens, same measured speed (1.96 vs 1.92 k tokens/s), but no downscaling.
    Subgoals: 64 px (``VAEConfig.small``: 4× downsample, patch 2 → 64 latent tokens). A full
    EM-CoT trace is ~340 tokens, action-only ~120, VQA ~120, a 2-frame future sample ~350.
    Actions: 4-d (xyz delta + gripper), 8-step chunks = 0.1 s at Meta-World's 80 Hz; the scripted
    experts are feedback controllers, so a chunk played open loop stays short.
    """
    return small_sized(SmallSize())


def halo_4_5b() -> dict:
    """HALO's size: every expert is Qwen2.5-1.5B (with QK-norm), SigLIP so400m/14, FLUX VAE, 14-d actions."""
    return dict(
        experts={
            name: ExpertConfig(
                hidden_size=1536,
                num_layers=28,
                num_heads=12,
                num_kv_heads=2,
                intermediate_size=8960,
                rms_norm_eps=1e-6,
                qkv_bias=True,
                qk_norm=True,
            )
            for name in EXPERT_NAMES
        },
        vocab_size=151936,
        tie_word_embeddings=True,
        rope_theta=1_000_000.0,
        vision=VisionEncoderConfig.siglip_so400m_14(),
        vae=VAEConfig.flux(),
        action=ActionSpaceConfig(action_dim=14, state_dim=14, horizon=16, norm_mode="none"),
        subgoal_sampler=FlowSamplerConfig.subgoal(),
        action_sampler=FlowSamplerConfig.actions(),
    )


PRESETS = {"tiny": tiny, "small": small, "halo-4.5b": halo_4_5b}
