"""Visual-generation samples from robot videos: context frames + prompt → a future frame.

Stage 1 of the HALO recipe trains the generation expert on future-frame prediction (OXE
"imagine the next scene", SSv2 frames t..t+2 → t+5). This reads any LeRobot dataset that way,
so the subgoal expert learns how scenes evolve before it is asked to imagine subtask ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from emcot.io_utils import AT_LEAST_ONE, check_fields
from emcot.training.data.lerobot import LeRobotDataset
from emcot.types import EmCoTSample, Observation, SampleKind


@dataclass(frozen=True)
class FutureFrameConfig:
    """Which frames make a sample.

    For an anchor frame t the context is frames ``t − (context−1)·context_gap … t`` and the target
    is frame ``t + offset``; anchors advance by ``stride``. ``prompt`` is formatted with the
    episode's ``instruction``.
    """

    camera: str | None = None
    offset: int = 5
    context: int = 3
    context_gap: int = 1
    stride: int = 1
    prompt: str = "Imagine the next scene: {instruction}."

    def __post_init__(self) -> None:
        check_fields(
            self, offset=AT_LEAST_ONE, context=AT_LEAST_ONE, context_gap=AT_LEAST_ONE, stride=AT_LEAST_ONE
        )
        if "{instruction}" not in self.prompt:
            raise ValueError("FutureFrameConfig.prompt must contain '{instruction}'")


class FutureFrameDataset:
    """Map-style dataset of generation samples (``kind=SampleKind.GENERATION``) over a LeRobot dataset.

    Episodes are decoded lazily and the last one is kept, so iterating in order decodes each
    video once.
    """

    def __init__(self, dataset: LeRobotDataset, config: FutureFrameConfig | None = None) -> None:
        self.dataset = dataset
        self.config = config or FutureFrameConfig()
        camera = self.config.camera or next(iter(dataset.cameras), None)
        if camera is None or camera not in dataset.cameras:
            raise ValueError(f"camera {camera!r} is not in the dataset's cameras {sorted(dataset.cameras)}")
        self.camera: str = camera
        cfg = self.config
        first = (cfg.context - 1) * cfg.context_gap
        self.index: list[tuple[int, int]] = []
        for episode in dataset.episode_indices:
            length = dataset.record(episode).length
            self.index += [(episode, t) for t in range(first, length - cfg.offset, cfg.stride)]
        if not self.index:
            raise ValueError(
                f"no episode of {dataset.root} is longer than {first + cfg.offset} frames; "
                "lower FutureFrameConfig.offset or context"
            )

    def __len__(self) -> int:
        return len(self.index)

    def __iter__(self) -> Iterator[EmCoTSample]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, i: int) -> EmCoTSample:
        episode_index, t = self.index[i]
        episode = self.dataset.episode(episode_index)
        frames = episode.images(self.camera)
        cfg = self.config
        context = [t - k * cfg.context_gap for k in reversed(range(cfg.context))]
        return EmCoTSample(
            observation=Observation({f"frame_{j}": frames[f] for j, f in enumerate(context)}),
            instruction=cfg.prompt.format(instruction=episode.instruction.rstrip(".")),
            subgoal=frames[t + cfg.offset],
            robot=self.dataset.name,
            kind=SampleKind.GENERATION,
            metadata={"episode": episode_index, "frame": t, "target": t + cfg.offset},
        )
