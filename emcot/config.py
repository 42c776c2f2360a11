"""`EmCoTConfig`: the whole model's configuration, with typed sub-configs and presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Protocol

from transformers import PretrainedConfig

from emcot.experts.config import EXPERT_NAMES, ExpertConfig
from emcot.experts.keypoints import KeypointConfig
from emcot.io_utils import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    UNIT_INTERVAL,
    Range,
    check_fields,
    check_value,
    dataclass_from_dict,
    parse_choice,
)
from emcot.memory.config import MemoryConfig
from emcot.tokenizers.actions import ActionSpaceConfig
from emcot.tokenizers.vae import VAEConfig
from emcot.tokenizers.vision_config import VisionEncoderConfig

TIME_DISTRIBUTIONS = ("logit_normal", "beta", "uniform")
RENORM_MODES = ("global", "none")


class AttentionBackend(str, Enum):
    """Attention kernels (``config.attention_backend``); their implementations are registered in
    :mod:`emcot.model.attention`."""

    SDPA = "sdpa"  # dense boolean mask; the fast path on CPU
    FLEX = "flex"  # flex_attention block masks; long packed sequences on GPU
    EAGER = "eager"  # plain matmul-softmax reference

    @classmethod
    def parse(cls, name: str | AttentionBackend) -> AttentionBackend:
        """The backend called ``name``; a typo names the closest valid choice."""
        return parse_choice(cls, name, "attention_backend")


@dataclass
class FlowSamplerConfig:
    """Settings of one denoising run (classifier-free guidance as in BAGEL/HALO).

    ``text_guidance`` and ``image_guidance`` are CFG scales (1.0 = off) applied only while
    ``guidance_interval[0] < t <= guidance_interval[1]``. ``renorm="global"`` rescales the guided
    velocity so its norm never exceeds the conditional one, by a factor clamped to
    ``[renorm_min, 1]``. ``noise_scale`` multiplies the starting noise: 1 samples the learned
    distribution, 0 starts every run at the noise's mean (deterministic, a low-temperature sample).
    The defaults are the action preset; see :meth:`subgoal`/:meth:`actions`.
    """

    num_steps: int = 10
    shift: float = 1.0
    text_guidance: float = 1.0
    image_guidance: float = 1.0
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    renorm: str = "global"
    renorm_min: float = 0.0
    noise_scale: float = 1.0

    def __post_init__(self) -> None:
        check_fields(
            self,
            shift=POSITIVE,
            num_steps=AT_LEAST_ONE,
            text_guidance=NON_NEGATIVE,
            image_guidance=NON_NEGATIVE,
            renorm_min=UNIT_INTERVAL,
            noise_scale=NON_NEGATIVE,
        )
        interval = self.guidance_interval
        if not 0.0 <= interval[0] <= interval[1] <= 1.0:
            raise ValueError(
                f"FlowSamplerConfig.guidance_interval must be (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1, "
                f"got {self.guidance_interval!r}."
            )
        if self.renorm not in RENORM_MODES:
            raise ValueError(f"FlowSamplerConfig.renorm must be one of {RENORM_MODES}, got {self.renorm!r}.")

    @classmethod
    def subgoal(cls, **overrides: Any) -> FlowSamplerConfig:
        """HALO's subgoal-image preset: 50 steps, shift 3, CFG text 4 / image 2 on t ∈ (0.4, 1]."""
        base = dict(
            num_steps=50,
            shift=3.0,
            text_guidance=4.0,
            image_guidance=2.0,
            guidance_interval=(0.4, 1.0),
            renorm="global",
            renorm_min=0.0,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def actions(cls, **overrides: Any) -> FlowSamplerConfig:
        """HALO's action preset: 10 linear steps, guidance off (scales 1.0).

        Scales above 1 turn on action guidance (see :func:`emcot.inference.guidance.action_guidance`); they help only a policy
        whose action-only samples were trained with text and image dropout.
        """
        return cls(**overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (the interval becomes a list)."""
        out = asdict(self)
        out["guidance_interval"] = list(self.guidance_interval)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlowSamplerConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        data = dict(data)
        if "guidance_interval" in data:
            data["guidance_interval"] = tuple(data["guidance_interval"])
        return dataclass_from_dict(cls, data, label="Unknown FlowSamplerConfig keys")


@dataclass
class LossConfig:
    """Loss weights and the flow-matching time distributions used in training.

    Stage 1 of the HALO recipe weighs text / subgoal / action as 0.25 / 0.5 / 1.0; stage 2 uses
    equal weights. ``vqa_weight`` is λ of ``L = L_IL + λ·L_VQA``: it weighs the answers of
    video-QA samples (VQA samples with a history), a term of their own named ``vqa``.
    """

    text_weight: float = 1.0
    subgoal_weight: float = 1.0
    action_weight: float = 1.0
    vqa_weight: float = 1.0
    action_loss: str = "l1"
    subgoal_time_distribution: str = "logit_normal"
    subgoal_time_shift: float = 1.0
    action_time_distribution: str = "logit_normal"
    action_time_shift: float = 1.0

    def __post_init__(self) -> None:
        check_fields(
            self,
            "loss",
            text_weight=NON_NEGATIVE,
            subgoal_weight=NON_NEGATIVE,
            action_weight=NON_NEGATIVE,
            vqa_weight=NON_NEGATIVE,
            subgoal_time_shift=POSITIVE,
            action_time_shift=POSITIVE,
        )
        if self.action_loss not in ("l1", "mse"):
            raise ValueError(f"loss.action_loss must be 'l1' or 'mse', got '{self.action_loss}'")
        for name in ("subgoal_time_distribution", "action_time_distribution"):
            if getattr(self, name) not in TIME_DISTRIBUTIONS:
                raise ValueError(
                    f"loss.{name} must be one of {TIME_DISTRIBUTIONS}, got '{getattr(self, name)}'"
                )

    @property
    def weights(self) -> dict[str, float]:
        """Weight of each loss term, by the term's name (``text``, ``subgoal``, ``action``, ``vqa``)."""
        return {
            "text": self.text_weight,
            "subgoal": self.subgoal_weight,
            "action": self.action_weight,
            "vqa": self.vqa_weight,
        }

    def to_dict(self) -> dict:
        """JSON-safe dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LossConfig:
        """Inverse of :meth:`to_dict`."""
        return dataclass_from_dict(cls, data)


class _SubConfig(Protocol):
    """What :func:`_as` needs of a sub-config class: construction from its ``to_dict`` form."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any: ...


# Each entry: (attribute, class, optional). Optional sub-configs may be None (e.g. a text-only model).
_SUB_CONFIGS: tuple[tuple[str, type[_SubConfig], bool], ...] = (
    ("vision", VisionEncoderConfig, True),
    ("vae", VAEConfig, True),
    ("action", ActionSpaceConfig, False),
    ("loss", LossConfig, False),
    ("subgoal_sampler", FlowSamplerConfig, False),
    ("action_sampler", FlowSamplerConfig, False),
    ("memory", MemoryConfig, False),
    ("keypoints", KeypointConfig, True),
)


def _as(cls: type[_SubConfig], value: Any, optional: bool, name: str) -> Any:
    if value is None:
        return None if optional else cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls.from_dict(value)
    raise ValueError(f"EmCoTConfig.{name} must be a {cls.__name__} or a dict, got {type(value).__name__}")


class EmCoTConfig(PretrainedConfig):
    """Configuration of an :class:`emcot.EmCoTModel`.

    Holds one :class:`ExpertConfig` per expert (``und``, ``gen``, ``act``), the vocabulary and
    RoPE settings shared by the backbone, and the sub-configs of the understanding-image
    encoder (``vision``), the subgoal latent codec (``vae``), the action space, the losses, the
    two flow samplers, the optional memory systems (``memory``, off by default) and the optional
    camera keypoints (``keypoints``, :mod:`emcot.experts.keypoints`; None: none). Use :meth:`from_preset` for the named sizes.
    """

    model_type = "emcot"

    def __init__(
        self,
        *,
        experts: dict[str, ExpertConfig | dict] | None = None,
        vocab_size: int = 151936,
        tie_word_embeddings: bool = True,
        rope_theta: float = 1_000_000.0,
        attention_backend: str = "sdpa",
        connector_hidden_act: str = "gelu_pytorch_tanh",
        timestep_frequency_dim: int = 256,
        subgoal_vit_copy: bool = True,
        vision: VisionEncoderConfig | dict | None = None,
        vae: VAEConfig | dict | None = None,
        action: ActionSpaceConfig | dict | None = None,
        loss: LossConfig | dict | None = None,
        subgoal_sampler: FlowSamplerConfig | dict | None = None,
        action_sampler: FlowSamplerConfig | dict | None = None,
        memory: MemoryConfig | dict | None = None,
        keypoints: KeypointConfig | dict | None = None,
        max_prompt_tokens: int = 2048,
        **kwargs,
    ) -> None:
        experts = experts or {name: ExpertConfig() for name in EXPERT_NAMES}
        missing = [name for name in EXPERT_NAMES if name not in experts]
        unknown = [name for name in experts if name not in EXPERT_NAMES]
        if missing or unknown:
            raise ValueError(
                f"experts must be exactly {list(EXPERT_NAMES)}; missing {missing}, unknown {unknown}"
            )
        self.experts = {
            name: cfg if isinstance(cfg, ExpertConfig) else ExpertConfig.from_dict(cfg)
            for name, cfg in experts.items()
        }
        signatures = {name: cfg.attention_signature for name, cfg in self.experts.items()}
        if len(set(signatures.values())) != 1:
            raise ValueError(
                "all experts share one attention, so (hidden_size, num_layers, num_heads, num_kv_heads, head_dim) "
                f"must agree; got {signatures}"
            )
        # Stored as the plain name so config.json stays a string.
        attention_backend = AttentionBackend.parse(attention_backend).value
        self.vocab_size = check_value("EmCoTConfig.vocab_size", vocab_size, int, AT_LEAST_ONE)
        self.rope_theta = check_value("EmCoTConfig.rope_theta", rope_theta, float, Range(gt=1))
        self.attention_backend = attention_backend
        self.connector_hidden_act = check_value("EmCoTConfig.connector_hidden_act", connector_hidden_act, str)
        self.timestep_frequency_dim = check_value(
            "EmCoTConfig.timestep_frequency_dim", timestep_frequency_dim, int, Range(ge=2)
        )
        self.subgoal_vit_copy = check_value("EmCoTConfig.subgoal_vit_copy", subgoal_vit_copy, bool)
        # Attention memory grows with the square of the prompt: cap it instead of letting a huge
        # instruction exhaust the machine.
        self.max_prompt_tokens = check_value(
            "EmCoTConfig.max_prompt_tokens", max_prompt_tokens, int, AT_LEAST_ONE
        )
        check_value("EmCoTConfig.tie_word_embeddings", tie_word_embeddings, bool)
        for name, cls, optional in _SUB_CONFIGS:
            value = locals()[name]
            if name == "subgoal_sampler" and value is None:
                value = FlowSamplerConfig.subgoal()
            if name == "action_sampler" and value is None:
                value = FlowSamplerConfig.actions()
            setattr(self, name, _as(cls, value, optional, name))
        # PreTrainedConfig's dataclass signature omits the keys its init accepts at runtime
        # (huggingface_hub's strict(accept_kwargs=True) routes them to __post_init__).
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)  # type: ignore[call-arg]

    @property
    def hidden_size(self) -> int:
        """Width of the residual stream, shared by all experts."""
        return self.experts["und"].hidden_size

    @property
    def num_hidden_layers(self) -> int:
        """Depth of the backbone."""
        return self.experts["und"].num_layers

    @property
    def latent_grid(self) -> tuple[int, int]:
        """Token grid (rows, columns) of one subgoal image; (0, 0) without a VAE."""
        if self.vae is None:
            return (0, 0)
        stride = self.vae.downsample * self.vae.patch_size
        return (self.vae.image_size[0] // stride, self.vae.image_size[1] // stride)

    @property
    def latent_token_dim(self) -> int:
        """Width of one subgoal latent token (patchified VAE channels); 0 without a VAE."""
        return 0 if self.vae is None else self.vae.latent_channels * self.vae.patch_size**2

    def to_dict(self) -> dict[str, Any]:
        """Serialise, turning typed sub-configs into plain dictionaries."""
        out = super().to_dict()
        out["experts"] = {name: cfg.to_dict() for name, cfg in self.experts.items()}
        for name, _, _ in _SUB_CONFIGS:
            value = getattr(self, name)
            out[name] = None if value is None else value.to_dict()
        return out

    @classmethod
    def from_preset(cls, name: str, **overrides) -> EmCoTConfig:
        """A named configuration: ``"tiny"`` (CPU-friendly, a few M parameters) or ``"halo-4.5b"``."""
        from emcot.presets import PRESETS

        if name not in PRESETS:
            raise ValueError(f"unknown preset '{name}'; available presets: {sorted(PRESETS)}")
        kwargs = PRESETS[name]()
        kwargs.update(overrides)
        return cls(**kwargs)


def _register() -> None:
    from transformers import AutoConfig

    AutoConfig.register(EmCoTConfig.model_type, EmCoTConfig, exist_ok=True)


_register()
