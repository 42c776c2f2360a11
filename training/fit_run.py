"""The bookkeeping of a small resumable fit (the latent codec, the camera keypoints): optimizer,
step, the loss accumulated since the last metrics record, atomic checkpoints and exact resume.

A checkpoint is ``checkpoint-<step>/`` with ``model.safetensors``, ``optimizer.pt`` (read with
``weights_only``) and ``state.json`` (step, loss accumulator and the run's *identity*: the settings
a checkpoint must agree with to be resumed). It is written as a hidden folder and renamed when
complete, like :mod:`emcot.training.checkpoints`.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from emcot.io_utils import read_json
from emcot.training.checkpoints import list_checkpoints, truncate_metrics

STATE_FILE = "state.json"


@dataclass(frozen=True)
class FitSchedule:
    """Where a fit stops and how often it evaluates and checkpoints (it always checkpoints at ``end``)."""

    steps: int
    end: int
    eval_every: int
    checkpoint_every: int


def resumable_checkpoint(out: Path, what: str = "training state") -> Path | None:
    """The newest checkpoint of ``out`` whose files (``model.safetensors``, ``optimizer.pt``, ``state.json``)
    all read; damaged newer ones are skipped with a warning."""
    damaged = []
    for _, folder in reversed(list_checkpoints(out)):
        try:
            if not isinstance(read_json(folder / STATE_FILE, what).get("step"), int):
                raise ValueError(f"{STATE_FILE} has no integer 'step'")
            with safe_open(str(folder / "model.safetensors"), "pt"):
                pass
            # Memory-mapped: the zip directory at the end is read, the tensors are not.
            torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu", mmap=True)
        except Exception as err:  # safetensors / torch raise their own types for missing or cut-off files
            damaged.append(f"{folder.name} ({(str(err).splitlines() or [type(err).__name__])[0]})")
            continue
        if damaged:
            warnings.warn(f"skipping damaged checkpoints {'; '.join(damaged)}", stacklevel=3)
        return folder
    if damaged:
        raise ValueError(f"no checkpoint in {out} can be resumed from: {'; '.join(damaged)}; delete them")
    return None


class FitRun:
    """One run's optimizer, step and loss accumulator around ``module``, checkpointed in ``out``.

    ``what`` names the run in errors (e.g. ``"codec"``); ``lr_hint`` is the setting to lower when
    the weights turn non-finite (e.g. ``"CodecTrainConfig.lr"``).
    """

    def __init__(
        self,
        module: nn.Module,
        opt: torch.optim.Optimizer,
        out: Path,
        identity: dict[str, Any],
        *,
        what: str,
        lr_hint: str,
        keep_last: int,
    ) -> None:
        self.module, self.opt, self.out = module, opt, out
        # Through JSON once, so that tuples compare equal to the lists a checkpoint reads back.
        self.identity = json.loads(json.dumps(identity))
        self.what, self.lr_hint, self.keep_last = what, lr_hint, keep_last
        self.step, self.loss_sum, self.loss_count = 0, 0.0, 0

    def resume(self) -> int | None:
        """Load the newest good checkpoint and return its step (None: a fresh start); drops later metrics."""
        label = f"{self.what} training state"
        folder = resumable_checkpoint(self.out, label)
        if folder is not None:
            info = read_json(folder / STATE_FILE, label)
            if info.get("identity") != self.identity:
                raise ValueError(f"{folder} is from a run with other settings or data; use another out_dir")
            self.module.load_state_dict(load_file(str(folder / "model.safetensors")))
            self.opt.load_state_dict(
                torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
            )
            self.step, self.loss_sum, self.loss_count = info["step"], info["loss_sum"], info["loss_count"]
        truncate_metrics(self.out, self.step)
        return None if folder is None else self.step

    def set_lr(self, lr: float) -> None:
        """This step's learning rate, for every parameter group."""
        for group in self.opt.param_groups:
            group["lr"] = lr

    def update(self, loss: torch.Tensor, params: list[nn.Parameter], grad_clip: float) -> float:
        """Back-propagate ``loss``, clip the gradients of ``params`` and step; counts the step and
        returns the loss value."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        self.opt.step()
        self.step += 1
        self.loss_sum, self.loss_count = self.loss_sum + loss.item(), self.loss_count + 1
        return loss.item()

    def record(self, values: dict[str, Any]) -> dict[str, Any]:
        """Append step, mean training loss since the last record, lr and ``values`` to metrics.jsonl."""
        record = {"step": self.step, "train_loss": self.loss_sum / max(self.loss_count, 1)}
        record |= {"lr": self.opt.param_groups[0]["lr"], **values}
        self.loss_sum, self.loss_count = 0.0, 0
        with (self.out / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return record

    def checkpoint(self) -> None:
        """Write ``checkpoint-<step>`` as a hidden folder renamed when complete; keep the newest ``keep_last``."""
        final, tmp = self.out / f"checkpoint-{self.step}", self.out / f".checkpoint-{self.step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.module.state_dict().items()}
        if not all(torch.isfinite(v).all() for v in state.values()):
            raise ValueError(f"{self.what} weights hold NaN/inf at step {self.step}; lower {self.lr_hint}")
        save_file(state, str(tmp / "model.safetensors"))
        torch.save(self.opt.state_dict(), tmp / "optimizer.pt")
        info = {"step": self.step, "loss_sum": self.loss_sum, "loss_count": self.loss_count}
        (tmp / STATE_FILE).write_text(json.dumps({**info, "identity": self.identity}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in list_checkpoints(self.out)[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def train_until(
        self,
        schedule: FitSchedule,
        train_step: Callable[[], float],
        evaluate: Callable[[], dict[str, Any]],
        *,
        desc: str,
        progress: bool,
    ) -> list[dict[str, Any]]:
        """Train up to ``schedule.end``, evaluating and checkpointing on its cadence; returns the records
        of this call's evaluations (the progress bar shows their numbers)."""
        history = []
        bar = tqdm(total=schedule.steps, initial=self.step, desc=desc, disable=not progress)
        while self.step < schedule.end:
            bar.set_postfix(loss=f"{train_step():.4f}", refresh=False)
            bar.update(1)
            if self.step % schedule.eval_every == 0 or self.step == schedule.steps:
                history.append(evaluate())
                shown = {k: v for k, v in history[-1].items() if k not in ("step", "train_loss", "lr")}
                bar.set_postfix({k: f"{v:.2f}" for k, v in shown.items() if isinstance(v, float)})
            if self.step % schedule.checkpoint_every == 0 or self.step == schedule.end:
                self.checkpoint()
        bar.close()
        return history
