"""Loading saved EmCoT models safely: safetensors only, every mismatch a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from emcot.config import EmCoTConfig
from emcot.io_utils import load_safetensors_folder
from emcot.modeling import EmCoTModel


def read_config(folder: Path) -> EmCoTConfig:
    """The folder's ``config.json`` as an :class:`EmCoTConfig`, refusing other model types."""
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} has no config.json; is it a saved emcot policy or model folder?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the checkpoint is corrupt") from None
    model_type = data.get("model_type")
    if model_type != EmCoTConfig.model_type:
        hint = (
            " — convert it with `emcot convert halo SRC DST`" if model_type in (None, "bagel", "halo") else ""
        )
        raise ValueError(
            f"{path} describes a model of type '{model_type}', not 'emcot'{hint}. For a Qwen/SigLIP/VAE "
            "component checkpoint use EmCoTModel.from_components(llm=..., vision=..., vae=...)"
        )
    return EmCoTConfig.from_pretrained(folder)


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Missing/unexpected keys and shape mismatches → one ValueError listing them."""
    expected = model.state_dict()
    tied = {"understanding.lm_head.weight"} if model.config.tie_word_embeddings else set()
    missing = sorted(k for k in expected if k not in state and k not in tied)
    unexpected = sorted(k for k in state if k not in expected)
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing[:12]}{' …' if len(missing) > 12 else ''}")
    if unexpected:
        problems.append(
            f"unexpected keys ({len(unexpected)}): {unexpected[:12]}{' …' if len(unexpected) > 12 else ''}"
        )
    for key, value in state.items():
        if key in expected and value.shape != expected[key].shape:
            problems.append(
                f"shape mismatch for '{key}': checkpoint {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
            )
    if problems:
        raise ValueError(
            "checkpoint does not fit the model described by its config.json:\n  "
            + "\n  ".join(problems)
            + "\nThe weights and config.json come from different models, or the file was edited; "
            "re-save the policy, or build the right architecture with EmCoTConfig overrides"
        )


def load_model(
    folder: str | Path,
    torch_dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    low_memory: bool = True,
) -> EmCoTModel:
    """Build the model from ``config.json`` and fill it from safetensors weights.

    With ``low_memory`` the model is created without allocating weights (accelerate's empty-weight
    initialisation) and takes the loaded tensors directly, so peak memory is one copy.
    """
    folder = Path(folder)
    config = read_config(folder)
    state = load_safetensors_folder(folder)
    if isinstance(torch_dtype, str):
        torch_dtype = getattr(torch, torch_dtype)
    if low_memory:
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            model = EmCoTModel(config)
    else:
        model = EmCoTModel(config)
    check_state_dict(model, state)
    if low_memory:
        # Fresh, allocator-aligned copies one tensor at a time: tensors viewed straight out of the
        # file buffer can take other SIMD paths and change results in the last bit.
        for key in list(state):
            state[key] = state[key].clone()
    model.load_state_dict(state, strict=False, assign=low_memory)
    if config.tie_word_embeddings:
        model.understanding.lm_head.weight = model.understanding.embed_tokens.weight
    if torch_dtype is not None or device is not None:
        model.to(device=device, dtype=torch_dtype)
    return model.eval()
