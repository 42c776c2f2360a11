"""`EmCoTProcessor`: raw observations, instructions and targets → model-ready pieces, validated."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from emcot.config import EmCoTConfig
from emcot.io_utils import check_fields, dataclass_from_dict, read_json
from emcot.tokenizers.actions import Normalizer, RobotNormStats
from emcot.tokenizers.text import SpecialTokenIds, TextTokenizer
from emcot.tokenizers.vision_processing import VisionImageProcessor
from emcot.types import Observation

PROCESSOR_FILE = "processor_config.json"


@dataclass
class ProcessorConfig:
    """Which cameras a policy reads (in order), which one its subgoals depict, and its default robot."""

    cameras: list[str] = field(default_factory=lambda: ["head"])
    subgoal_camera: str | None = None
    robot: str = "default"

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.cameras:
            raise ValueError("a policy needs at least one camera name")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"camera names must be unique, got {self.cameras}")
        if self.subgoal_camera is None:
            self.subgoal_camera = self.cameras[0]
        if self.subgoal_camera not in self.cameras:
            raise ValueError(
                f"subgoal_camera '{self.subgoal_camera}' is not one of the cameras {self.cameras}"
            )


class EmCoTProcessor:
    """Tokenises text, preprocesses camera images, normalises state and actions for one model config."""

    def __init__(
        self,
        config: EmCoTConfig,
        tokenizer: TextTokenizer,
        norm_stats: RobotNormStats,
        processor_config: ProcessorConfig | None = None,
    ) -> None:
        if config.vision is None:
            raise ValueError("EmCoTProcessor needs a model config with a vision encoder")
        if len(tokenizer) > config.vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {config.vocab_size}; "
                "resize the model's embeddings or use the tokenizer it was trained with"
            )
        self.config = config
        self.tokenizer = tokenizer
        self.norm_stats = norm_stats
        self.settings = processor_config or ProcessorConfig()
        self.vision = VisionImageProcessor(config.vision)
        self.special: SpecialTokenIds = tokenizer.special

    @property
    def cameras(self) -> list[str]:
        """Camera names, in the order the model reads them."""
        return self.settings.cameras

    def normalizers(self, robot: str | None = None) -> tuple[Normalizer | None, Normalizer]:
        """(state, action) normalisers of ``robot`` (default: the processor's robot)."""
        stats = self.norm_stats.for_robot(robot or self.settings.robot)
        mode = self.config.action.norm_mode
        state = Normalizer(mode, stats["state"]) if stats["state"] is not None or mode == "none" else None
        return state, Normalizer(mode, stats["action"])

    def validate_observation(self, observation: Observation) -> None:
        """Raise a clear ValueError for anything the model cannot take."""
        if not isinstance(observation, Observation):
            raise ValueError(f"expected an emcot.Observation, got {type(observation).__name__}")
        unknown = sorted(set(observation.images) - set(self.cameras))
        missing = [c for c in self.cameras if c not in observation.images]
        if unknown or missing:
            raise ValueError(
                f"observation cameras do not match the policy: missing {missing}, unknown {unknown}; "
                f"this policy reads {self.cameras}"
            )
        for name in self.cameras:
            image = observation.images[name]
            if (
                not isinstance(image, np.ndarray)
                or image.dtype != np.uint8
                or image.ndim != 3
                or image.shape[2] != 3
            ):
                raise ValueError(
                    f"camera '{name}' must be a uint8 array of shape (H, W, 3); got "
                    f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
                )
        state_dim = self.config.action.state_dim
        if state_dim == 0 and observation.state is not None:
            raise ValueError("this policy takes no state (state_dim=0); pass Observation(images, state=None)")
        if state_dim > 0:
            state = observation.state
            if state is None:
                raise ValueError(
                    f"this policy needs a state vector of size {state_dim}; observation.state is None"
                )
            state = np.asarray(state)
            if state.dtype.kind not in "biuf":
                raise ValueError(f"state must be numbers, got an array of dtype {state.dtype}")
            if state.shape != (state_dim,):
                raise ValueError(f"state must have shape ({state_dim},), got {state.shape}")
            # After the cast the model sees: a float64 of 1e300 is finite but overflows float32.
            with np.errstate(over="ignore"):
                cast = state.astype(np.float32)
            if not np.isfinite(cast).all():
                raise ValueError(
                    f"state contains NaN or infinite values (or values beyond float32's range): {state.tolist()}"
                )

    def check_instruction(self, instruction: str) -> str:
        """A non-empty instruction string."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("instruction must be a non-empty string, e.g. 'put the cube in the bowl'")
        return instruction.strip()

    def check_prompt_length(self, ids: list[int]) -> list[int]:
        """``ids`` of a framed prompt, refused when longer than ``config.max_prompt_tokens``."""
        limit = self.config.max_prompt_tokens
        if len(ids) > limit:
            raise ValueError(
                f"the instruction is {len(ids)} tokens long, over this policy's limit of {limit} "
                "(config.max_prompt_tokens); shorten it, or raise the limit if the memory allows"
            )
        return ids

    def frame_instruction(self, instruction: str) -> list[int]:
        """The instruction as the chat-framed prompt ids the model reads, length-checked."""
        return self.check_prompt_length(self.tokenizer.frame_prompt(self.check_instruction(instruction)))

    def encode_cameras(self, observation: Observation) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Patches of every camera in order, and their patch grids."""
        return self.vision.cameras(observation.images, order=self.cameras)

    def encode_state(self, observation: Observation, robot: str | None = None) -> torch.Tensor | None:
        """Normalised state ``[state_dim]`` (float32) or None."""
        if self.config.action.state_dim == 0:
            return None
        state_norm, _ = self.normalizers(robot)
        state = np.asarray(observation.state, dtype=np.float32)
        if state_norm is None:
            raise ValueError(
                f"no state statistics for robot '{robot or self.settings.robot}'; compute them with "
                "emcot.tokenizers.actions.NormStats.compute(states) and add them to the policy's norm stats"
            )
        normalized = np.asarray(state_norm.normalize(state), dtype=np.float32)
        if not np.isfinite(normalized).all():
            raise ValueError(
                f"the state {state.tolist()} normalises to non-finite values; check the state statistics "
                f"of robot '{robot or self.settings.robot}' (a zero std or range?)"
            )
        return torch.from_numpy(normalized)

    def encode_actions(self, actions: np.ndarray, robot: str | None = None) -> torch.Tensor:
        """Robot-unit chunk ``[horizon, action_dim]`` → normalised float32 tensor."""
        actions = np.asarray(actions, dtype=np.float32)
        expected = (self.config.action.horizon, self.config.action.action_dim)
        if actions.shape != expected:
            raise ValueError(f"action chunk must have shape {expected}, got {actions.shape}")
        _, action_norm = self.normalizers(robot)
        return torch.from_numpy(np.asarray(action_norm.normalize(actions), dtype=np.float32))

    def decode_actions(self, actions: torch.Tensor, robot: str | None = None) -> np.ndarray:
        """Normalised chunk → robot units (numpy float32)."""
        _, action_norm = self.normalizers(robot)
        # Overflow (absurd statistics) is reported by the caller's finiteness check, not as a warning.
        with np.errstate(over="ignore"):
            return np.asarray(
                action_norm.unnormalize(actions.detach().float().cpu().numpy()), dtype=np.float32
            )

    def save_pretrained(self, folder: str | Path) -> None:
        """Write tokenizer files, camera settings and normalisation statistics into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        (folder / PROCESSOR_FILE).write_text(json.dumps(asdict(self.settings), indent=2) + "\n")
        self.norm_stats.save(folder / "norm_stats.json")

    @classmethod
    def from_pretrained(cls, folder: str | Path, config: EmCoTConfig) -> EmCoTProcessor:
        """Load what :meth:`save_pretrained` wrote."""
        from emcot.tokenizers.text import load_text_tokenizer

        folder = Path(folder)
        settings_file = folder / PROCESSOR_FILE
        if not settings_file.is_file():
            raise ValueError(f"{folder} has no {PROCESSOR_FILE}; is it a saved EmCoTPolicy folder?")
        stats_file = folder / "norm_stats.json"
        if not stats_file.is_file():
            raise ValueError(
                f"{folder} has no norm_stats.json; compute per-robot normalisation statistics "
                "(emcot.tokenizers.actions.RobotNormStats) and save them with the policy"
            )
        settings = dataclass_from_dict(
            ProcessorConfig, read_json(settings_file, "processor settings"), where=f" in {settings_file}"
        )
        return cls(config, load_text_tokenizer(folder), RobotNormStats.load(stats_file), settings)
