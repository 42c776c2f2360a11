"""`EmCoTPolicy`: a model with its codecs, normalisation statistics and generation defaults."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from emcot.inference.frames import FramePredictor, Frames
from emcot.inference.options import GenerationOptions
from emcot.inference.plan import KeptPlan
from emcot.inference.stages import TraceStages
from emcot.inference.state import TraceState
from emcot.inference.trace import Trace, TraceEvent
from emcot.io_utils import dataclass_from_dict, read_json
from emcot.model.embedding import require_latent_codec
from emcot.model.loading import resolve_dtype, store_weights_as
from emcot.model.modeling import EmCoTModel
from emcot.policy.card import PolicyCard
from emcot.policy.folder import check_save_target, replace_folder
from emcot.policy.processor import EmCoTProcessor
from emcot.sequence.layouts import TraceMode
from emcot.types import HistoryStep, Observation

GENERATION_FILE = "generation_config.json"
_ASSETS = Path(__file__).parents[1] / "assets"
DEFAULT_POLICY = _ASSETS / "default_policy"
SYNTHETIC_POLICY = _ASSETS / "synthetic_policy"
# The policies that ship inside the package, by the name every ``--policy`` option accepts.
BUNDLED_POLICIES: dict[str, tuple[Path, str]] = {
    "default": (DEFAULT_POLICY, "python scripts/export_default_policy.py"),
    "synthetic": (SYNTHETIC_POLICY, "python scripts/make_synthetic_policy.py"),
}


def policy_folder(name_or_folder: str | os.PathLike) -> Path:
    """The folder a ``--policy`` value names: a bundled policy's, or the path itself."""
    if isinstance(name_or_folder, str) and name_or_folder in BUNDLED_POLICIES:
        return BUNDLED_POLICIES[name_or_folder][0]
    return Path(name_or_folder)


