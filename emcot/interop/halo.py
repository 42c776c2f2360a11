"""Convert an official HALO checkpoint folder into an emcot policy folder (``emcot convert halo``).

The folder holds ``ema.safetensors`` (or ``model.safetensors``), ``llm_config.json``,
``vit_config.json``, ``ae.safetensors`` and the Qwen2 tokenizer files; the tensor mapping itself
is :mod:`emcot.interop.halo_state`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor

from emcot.interop.halo_state import ROBOTWIN_HORIZON, WEIGHT_FILES, convert_halo_state_dict
from emcot.io_utils import read_json
from emcot.policy.folder import check_save_target
from emcot.tokenizers.actions import NormStats, RobotNormStats


def _weights_file(folder: Path) -> Path | None:
    return next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)


def _read_safetensors(path: Path, skip: set[str] | frozenset = frozenset()) -> dict[str, Tensor]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys() if k not in skip}
    except Exception as err:  # safetensors raises its own error types for bad headers/data
        raise ValueError(f"cannot read {path}: {err}; the file is truncated or corrupt") from None


def _find(name: str, folders: list[Path], what: str) -> Path:
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"no {name} in {', '.join(map(str, folders))}; {what}")


def convert_halo_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    robot: str = "robotwin",
    cameras: tuple[str, ...] | list[str] = ("head",),
    base: str | Path | None = None,
    subgoal_size: tuple[int, int] = (256, 256),
    action_horizon: int = ROBOTWIN_HORIZON,
    dtype: torch.dtype | None = None,
) -> Path:
    """Convert the HALO folder ``src`` (over the pretrained folder ``base``, if given) into a policy at ``dst``.

    Configs, ``ae.safetensors`` and tokenizer files are taken from ``src``, else from ``base``.
    ``dtype`` casts the weights (default: the checkpoint's own, bf16 for released HALO files).
    """
    from accelerate import init_empty_weights

    from emcot.config import EmCoTConfig
    from emcot.model.modeling import EmCoTModel
    from emcot.policy.policy import EmCoTPolicy
    from emcot.policy.processor import EmCoTProcessor, ProcessorConfig
    from emcot.tokenizers.text import HFTextTokenizer

    src = Path(src)
    check_save_target(dst)  # before hours of conversion, not after
    folders = [src] + ([Path(base)] if base is not None else [])
    for folder in folders:
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder; pass the HALO checkpoint folder")
    weights = _weights_file(src)
    if weights is None:
        raise ValueError(
            f"no {' or '.join(WEIGHT_FILES)} in {src}; pass the folder holding HALO's ema.safetensors"
        )
    halo_sd = _read_safetensors(weights)
    if base is not None:
        base_weights = _weights_file(Path(base))
        if base_weights is None:
            raise ValueError(f"no {' or '.join(WEIGHT_FILES)} in the base folder {base}")
        # HALO's inference loads the pretrained file, then the fine-tune over it.
        halo_sd.update(_read_safetensors(base_weights, skip=set(halo_sd)))
    llm_config = read_json(
        _find("llm_config.json", folders, "copy the Qwen2.5 config.json there as llm_config.json")
    )
    vit_path = next((f / "vit_config.json" for f in folders if (f / "vit_config.json").is_file()), None)
    vit_config = read_json(vit_path) if vit_path is not None else None
    ae_sd = _read_safetensors(
        _find("ae.safetensors", folders, "copy BAGEL-7B-MoT's FLUX ae.safetensors there")
    )
    tokenizer_folder = next(
        (f for f in folders if (f / "tokenizer.json").is_file() or (f / "vocab.json").is_file()), None
    )
    if tokenizer_folder is None:
        raise ValueError(
            f"no Qwen2 tokenizer files in {', '.join(map(str, folders))}; copy them from the Qwen2.5 folder"
        )
    tokenizer = HFTextTokenizer.from_pretrained(tokenizer_folder)
    ours, kwargs = convert_halo_state_dict(
        halo_sd,
        llm_config,
        vit_config,
        ae_sd=ae_sd,
        vocab_size=max(len(tokenizer), tokenizer.required_vocab_size),
        action_horizon=action_horizon,
        subgoal_size=subgoal_size,
    )
    config = EmCoTConfig(**kwargs)
    with init_empty_weights(include_buffers=False):
        model = EmCoTModel(config)
    model.load_state_dict(ours, strict=True, assign=True)
    # transformers wraps PreTrainedModel.to with functools.wraps, which hides `self` from mypy.
    model.to(dtype=dtype or halo_sd["language_model.model.embed_tokens.weight"].dtype)  # type: ignore[call-arg]
    action_dim = config.action.action_dim
    identity = NormStats(
        mean=np.zeros(action_dim), std=np.ones(action_dim), q01=-np.ones(action_dim),
        q99=np.ones(action_dim), min=-np.ones(action_dim), max=np.ones(action_dim), count=0,
    )  # fmt: skip
    stats = RobotNormStats({robot: {"action": identity, "state": None}})
    processor = EmCoTProcessor(config, tokenizer, stats, ProcessorConfig(cameras=list(cameras), robot=robot))
    return EmCoTPolicy(model, processor).save_pretrained(dst)
