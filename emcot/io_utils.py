"""Dependency-free helpers shared by every sub-package: strict dataclass parsing, JSON and safetensors files.

This module imports nothing from emcot, so codecs and experts can use it without pulling in the core.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file


def dataclass_from_dict(cls: type, data: dict[str, Any], label: str | None = None, where: str = "") -> Any:
    """``cls(**data)``, refusing keys ``cls`` does not have so a typo is never silently dropped.

    The error reads ``{label} [...]{where}; known keys are [...]`` (``label`` defaults to
    ``"unknown <ClassName> keys"``).
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        label = label if label is not None else f"unknown {cls.__name__} keys"
        raise ValueError(f"{label} {unknown}{where}; known keys are {sorted(known)}")
    return cls(**data)


def read_json(path: Path) -> dict:
    """Load a JSON file, with a clear error when it is missing or malformed."""
    if not path.is_file():
        raise ValueError(f"expected {path} to exist; is this the right checkpoint folder?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the checkpoint may be corrupt") from None


def load_safetensors_folder(folder: str | Path, prefix: str = "model") -> dict[str, torch.Tensor]:
    """All tensors of ``{prefix}.safetensors`` or of the shards listed in ``{prefix}.safetensors.index.json``."""
    folder = Path(folder)
    single = folder / f"{prefix}.safetensors"
    index = folder / f"{prefix}.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = [folder / name for name in sorted(set(read_json(index)["weight_map"].values()))]
    else:
        found = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else "no such folder"
        raise ValueError(
            f"no safetensors weights in {folder} (looked for {single.name} and {index.name}; found {found}). "
            "emcot loads safetensors only; convert pickled .bin checkpoints with transformers' save_pretrained first"
        )
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            tensors.update(load_file(str(file)))
        except Exception as err:  # safetensors raises its own error types for truncated headers/data
            raise ValueError(
                f"cannot read weights from {file}: {err}. The file is truncated or corrupt"
            ) from None
    return tensors