class EmCoTPolicy:
    """Reason → imagine a subgoal → act, from camera images, a robot state and an instruction.

    >>> policy = EmCoTPolicy.synthetic()
    >>> trace = policy.generate_trace(policy.example_observation(), "push the red block to the left", seed=0)
    >>> trace.actions.shape
    (8, 4)
    """

    def __init__(
        self, model: EmCoTModel, processor: EmCoTProcessor, generation: GenerationOptions | None = None
    ):
        self.model = model.eval()
        self.processor = processor
        self.generation = generation or GenerationOptions()
        # What the policy was trained on and how to evaluate it (policy_card.json), with its shipped
        # example observation; set by from_pretrained or by an exporter, written by save_pretrained.
        self.card: PolicyCard | None = None
        self.card_example: np.ndarray | None = None
        self._stages = TraceStages(model, processor)
        self._frames = FramePredictor(model, processor)

    @property
    def config(self):
        """The model's :class:`EmCoTConfig`."""
        return self.model.config

    @property
    def cameras(self) -> list[str]:
        """Camera names the policy reads, in order."""
        return self.processor.cameras

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> EmCoTPolicy:
        """Move the model (in place) and return the policy."""
        self.model.to(device=device, dtype=dtype)
        return self

    def generate_trace(
        self,
        observation: Observation,
        instruction: str,
        mode: TraceMode | str | None = None,
        seed: int | None = None,
        *,
        history: Sequence[HistoryStep] = (),
        **options,
    ) -> Trace:
        """One control step: reasoning text, subgoal image (``mode="full"``) and an action chunk.

        ``mode`` (a :class:`TraceMode` or its name): ``"full"``, ``"reason"`` (no subgoal) or
        ``"reactive"`` (actions only). Other keyword options override the saved
        :class:`GenerationOptions` (e.g. ``subgoal_steps``, ``text_guidance``,
        ``action_text_guidance``, ``max_reasoning_tokens``, ``robot``). The same ``seed`` gives the
        same trace; ``trace.layout`` and ``trace.subgoal_latents`` keep the step's plan.
        ``history`` (oldest first, see :func:`emcot.memory.select_history`) is what a memory-enabled
        policy (``config.memory``) remembers of earlier steps; a :class:`PolicySession` keeps it.
        """
        for event in self.stream_trace(
            observation, instruction, mode=mode, seed=seed, history=history, **options
        ):
            if event.kind == "done" and event.trace is not None:
                return event.trace
        raise RuntimeError("trace generation ended without a result")

    def stream_trace(
        self,
        observation: Observation,
        instruction: str,
        mode: TraceMode | str | None = None,
        seed: int | None = None,
        *,
        history: Sequence[HistoryStep] = (),
        **options,
    ) -> Iterator[TraceEvent]:
        """Like :meth:`generate_trace`, yielding ``reasoning`` text pieces, the ``subgoal``, the
        ``actions`` and finally ``done`` with the whole :class:`Trace` and the finished
        :class:`~emcot.inference.state.TraceState` (the stages of :mod:`emcot.inference.stages`)."""
        if mode is not None:
            options["mode"] = mode
        opts = self.generation.replace(**options)
        return self._stages.stream_trace(observation, instruction, opts, seed, history=history)

    def act_on_plan(
        self,
        observation: Observation,
        plan: KeptPlan,
        seed: int | None = None,
        *,
        history: Sequence[HistoryStep] = (),
        **options,
    ) -> tuple[Trace, TraceState]:
        """One step that keeps ``plan`` (a :class:`KeptPlan` of an earlier step): the new observation
        is prefilled, the plan's reasoning and subgoal are teacher-forced as clean segments (the
        training layout), and only the action flow runs. Returns the trace and its final state."""
        opts = self.generation.replace(**options)
        return self._stages.act_on_plan(observation, plan, opts, seed, history=history)

    @torch.no_grad()
    def image_latents(self, image: np.ndarray) -> torch.Tensor:
        """Latent tokens [1, N, D] of a uint8 (H, W, 3) image in the space of ``Trace.subgoal_latents``
        (the VAE posterior mean at the subgoal size), e.g. to compare a camera frame with a subgoal."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be a uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
        codec = require_latent_codec(self.model)
        pixels = codec.preprocess(image)[None].to(self.model.device, self.model.dtype)
        tokens, _ = codec.patchify(codec.encode(pixels, sample=False))
        return tokens

    def predict_frame(
        self,
        frames: Frames,
        prompt: str,
        *,
        seed: int | None = None,
        steps: int | None = None,
        text_guidance: float | None = None,
        image_guidance: float | None = None,
        vae_context: bool = True,
    ) -> Image.Image:
        """Imagine the next frame from context frames and a prompt, without a trace.

        ``frames``: a uint8 (H, W, 3) array, a list of them (oldest first) or a dict like
        ``Observation.images``. ``prompt`` is what a ``generation`` training sample carries as its
        instruction (e.g. ``"Imagine the next scene: push the red block to the left."``). ``steps``
        and the guidance scales override ``config.subgoal_sampler``; ``vae_context=False`` drops the
        frames' clean latent copies, as samples with ``vae_context=False`` are trained.
        The same ``seed`` gives the same image.
        """
        return self._frames.predict(
            frames,
            prompt,
            seed=seed,
            steps=steps,
            text_guidance=text_guidance,
            image_guidance=image_guidance,
            vae_context=vae_context,
        )

    def example(self) -> tuple[Observation, str] | None:
        """The real observation and instruction shipped in the policy's card, or None."""
        card = self.card
        if card is None or card.example is None or self.card_example is None:
            return None
        state = None if card.example.state is None else np.asarray(card.example.state, np.float32)
        return Observation(images={self.cameras[0]: self.card_example}, state=state), card.example.instruction

    def example_observation(self, seed: int = 0) -> Observation:
        """A valid observation for this policy: every camera at a typical size, a state of the right size."""
        rng = np.random.default_rng(seed)
        side = min(self.config.vision.max_side_px, 64)
        images = {name: rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for name in self.cameras}
        state_dim = self.config.action.state_dim
        state = None
        if state_dim:
            stats = self.processor.norm_stats.for_robot(self.processor.settings.robot)["state"]
            state = stats.mean.astype(np.float32) if stats is not None else np.zeros(state_dim, np.float32)
        return Observation(images=images, state=state)

    def save_pretrained(
        self,
        folder: str | os.PathLike,
        max_shard_size: str | int = "2GB",
        *,
        storage_dtype: torch.dtype | str | None = None,
    ) -> Path:
        """Write the whole policy into one folder, atomically.

        ``storage_dtype`` (e.g. ``"float16"``) stores floating weights compactly; loading upcasts
        them to the config's dtype, so the policy computes as before up to the storage rounding.

        The policy is written into a temporary sibling folder first. An existing *policy* folder
        at ``folder`` is then swapped out (moved aside, the new one renamed in, the old one
        deleted), so a crash leaves either the old or the new policy. Anything else at ``folder``
        — a file, a non-empty folder that is not an emcot policy, the working directory or one
        of its parents — is refused with a ValueError and left untouched.
        """
        folder = check_save_target(folder)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            self.model.save_pretrained(tmp, max_shard_size=max_shard_size)
            self.processor.save_pretrained(tmp)
            data = dataclasses.asdict(self.generation)
            (tmp / GENERATION_FILE).write_text(json.dumps(data, indent=2) + "\n")
            if self.card is not None:
                self.card.save(tmp, self.card_example)
            if storage_dtype is not None:
                store_weights_as(tmp, resolve_dtype(storage_dtype))
            replace_folder(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        robot: str | None = None,
    ) -> EmCoTPolicy:
        """Load a policy folder written by :meth:`save_pretrained`.

        ``torch_dtype`` casts the weights; ``robot`` picks which normalisation statistics to use
        (a clear error lists the available robots).
        """
        from emcot.model.loading import load_model

        folder = Path(folder) / subfolder if subfolder else Path(folder)
        model = load_model(folder, torch_dtype=torch_dtype, device=device)
        processor = EmCoTProcessor.from_pretrained(folder, model.config)
        if robot is not None:
            processor.norm_stats.for_robot(robot)
            processor.settings.robot = robot
        generation = GenerationOptions()
        card = PolicyCard.load(folder)
        if (folder / GENERATION_FILE).is_file():
            generation = dataclass_from_dict(
                GenerationOptions,
                read_json(folder / GENERATION_FILE, "generation defaults"),
                where=f" in {folder / GENERATION_FILE}",
            )
        policy = cls(model, processor, generation)
        if card is not None:
            policy.card = card
            if card.example is not None:
                policy.card_example = card.example_image(folder)
        return policy

    @classmethod
    def bundled(cls, name: str) -> EmCoTPolicy:
        """A policy that ships with the package: ``default`` or ``synthetic``."""
        if name not in BUNDLED_POLICIES:
            raise ValueError(f"no bundled policy named {name!r}; bundled: {', '.join(BUNDLED_POLICIES)}")
        folder, remake = BUNDLED_POLICIES[name]
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"the bundled {name} policy is missing from {folder}; recreate it with `{remake}`"
            )
        return cls.from_pretrained(folder)

    @classmethod
    def load(cls, name_or_folder: str | os.PathLike) -> EmCoTPolicy:
        """A bundled policy by name (``default``, ``synthetic``) or a policy folder."""
        if isinstance(name_or_folder, str) and name_or_folder in BUNDLED_POLICIES:
            return cls.bundled(name_or_folder)
        return cls.from_pretrained(name_or_folder)

    @classmethod
    def default(cls) -> EmCoTPolicy:
        """The bundled ``small`` policy trained on 8 Meta-World tasks (its ``card`` names them and the
        evaluation protocol)."""
        return cls.bundled("default")

    @classmethod
    def synthetic(cls) -> EmCoTPolicy:
        """The bundled tiny policy of the package's synthetic pushing task (fast, for tests and examples)."""
        return cls.bundled("synthetic")
