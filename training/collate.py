"""Samples of every kind (trace, action-only, VQA, visual generation) → packed `SampleBatch`: one
sequence holding several samples, with everything the forward needs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from emcot.io_utils import UNIT_INTERVAL, Range, check_fields
from emcot.memory.history import HistoryInputs, encode_history, select_history
from emcot.model.inputs import SampleBatch
from emcot.policy.processor import EmCoTProcessor
from emcot.sequence.layouts import SampleLayout, TraceMode, generation_layout, trace_layout, vqa_layout
from emcot.sequence.plan import AttnMode, Modality, Segment, SequencePlan
from emcot.tokenizers.vae import resize_rgb, to_unit_range
from emcot.types import EmCoTSample, SampleKind


def sample_mode(sample: EmCoTSample) -> TraceMode:
    """``full`` with reasoning and subgoal, ``reason`` with reasoning only, else ``reactive``."""
    if sample.reasoning is None:
        return TraceMode.REACTIVE
    return TraceMode.FULL if sample.subgoal is not None else TraceMode.REASON


@dataclass(frozen=True)
class ConditionDropout:
    """Probabilities of dropping a sample's conditions, so guidance works at inference.

    Generation samples: ``text`` hides the prompt from the noisy target (as the no-text guidance
    branch does), ``vit`` removes the context frames' ViT segments and ``vae`` their clean latent
    copies (as the no-image branch does). Action-only samples (when ``action_samples``): ``text``
    hides the prompt and marker from the action chunk, so it sees the observation alone, and ``vit``
    removes the cameras, so it sees state and instruction alone — the two contexts of action
    guidance. Like HALO, which drops conditions in its action-only data but never in EM-CoT traces,
    samples with reasoning and VQA samples are never dropped: their text is what they learn.
    ``state`` is not for guidance: it hides the state token of any trace sample (reasoning ones too)
    from the tokens after it, so the hand must sometimes be found in the camera frame — a pressure to
    read the image that the state otherwise removes.
    """

    text: float = 0.0
    vit: float = 0.0
    vae: float = 0.0
    action_samples: bool = True
    state: float = 0.0

    def __post_init__(self) -> None:
        check_fields(
            self,
            "data.dropout",
            text=UNIT_INTERVAL,
            vit=UNIT_INTERVAL,
            vae=UNIT_INTERVAL,
            state=UNIT_INTERVAL,
        )

    def draw_state(self, rng: np.random.Generator | None) -> bool:
        """Whether to hide one trace sample's state; no draw at ``state`` 0, so old runs replay exactly."""
        return rng is not None and self.state > 0.0 and rng.random() < self.state

    def draw(self, rng: np.random.Generator | None) -> tuple[bool, bool, bool]:
        """Whether to drop (text, vit, vae) for one sample; nothing without a generator."""
        if rng is None:
            return False, False, False
        return rng.random() < self.text, rng.random() < self.vit, rng.random() < self.vae


@dataclass(frozen=True)
class SubgoalBlur:
    """Subgoals of imagined quality for the tokens that read them.

    At run time the action chunk reads the model's *imagined* subgoal, blurrier than any real frame
    training shows it (``bench/trace_quality.py``: 21.8 dB against the real frame, 35.7 dB for the
    codec's own reconstruction). With probability ``p`` a full trace's subgoal is shown to what
    follows it — its clean latent copy and ViT copy — shrunk by a random factor in
    ``[2, max_factor]`` and scaled back, while its noisy segment still learns the sharp frame.
    """

    p: float = 0.0
    max_factor: int = 4

    def __post_init__(self) -> None:
        check_fields(self, "data.subgoal_blur", p=UNIT_INTERVAL, max_factor=Range(ge=2))

    def draw(self, rng: np.random.Generator | None) -> int:
        """The shrink factor for one subgoal (1: shown sharp); no draw at p = 0, so old runs replay exactly."""
        if rng is None or self.p == 0.0 or rng.random() >= self.p:
            return 1
        return int(rng.integers(2, self.max_factor + 1))


