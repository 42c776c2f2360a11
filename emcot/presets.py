"""Named model sizes for :meth:`EmCoTConfig.from_preset`."""

from __future__ import annotations

from emcot.config import FlowSamplerConfig
from emcot.experts.config import EXPERT_NAMES, ExpertConfig
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


PRESETS = {"tiny": tiny, "halo-4.5b": halo_4_5b}
