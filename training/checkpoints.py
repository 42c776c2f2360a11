"""Training checkpoints, written atomically and read back without unpickling.

``<output>/checkpoint-<step>/`` holds ``model.safetensors`` (the training model, LoRA adapters
included), ``ema.safetensors``, ``optimizer.pt`` (keyed by parameter name; tensors, names and plain
numbers only, loaded with ``weights_only=True``), ``scheduler.json``, ``trainer_state.json`` (step
and data position) and per process ``rng-<rank>.safetensors`` / ``rng-<rank>.json``. The folder is written as
``.checkpoint-<step>.tmp`` and renamed when complete, so a killed run never leaves a half checkpoint
that looks finished. Weights and optimizer state are full tensors whether the run was sharded or
not, so a checkpoint resumes under 1 process, DDP or FSDP alike.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from emcot.training.sharding import (
    full_model_state,
    full_optimizer_state,
    load_model_state,
    load_optimizer_state,
)

INITIAL_DIR = "initial"
STATE_FILE = "trainer_state.json"
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
    seen: dict[tuple[int, int, tuple], str] = {}
    unique, aliases = {}, {}
    for key, value in state.items():
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
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
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    # Gathering is collective under FSDP: every process takes part, the first one writes.
    state = {k.removeprefix("model."): v for k, v in full_model_state(trainer.module).items()}
    optimizer = full_optimizer_state(trainer.module, trainer.torch_optimizer)
    ema = trainer.ema.state_dict(keep=acc.is_main_process) if trainer.ema is not None else None
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


def load_checkpoint(trainer, folder: Path) -> int:
    """Restore model, EMA, optimizer, scheduler, data position and RNG states; returns the step."""
    info_file = folder / STATE_FILE
    if not info_file.is_file():
        raise ValueError(f"{folder} has no {STATE_FILE}; it is not a complete training checkpoint")
    info = json.loads(info_file.read_text())
    state = load_file(str(folder / "model.safetensors"))
    for alias, kept in info["aliases"].items():
        state[alias] = state[kept]
    try:
        load_model_state(trainer.module, {f"model.{k}": v for k, v in state.items()})
    except RuntimeError as err:
        raise ValueError(
            f"{folder} does not fit this run's model ({str(err).splitlines()[0]}); resume with the same recipe"
        ) from None
    if trainer.ema is not None:
        ema_file = folder / "ema.safetensors"
        if not ema_file.is_file():
            raise ValueError(
                f"{folder} has no EMA weights but the recipe uses EMA; resume with the same recipe"
            )
        trainer.ema.load_state_dict(load_file(str(ema_file)))
    load_optimizer_state(
        trainer.module,
        trainer.torch_optimizer,
        torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu"),
    )
    sched = trainer.scheduler.state_dict()
    sched.update(json.loads((folder / "scheduler.json").read_text()))
    trainer.scheduler.load_state_dict(sched)
    trainer.packer.load_state_dict(info["data"])
    rank = trainer.accelerator.process_index
    rng_file = folder / f"rng-{rank}.safetensors"
    if rng_file.is_file():
        _set_rng_state(load_file(str(rng_file)), json.loads((folder / f"rng-{rank}.json").read_text()))
    return int(info["step"])


def truncate_metrics(folder: Path, step: int) -> None:
    """Drop logged metrics after ``step`` (written by a run that was killed after its last checkpoint)."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))