def blur_rgb(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` shrunk ``factor``× by area averaging and scaled back bicubically (unchanged at 1)."""
    if factor == 1:
        return image
    height, width = image.shape[:2]
    small = np.asarray(
        Image.fromarray(image).resize(
            (max(1, width // factor), max(1, height // factor)), Image.Resampling.BOX
        )
    )
    return resize_rgb(small, (height, width))


def vqa_turns(sample: EmCoTSample) -> list[tuple[str, str]]:
    """``metadata["turns"]`` as (question, answer) pairs, else the single pair (instruction, reasoning)."""
    turns = sample.metadata.get("turns")
    if turns is None:
        if sample.reasoning is None:
            raise ValueError("a VQA sample needs an answer: set reasoning or metadata['turns']")
        return [(sample.instruction, sample.reasoning)]
    return [(str(q), str(a)) for q, a in turns]


@dataclass
class _Encoded:
    """One sample's layout and its inputs in plan order (``latent_refs``: per latent segment, an
    index into ``latents``; ``states``/``actions``/``pads``: one per state/action segment)."""

    layout: SampleLayout
    # Patches are None when only counting tokens (``encode=False``).
    vit: list[tuple[torch.Tensor | None, tuple[int, int]]] = field(default_factory=list)
    states: list[torch.Tensor] = field(default_factory=list)
    latents: list[torch.Tensor] = field(default_factory=list)
    latent_refs: list[int] = field(default_factory=list)
    actions: list[torch.Tensor] = field(default_factory=list)
    pads: list[torch.Tensor] = field(default_factory=list)
    drop: list[bool] = field(default_factory=list)


# An encoder lays out one sample of its kind: (sample, dropout generator or None, encode images?).
_Encoder = Callable[[EmCoTSample, np.random.Generator | None, bool], _Encoded]


class SampleCollator:
    """Turns :class:`EmCoTSample` lists of any kind into packed :class:`SampleBatch` es with the shared planner."""

    def __init__(
        self,
        processor: EmCoTProcessor,
        dropout: ConditionDropout | None = None,
        subgoal_blur: SubgoalBlur | None = None,
    ) -> None:
        self.processor = processor
        self.dropout = dropout or ConditionDropout()
        self.subgoal_blur = subgoal_blur or SubgoalBlur()
        config = processor.config
        if config.vae is None:
            self.latent_grid = (0, 0)
        else:
            ds, p = config.vae.downsample, config.vae.patch_size
            h, w = config.vae.image_size
            self.latent_grid = (h // ds // p, w // ds // p)
        self._encoders: dict[SampleKind, _Encoder] = {
            SampleKind.TRACE: self._encode_trace,
            SampleKind.VQA: self._encode_vqa,
            SampleKind.GENERATION: self._encode_generation,
        }

    @property
    def latent_tokens(self) -> int:
        """Tokens of one VAE image."""
        return self.latent_grid[0] * self.latent_grid[1]

    def layout_for(
        self,
        sample: EmCoTSample,
        mode: TraceMode,
        vit_lengths: list[int],
        subgoal_vit: int,
        history: HistoryInputs | None = None,
    ) -> SampleLayout:
        """The sample's segments (the same function generation follows)."""
        proc = self.processor
        reasoning = proc.tokenizer.encode(sample.reasoning) if sample.reasoning is not None else None
        return trace_layout(
            mode=mode,
            vit_lengths=vit_lengths,
            has_state=proc.config.action.state_dim > 0,
            framed_instruction=proc.frame_instruction(sample.instruction),
            special=proc.special,
            reasoning=reasoning,
            subgoal_tokens=self.latent_tokens,
            subgoal_vit_tokens=subgoal_vit,
            horizon=proc.config.action.horizon,
            history=history.segments if history is not None else (),
        )

    def num_tokens(self, sample: EmCoTSample) -> int:
        """Sequence length of ``sample`` before condition dropout (the packer's unit); encodes no image."""
        return sum(s.length for s in self._encode(sample, None, encode=False).layout.segments)

    def __call__(
        self,
        samples: Sequence[EmCoTSample],
        rng: np.random.Generator | None = None,
        pad_to: int | None = None,
    ) -> SampleBatch:
        """Pack ``samples``; ``rng`` draws condition dropout (a fresh generator when None).

        ``pad_to`` appends loss-free padding tokens to every sample up to that length, the layout of
        a classic padded batch (for comparisons; packing needs no padding).
        """
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        rng = rng if rng is not None else np.random.default_rng()
        encoded = [self._encode(sample, rng) for sample in samples]
        if pad_to is not None:
            for e in encoded:
                missing = pad_to - sum(s.length for s in e.layout.segments)
                if missing < 0:
                    raise ValueError(f"a sample is longer than pad_to={pad_to}; pad to the longest sample")
                if missing:
                    e.layout.segments.append(Segment(Modality.TEXT, AttnMode.CAUSAL, missing, False, "pad"))
                    e.layout.text_ids.append([self.processor.special.eos] * missing)
                    e.drop.append(False)
        return self._pack(encoded)

    def _grid(self, image: np.ndarray) -> tuple[int, int]:
        h, w = self.processor.vision.target_size(*np.asarray(image).shape[:2])
        p = self.processor.config.vision.patch_size
        return h // p, w // p

    def _vit(self, image: np.ndarray, encode: bool) -> tuple[torch.Tensor | None, tuple[int, int]]:
        return self.processor.vision(image) if encode else (None, self._grid(image))

    def _history(self, sample: EmCoTSample, encode: bool) -> HistoryInputs:
        """The past steps the model reads (``config.memory``) out of the sample's whole history."""
        past = select_history(sample.history, self.processor.config.memory)
        return encode_history(self.processor, past, sample.robot, encode=encode)

    def _encode(self, sample: EmCoTSample, rng: np.random.Generator | None, encode: bool = True) -> _Encoded:
        return self._encoders[sample.kind](sample, rng, encode)

    def _vae_image(self, image: np.ndarray | None) -> np.ndarray:
        if image is None:
            raise ValueError(
                "this sample needs an image for the VAE (a subgoal or target frame) but has none"
            )
        if self.processor.config.vae is None:
            raise ValueError("this sample needs a VAE image but the model has no VAE (config.vae is None)")
        return resize_rgb(np.asarray(image), self.processor.config.vae.image_size)

    def _encode_trace(self, sample: EmCoTSample, rng: np.random.Generator | None, encode: bool) -> _Encoded:
        proc, config = self.processor, self.processor.config
        mode = sample_mode(sample)
        proc.validate_observation(sample.observation)
        if sample.actions is None:
            raise ValueError("trace samples need an action chunk; mark VQA samples with kind=SampleKind.VQA")
        # Only action-only samples are dropped, and only when the recipe asks for it.
        dropped = mode is TraceMode.REACTIVE and self.dropout.action_samples
        drop_text, drop_vit, _ = self.dropout.draw(rng if dropped else None)
        drop_state = self.dropout.draw_state(rng)
        cameras = [] if drop_vit else proc.cameras
        history = self._history(sample, encode)
        vit = [self._vit(sample.observation.images[name], encode) for name in cameras]
        latents: list[torch.Tensor] = []
        subgoal_vit = None
        if mode.imagines:
            subgoal = self._vae_image(sample.subgoal)
            # The noisy segment learns the sharp frame; the copies after it may show a blurred one.
            shown = blur_rgb(subgoal, self.subgoal_blur.draw(rng))
            latents.append(to_unit_range(subgoal) if encode else torch.zeros(0))
            if shown is not subgoal:
                latents.append(to_unit_range(shown) if encode else torch.zeros(0))
            if config.subgoal_vit_copy:
                subgoal_vit = self._vit(shown, encode)
        layout = self.layout_for(
            sample,
            mode,
            [h * w for _, (h, w) in vit],
            subgoal_vit[1][0] * subgoal_vit[1][1] if subgoal_vit else 0,
            history,
        )
        out = _Encoded(layout, history.vit + vit + ([subgoal_vit] if subgoal_vit else []), latents=latents)
        out.latent_refs = [0, len(latents) - 1] if mode.imagines else []
        out.drop = [
            (drop_text and s.modality is Modality.TEXT) or (drop_state and s.role == "state")
            for s in layout.segments
        ]
        if encode:
            state = proc.encode_state(sample.observation, sample.robot)
            out.states = history.states + ([state] if state is not None else [])
            out.actions = history.actions + [proc.encode_actions(sample.actions, sample.robot)]
            out.pads = history.pads + [
                torch.as_tensor(sample.action_pad, dtype=torch.bool)
                if sample.action_pad is not None
                else torch.zeros(len(sample.actions), dtype=torch.bool)
            ]
        return out

    def _encode_vqa(self, sample: EmCoTSample, rng: np.random.Generator | None, encode: bool) -> _Encoded:
        # VQA text is what the sample learns, so it is never dropped and ``rng`` goes unused.
        tok = self.processor.tokenizer
        history = self._history(sample, encode)
        vit = [self._vit(image, encode) for image in sample.observation.images.values()]
        turns = [(tok.frame_question(q), tok.encode(a)) for q, a in vqa_turns(sample)]
        layout = vqa_layout(
            vit_lengths=[h * w for _, (h, w) in vit],
            turns=turns,
            special=self.processor.special,
            history=history.segments,
        )
        out = _Encoded(layout, history.vit + vit, drop=[False] * len(layout.segments))
        out.states, out.actions, out.pads = history.states, history.actions, history.pads
        return out

    def _encode_generation(
        self, sample: EmCoTSample, rng: np.random.Generator | None, encode: bool
    ) -> _Encoded:
        if sample.subgoal is None:
            raise ValueError("a generation sample needs the frame to predict in `subgoal`")
        frames = list(sample.observation.images.values())
        drop_text, drop_vit, drop_vae = self.dropout.draw(rng)
        vit = [] if drop_vit else [self._vit(frame, encode) for frame in frames]
        use_vae = sample.vae_context and not drop_vae
        context = [self._vae_image(frame) for frame in frames] if use_vae else []
        target = self._vae_image(sample.subgoal)
        proc = self.processor
        prompt = proc.check_prompt_length(
            proc.tokenizer.frame_question(proc.check_instruction(sample.instruction))
        )
        layout = generation_layout(
            vit_lengths=[h * w for _, (h, w) in vit],
            context_latents=len(context),
            latent_tokens=self.latent_tokens,
            framed_prompt=prompt,
            special=self.processor.special,
        )
        images = context + [target]
        out = _Encoded(
            layout, vit, latents=[to_unit_range(im) if encode else torch.zeros(0) for im in images]
        )
        out.latent_refs = list(range(len(images)))
        out.drop = [drop_text and s.modality is Modality.TEXT for s in layout.segments]
        return out

    def _pack(self, encoded: list[_Encoded]) -> SampleBatch:
        config = self.processor.config
        plan = SequencePlan.pack([SequencePlan(e.layout.segments) for e in encoded])
        flat_ids: list[int] = []
        loss_pos: list[int] = []
        loss_tgt: list[int] = []
        vqa_pos: list[int] = []
        vqa_tgt: list[int] = []
        drop: list[bool] = []
        offset = 0
        all_ids = (ids for e in encoded for ids in e.layout.text_ids)
        all_drop = (d for e in encoded for d in e.drop)
        for segment, ids, dropped in zip(plan.segments, all_ids, all_drop):
            if segment.modality is Modality.TEXT:
                flat_ids += ids
                if segment.loss:
                    # video-QA answers form their own term (λ of L_IL + λ·L_VQA)
                    pos, tgt = (vqa_pos, vqa_tgt) if segment.role == "video_answer" else (loss_pos, loss_tgt)
                    pos += range(offset - 1, offset + segment.length - 1)
                    tgt += ids
            drop += [dropped] * segment.length
            offset += segment.length
        latent_images: list[torch.Tensor] = []
        latent_index: list[int] = []
        for e in encoded:
            latent_index += [len(latent_images) + r for r in e.latent_refs]
            latent_images += e.latents
        vit = [(p, g) for e in encoded for p, g in e.vit if p is not None]  # packing always encodes
        states = [state for e in encoded for state in e.states]
        actions = [chunk for e in encoded for chunk in e.actions]
        pads = [pad for e in encoded for pad in e.pads]  # one per action chunk
        act = config.action
        image_hw = config.vae.image_size if config.vae is not None else (1, 1)
        return SampleBatch(
            plan=plan,
            text_ids=torch.tensor(flat_ids, dtype=torch.long),
            vit_patches=torch.cat([p for p, _ in vit]) if vit else torch.zeros(0, config.vision.patch_dim),
            vit_grids=[g for _, g in vit],
            states=torch.stack(states) if states else torch.zeros(0, act.state_dim),
            latent_images=torch.stack(latent_images) if latent_images else torch.zeros(0, 3, *image_hw),
            latent_image_index=latent_index,
            actions=torch.stack(actions) if actions else torch.zeros(0, act.horizon, act.action_dim),
            action_pad=torch.stack(pads) if pads else torch.zeros(0, act.horizon, dtype=torch.bool),
            text_loss_positions=torch.tensor(loss_pos, dtype=torch.long),
            text_loss_targets=torch.tensor(loss_tgt, dtype=torch.long),
            vqa_loss_positions=torch.tensor(vqa_pos, dtype=torch.long),
            vqa_loss_targets=torch.tensor(vqa_tgt, dtype=torch.long),
            key_drop=torch.tensor(drop, dtype=torch.bool) if any(drop) else None,
        )
