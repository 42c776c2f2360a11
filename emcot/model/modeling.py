"""`EmCoTModel`: the Mixture-of-Transformers policy network as a `transformers.PreTrainedModel`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from emcot.config import AttentionBackend, EmCoTConfig
from emcot.experts.action import ActionIO
from emcot.experts.block import RMSNorm
from emcot.experts.embeddings import is_zero_init, zero_init
from emcot.experts.generation import SubgoalIO
from emcot.experts.keypoints import CameraKeypoints
from emcot.experts.state_aware import StateAwareReRepresentation
from emcot.experts.understanding import UnderstandingIO
from emcot.io_utils import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Range, check_value
from emcot.model.attention import BACKENDS, KVCache, TopKHistoryMask, make_mask
from emcot.model.backbone import MoTBackbone, PreparedQuery
from emcot.model.embedding import embed_plan, encode_images
from emcot.model.inputs import LossOutput, SampleBatch, SegmentInputs
from emcot.model.losses import compute_loss, compute_padded_loss, loss_counts
from emcot.sequence.plan import AttnMode, Modality, Segment, SequencePlan


@dataclass
class CausalLMOutput(ModelOutput):
    """Text-path output: next-token logits (and the mean cross-entropy when labels were given)."""

    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None


class EmCoTModel(PreTrainedModel):
    """Three experts (understanding, subgoal generation, action) sharing one attention per layer.

    Text-only calls (``model(input_ids=ids)``) run the understanding expert and behave like the
    ``Qwen2ForCausalLM`` it was initialised from. The multimodal forward is :meth:`embed` (a plan's
    inputs → embeddings), :meth:`run_plan` (the backbone under the plan's mask) and
    :meth:`compute_loss` (training); trace generation composes the same methods.
    """

    config: EmCoTConfig
    config_class = EmCoTConfig
    base_model_prefix = "emcot"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MoTLayer"]
    _tied_weights_keys = {"understanding.lm_head.weight": "understanding.embed_tokens.weight"}

    def __init__(self, config: EmCoTConfig) -> None:
        super().__init__(config)
        hidden = config.hidden_size
        vit_hidden = config.vision.hidden_size if config.vision is not None else None
        self.understanding = UnderstandingIO(
            config.vocab_size, hidden, config.tie_word_embeddings, vit_hidden, config.connector_hidden_act
        )
        self.backbone = MoTBackbone(config.experts, config.rope_theta)
        self.latent_grid = config.latent_grid  # token grid of one subgoal image, computed once
        self.vision = None
        self.latent_codec = None
        self.subgoal = None
        if config.vision is not None:
            from emcot.tokenizers.vision import VisionEncoder

            self.vision = VisionEncoder(config.vision)
        if config.vae is not None:
            from emcot.tokenizers.vae import LatentCodec

            self.latent_codec = LatentCodec.from_config(config.vae)
            self.subgoal = SubgoalIO(config.latent_token_dim, hidden, config.timestep_frequency_dim)
        self.action = ActionIO(
            config.action.action_dim, config.action.state_dim, hidden, config.timestep_frequency_dim
        )
        # Optional (config.memory.state_aware); absent otherwise, so such a model is today's exactly.
        self.state_aware = (
            StateAwareReRepresentation(hidden, config.memory.state_aware_rank)
            if config.memory.state_aware
            else None
        )
        # Optional (config.keypoints): a position-keeping read-out of the primary camera into the
        # state token; it needs pixels, so only a model with a vision encoder takes it.
        self.keypoints = None
        if config.keypoints is not None:
            if config.vision is None:
                raise ValueError("config.keypoints reads the camera, so it needs config.vision")
            self.keypoints = CameraKeypoints(config.keypoints, hidden)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # The VAE and the ViT keep their own (library) initialisation; only our layers are reset.
        # transformers may visit a parent before its children, so the flow out-projections carry
        # their zero start on themselves (experts.embeddings.zero_init) rather than on their parent.
        if isinstance(module, nn.Linear):
            if is_zero_init(module):
                zero_init(module)
            else:
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.understanding.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        if not isinstance(value, nn.Embedding):
            raise TypeError(f"input embeddings must be an nn.Embedding, got {type(value).__name__}")
        self.understanding.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.understanding.lm_head

    def _set_gradient_checkpointing(
        self,
        enable: bool = True,
        gradient_checkpointing_func: Callable[..., Any] | None = None,
        every_n_layers: int = 1,
    ) -> None:
        # The backbone checkpoints every layer with torch's checkpoint; the function and the layer
        # stride of the Hugging Face signature are not used.
        self.backbone.gradient_checkpointing = enable

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Any = None, **kwargs: Any) -> None:
        """Recompute each layer in the backward pass instead of storing its activations."""
        if kwargs:
            raise TypeError(f"gradient_checkpointing_enable got unexpected arguments {sorted(kwargs)}")
        self.backbone.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """Store activations again."""
        self.backbone.gradient_checkpointing = False

    @property
    def attention_backend(self) -> AttentionBackend:
        """The attention kernel every layer uses (see :class:`emcot.config.AttentionBackend`)."""
        return AttentionBackend(self.config.attention_backend)

    def set_attention_backend(self, backend: AttentionBackend | str) -> None:
        """Switch the attention kernel used by every layer (``"sdpa"``, ``"flex"`` or ``"eager"``)."""
        self.config.attention_backend = AttentionBackend.parse(backend).value

    def encode_images(self, patches: torch.Tensor, grids: list[tuple[int, int]]) -> list[torch.Tensor]:
        """ViT patches of several images → their connector outputs, one ``[h·w, H]`` tensor per image."""
        return encode_images(self, patches, grids)

    def embed(self, plan: SequencePlan, inputs: SegmentInputs) -> torch.Tensor:
        """Input embeddings ``[1, L, H]`` of every segment of ``plan`` from its modality's inputs."""
        return embed_plan(self, plan, inputs)

    def compute_loss(self, batch: SampleBatch, generator: torch.Generator | None = None) -> LossOutput:
        """Teacher-forced losses of a packed batch: cross-entropy, subgoal MSE and action L1, weighted
        by ``config.loss``; flow noise and times are drawn from ``generator``."""
        return compute_loss(self, batch, generator)

    def compute_padded_loss(
        self, batches: Sequence[SampleBatch], generator: torch.Generator | None = None
    ) -> LossOutput:
        """The same losses for several batches run as one ``[B, L]`` padded batch, a row each."""
        return compute_padded_loss(self, batches, generator)

    def loss_counts(self, batch: SampleBatch) -> dict[str, int]:
        """The element counts :meth:`compute_loss` normalises each term by, known before the forward."""
        return loss_counts(self.config, batch)

    def new_cache(self) -> KVCache:
        """An empty KV cache for this model."""
        return KVCache(self.config.num_hidden_layers)

    def prepare_query(
        self,
        plan: SequencePlan,
        query_start: int = 0,
        key_drop: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> PreparedQuery:
        """Mask, RoPE positions and expert routing of ``plan``'s tokens from ``query_start`` on.

        They depend only on the plan, so a denoising loop prepares them once and runs every
        step with :meth:`run_prepared`.
        """
        device = device if device is not None else self.device
        layout = plan.layout(device)
        mask = make_mask(self.attention_backend, layout, query_start, key_drop)
        top_k = self.config.memory.top_k
        if top_k and bool(layout.history.any()):
            if not BACKENDS[self.attention_backend].per_row_masks:
                raise ValueError(
                    "Top-K history attention (config.memory.top_k) needs a dense mask; "
                    f"use the sdpa or eager attention backend, not {self.attention_backend.value}"
                )
            mask = TopKHistoryMask(mask, layout.history, top_k)
        return PreparedQuery(
            query_start=query_start,
            experts=layout.expert[query_start:],
            positions=plan.positions(device)[query_start:],
            mask=mask,
        )

    def run_prepared(
        self,
        embeds: torch.Tensor,
        query: PreparedQuery,
        cache: KVCache | None = None,
        write_cache: bool = False,
    ) -> torch.Tensor:
        """Run the backbone on ``embeds [B, n, H]`` of a prepared query; returns final-normed hidden states.

        The tokens before ``query.query_start`` must already be in ``cache``; with ``write_cache``
        the new keys/values are appended, otherwise the cache is only read.
        """
        if cache is not None and len(cache) != query.query_start:
            raise ValueError(
                f"cache holds {len(cache)} tokens but the new tokens start at {query.query_start}"
            )
        return self.backbone(embeds, query, self.attention_backend, cache, write_cache=write_cache)

    def run_plan(
        self,
        embeds: torch.Tensor,
        plan: SequencePlan,
        query_start: int = 0,
        cache: KVCache | None = None,
        *,
        write_cache: bool = False,
        key_drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the backbone on the tokens of ``plan`` from ``query_start`` on (prepare, then run).

        ``embeds [B, L - query_start, H]`` are the input embeddings of those tokens; the tokens
        before ``query_start`` must already be in ``cache``. Returns final-normed hidden states.
        """
        query = self.prepare_query(plan, query_start, key_drop, embeds.device)
        return self.run_prepared(embeds, query, cache, write_cache)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: KVCache | None = None,
        **kwargs,
    ) -> CausalLMOutput:
        """Text-only causal LM through the understanding expert (Qwen2-compatible).

        ``attention_mask [B, L]`` (1 = token, 0 = padding) supports left-padded batches;
        ``cache`` continues from earlier tokens and is extended in place. ``labels`` give the
        mean next-token cross-entropy (−100 is ignored), as Hugging Face models do.
        """
        if kwargs:
            raise ValueError(
                f"unexpected arguments {sorted(kwargs)}; multimodal inputs go through EmCoTPolicy"
            )
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        b, n = input_ids.shape
        past = len(cache) if cache is not None else 0
        embeds = self.understanding.embed_tokens(input_ids)
        if attention_mask is None:
            plan = SequencePlan([Segment(Modality.TEXT, AttnMode.CAUSAL, past + n)])
            hidden = self.run_plan(embeds, plan, past, cache, write_cache=cache is not None)
        else:
            hidden = self._padded_text_forward(embeds, attention_mask, cache, past)
        logits = self.understanding.logits(hidden)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutput(logits=logits, loss=loss)

    def _padded_text_forward(
        self, embeds: torch.Tensor, attention_mask: torch.Tensor, cache: KVCache | None, past: int
    ) -> torch.Tensor:
        total = attention_mask.shape[1]
        if total != past + embeds.shape[1]:
            raise ValueError(
                f"attention_mask covers {total} tokens but cache ({past}) + input ({embeds.shape[1]}) is {past + embeds.shape[1]}"
            )
        valid = attention_mask.bool()
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        q = torch.arange(past, total, device=embeds.device)[:, None]
        k = torch.arange(total, device=embeds.device)[None, :]
        # Padding queries attend to themselves only, so no softmax row is empty.
        mask = ((k <= q) & valid[:, None, :]) | (k == q)
        experts = torch.zeros(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        # Padding makes the mask differ per row; flex block masks are built from one shared plan,
        # so padded batches use the dense-mask kernel with the same maths.
        backend = self.attention_backend
        if not BACKENDS[backend].per_row_masks:
            backend = AttentionBackend.EAGER
        query = PreparedQuery(past, experts, positions, mask)
        return self.backbone(embeds, query, backend, cache, write_cache=cache is not None)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        max_new_tokens: int = 32,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Text continuation with a KV cache; greedy unless ``do_sample``. Returns prompt + new tokens.

        Rows that reach an EOS token are padded with ``pad_token_id`` (default: the EOS id).
        """
        from emcot.model.sampling import next_token

        max_new_tokens = check_value("max_new_tokens", max_new_tokens, int, NON_NEGATIVE)
        do_sample = check_value("do_sample", do_sample, bool)
        temperature = check_value("temperature", temperature, float, POSITIVE)
        top_k = check_value("top_k", top_k, int | None, AT_LEAST_ONE)
        top_p = check_value("top_p", top_p, float | None, Range(gt=0, le=1))
        eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or [])
        pad = pad_token_id if pad_token_id is not None else (min(eos) if eos else 0)
        cache = self.new_cache()
        logits = self(input_ids, cache=cache).logits[:, -1]
        out: torch.Tensor = input_ids
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for step in range(max_new_tokens):
            token = next_token(
                logits,
                do_sample=do_sample,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=generator,
            )
            token = torch.where(done, torch.full_like(token, pad), token)
            out = torch.cat([out, token[:, None]], dim=1)
            if eos:
                done = done | torch.isin(token, torch.tensor(sorted(eos), device=token.device))
                if bool(done.all()):
                    break
            if step + 1 < max_new_tokens:
                logits = self(token[:, None], cache=cache).logits[:, -1]
        return out

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls, pretrained_model_name_or_path: str | Path, *model_args, **kwargs
    ) -> EmCoTModel:
        """Load a saved emcot model or policy folder through emcot's safe loader.

        Unlike the inherited Hugging Face loader this reads safetensors only (never pickle),
        refuses missing, unexpected or misshapen tensors instead of initialising them at random,
        and reproduces the saved model's outputs on every path. ``transformers.AutoModel`` lands
        here too. Takes ``config``, ``subfolder``, ``torch_dtype``/``dtype`` (casts the weights),
        ``device_map`` (one device) and ``low_cpu_mem_usage``; see
        :func:`emcot.model.loading.load_pretrained`.
        """
        from emcot.model.loading import load_pretrained

        if model_args:
            raise ValueError("EmCoTModel.from_pretrained takes no positional model arguments")
        return load_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_components(
        cls,
        llm: str | Path,
        vision: str | Path | None = None,
        vae: str | Path | None = None,
        *,
        preset: str = "halo-4.5b",
        qk_norm: bool | None = None,
        expert_overrides: dict[str, dict] | None = None,
        vision_overrides: dict | None = None,
        **overrides,
    ) -> EmCoTModel:
        """Build a model from public component checkpoints (HALO's initialisation).

        ``llm``: a Hugging Face Qwen2/Qwen2.5/Qwen3 causal-LM folder, loaded into the
        understanding expert and copied into the other two. ``vision``: a SigLIP/SigLIP2 vision
        folder; ``vae``: a diffusers ``AutoencoderKL`` folder. Parts not given are initialised
        fresh with the sizes of ``preset``. ``expert_overrides`` changes per-expert settings (e.g.
        ``{"act": {"intermediate_size": 2048}}`` for a narrower action MLP, filled by slicing);
        ``vision_overrides`` changes the inferred encoder settings (HALO uses
        ``{"drop_last_layer": True, "max_grid": 70}``); other keyword arguments override
        :class:`EmCoTConfig` fields.
        """
        from emcot.interop.components import ComponentSources, build_from_components

        sources = ComponentSources(
            llm=Path(llm),
            vision=Path(vision) if vision is not None else None,
            vae=Path(vae) if vae is not None else None,
            preset=preset,
            qk_norm=qk_norm,
            expert_overrides=expert_overrides or {},
            vision_overrides=vision_overrides or {},
        )
        return build_from_components(cls, sources, overrides)


def _register() -> None:
    from transformers import AutoModel

    AutoModel.register(EmCoTConfig, EmCoTModel, exist_ok=True)


_register()
