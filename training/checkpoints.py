"""Training checkpoints, written atomically and read back without unpickling.

``<output>/checkpoint-<step>/`` holds ``model.safetensors`` (the training model, LoRA adapters
included), ``ema.safetensors``, ``optimizer.pt`` (keyed by parameter name; tensors, names and plain
numbers only, loaded with ``weights_only=True``), ``scheduler.json``, ``trainer_state.json`` (step
and data position) and per process ``rng-<rank>.safetensors`` / ``rng-<rank>.json``. The folder is written as
``.checkpoint-<step>.tmp`` and renamed when complete, so a killed run never leaves a half checkpoint
that looks finished. Weights and optimizer state are full tensors whether the run was sharded or
not, so a checkpoint resumes under 1 process, DDP or FSDP alike. Weights holding NaN/inf are never
written, and a resume skips a damaged newest checkpoint (a full disk, a half-copied file) in
favour of the previous good one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from emcot.io_utils import load_safetensors_folder, read_json, read_json_lines
from emcot.training.divergence import any_process, refuse_nonfinite
from emcot.training.sharding import (
    full_model_state,
    full_optimizer_state,
    load_model_state,
    load_optimizer_state,
)

INITIAL_DIR = "initial"
STATE_FILE = "trainer_state.json"
_STATE_KEYS = ("step", "data", "aliases")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Completed checkpoints in ``folder`` as (step, path), oldest first."""
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()
    ]
    return sorted(found)


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest completed checkpoint, or None."""
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop tensors that share storage with an earlier one (tied weights); returns (unique, alias → kept)."""
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    unique, aliases = {}, {}
    for key, value in state.items():
        ident = (value.untyped_storage().data_ptr(), int(value.storage_offset()), tuple(value.shape))
        if ident in seen:
            aliases[key] = seen[ident]
        else:
            seen[ident] = key
            unique[key] = value.detach().contiguous().cpu()
    return unique, aliases


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss = random.getstate()
    plain = {
        "numpy": [kind, int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }
    return tensors, plain


def _set_rng_state(tensors: dict[str, torch.Tensor], plain: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    kind, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(trainer) -> Path:
    """Write the trainer's full state as ``checkpoint-<step>`` (every process must call this)."""
    acc, out, step = trainer.accelerator, trainer.out, trainer.step
    final = out / f"checkpoint-{step}"
    tmp = out / f".checkpoint-{step}.tmp"
    # Gathering is collective under FSDP: every process takes part, the first one writes.
    state = {k.removeprefix("model."): v for k, v in full_model_state(trainer.module).items()}
    optimizer = full_optimizer_state(trainer.module, trainer.torch_optimizer)
    ema = trainer.ema.state_dict(keep=acc.is_main_process) if trainer.ema is not None else None
    parts = {"weights": state, "EMA weights": ema, "optimizer state": optimizer.get("state", {})}
    refuse_nonfinite(acc, parts, str(final))
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    tensors, plain = _rng_state()
    save_file(tensors, str(tmp / f"rng-{acc.process_index}.safetensors"))
    (tmp / f"rng-{acc.process_index}.json").write_text(json.dumps(plain))
    if acc.is_main_process:
        unique, aliases = _dedupe(state)
        save_file(unique, str(tmp / "model.safetensors"))
        if ema is not None:
            save_file(ema, str(tmp / "ema.safetensors"))
        torch.save(optimizer, tmp / "optimizer.pt")
        sched = {k: v for k, v in trainer.scheduler.state_dict().items() if k != "lr_lambdas"}
        (tmp / "scheduler.json").write_text(json.dumps(sched))
        info = {
            "step": step,
            "data": trainer.packer.state_dict(),
            "aliases": aliases,
            "recipe": trainer.recipe.name,
            "num_processes": acc.num_processes,
            "skipped_steps": trainer.guard.skipped,
        }
        (tmp / STATE_FILE).write_text(json.dumps(info, indent=2))
    acc.wait_for_everyone()
    if acc.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(out)[: -trainer.recipe.train.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def _unreadable(path: Path, required: bool) -> str | None:
    """Why the tensor file ``path`` cannot be read (its header and size, not its data), or None."""
    if not path.is_file():
        return f"{path.name} is missing" if required else None
    try:
        if path.suffix == ".pt":
            # Memory-mapped: the zip directory at the end of the file is read, the tensors are not.
            torch.load(path, weights_only=True, map_location="cpu", mmap=True)
        else:
            with safe_open(str(path), "pt"):
                pass
    except Exception as err:  # safetensors and torch raise their own types for cut-off files
        return f"{path.name} is truncated or corrupt ({str(err).splitlines()[0]})"
    return None


def checkpoint_damage(folder: Path, rank: int = 0) -> str | None:
    """What makes ``folder`` unusable for process ``rank`` (a missing or cut-off file), or None."""
    try:
        info = read_json(folder / STATE_FILE, "trainer state")
        if not isinstance(info, dict) or not all(k in info for k in _STATE_KEYS):
            return f"{STATE_FILE} lacks the fields {list(_STATE_KEYS)}"
        read_json(folder / "scheduler.json", "scheduler state")
        if (folder / f"rng-{rank}.safetensors").is_file():
            read_json(folder / f"rng-{rank}.json", "RNG state")
    except ValueError as err:
        return str(err)
    for name, required in (
        ("model.safetensors", True),
        ("optimizer.pt", True),
        ("ema.safetensors", False),
        (f"rng-{rank}.safetensors", False),
    ):
        problem = _unreadable(folder / name, required)
        if problem is not None:
            return problem
    return None


def resumable_checkpoint(out: Path, accelerator) -> Path | None:
    """The newest checkpoint in ``out`` that every process can read, or None when there are none.

    Damaged newer ones are named in a warning; when all are damaged a ValueError lists them.
    """
    damaged: list[str] = []
    for _, folder in reversed(list_checkpoints(out)):
        problem = checkpoint_damage(folder, accelerator.process_index)
        if not any_process(accelerator, problem is not None):
            if damaged and accelerator.is_main_process:
                warnings.warn(
                    f"skipping damaged checkpoints {'; '.join(damaged)}; resuming from {folder.name}",
                    stacklevel=2,
                )
            return folder
        damaged.append(f"{folder.name} ({problem or 'damaged on another process'})")
    if damaged:
        raise ValueError(
            f"no checkpoint in {out} can be resumed from: {'; '.join(damaged)}. "
            "Delete the damaged checkpoint folders to train from the start"
        )
    return None


def load_checkpoint(trainer, folder: Path) -> int:
    """Restore model, EMA, optimizer, scheduler, data position and RNG states; returns the step."""
    info_file = folder / STATE_FILE
    if not info_file.is_file():
        raise ValueError(f"{folder} has no {STATE_FILE}; it is not a complete training checkpoint")
    info = read_json(info_file, "trainer state")
    state = load_safetensors_folder(folder, "model")
    for alias, kept in info["aliases"].items():
        state[alias] = state[kept]
    try:
        load_model_state(trainer.module, {f"model.{k}": v for k, v in state.items()})
    except RuntimeError as err:
        raise ValueError(
            f"{folder} does not fit this run's model ({str(err).splitlines()[0]}); resume with the same recipe"
        ) from None
    if trainer.ema is not None:
        if not (folder / "ema.safetensors").is_file():
            raise ValueError(
                f"{folder} has no EMA weights but the recipe uses EMA; resume with the same recipe"
            )
        trainer.ema.load_state_dict(load_safetensors_folder(folder, "ema"))
    load_optimizer_state(
        trainer.module,
        trainer.torch_optimizer,
        torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu"),
    )
    sched = trainer.scheduler.state_dict()
    sched.update(read_json(folder / "scheduler.json", "scheduler state"))
    trainer.scheduler.load_state_dict(sched)
    trainer.packer.load_state_dict(info["data"])
    trainer.guard.skipped = int(info.get("skipped_steps", 0))
    rank = trainer.accelerator.process_index
    rng_file = folder / f"rng-{rank}.safetensors"
    if rng_file.is_file():
        _set_rng_state(load_file(str(rng_file)), read_json(folder / f"rng-{rank}.json", "RNG state"))
    return int(info["step"])


def truncate_metrics(folder: Path, step: int) -> None:
    """Drop logged metrics after ``step`` (written by a run that was killed after its last checkpoint).

    A torn last line (the kill cut a write short) is dropped too; a bad line elsewhere is an error.
    """
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return
    records = read_json_lines(path, torn_tail_ok=True)
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path} record {number} has no integer 'step'; the file is corrupt")
    path.write_text("".join(json.dumps(r) + "\n" for r in records if r["step"] <= step))
