"""Loading saved EmCoT models safely: safetensors only, every mismatch a clear error."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from emcot.config import EmCoTConfig
from emcot.io_utils import load_safetensors_folder, read_json
from emcot.model.modeling import EmCoTModel


def read_config(folder: Path) -> EmCoTConfig:
    """The folder's ``config.json`` as an :class:`EmCoTConfig`, refusing other model types."""
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} has no config.json; is it a saved emcot policy or model folder?")
    data = read_json(path, "model config")
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object; the checkpoint is corrupt")
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


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``"bfloat16"``/``"bf16"``/``torch.bfloat16``-style names → a floating torch dtype (None stays None)."""
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, str):
        resolved = _DTYPE_NAMES.get(dtype.removeprefix("torch."))
        if resolved is None:
            raise ValueError(f"unknown torch_dtype '{dtype}'; choose one of {sorted(_DTYPE_NAMES)}")
        return resolved
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"torch_dtype must be a floating torch dtype or its name, got {dtype!r}")
    return dtype


_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
}


def check_state_dict(model: EmCoTModel, state: dict[str, torch.Tensor]) -> None:
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
    config: EmCoTConfig | None = None,
) -> EmCoTModel:
    """Build the model from ``config.json`` and fill it from safetensors weights.

    With ``low_memory`` the model is created without allocating weights (accelerate's empty-weight
    initialisation) and takes the loaded tensors directly, so peak memory is one copy. ``config``
    replaces the folder's ``config.json`` (the weights must still fit it exactly).
    """
    folder = Path(folder)
    config = read_config(folder) if config is None else config
    torch_dtype = resolve_dtype(torch_dtype)
    state = load_safetensors_folder(folder)
    if low_memory:
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            model = EmCoTModel(config)
    else:
        model = EmCoTModel(config)
    check_state_dict(model, state)
    # Weights stored compactly (store_weights_as) compute in the config's dtype.
    compute = resolve_dtype(str(config.dtype).removeprefix("torch.")) if config.dtype else None
    for key in list(state):
        value = state[key]
        if compute is not None and value.is_floating_point() and value.dtype != compute:
            state[key] = value.to(compute)
        elif low_memory:
            # Fresh, allocator-aligned copies one tensor at a time: tensors viewed straight out of
            # the file buffer can take other SIMD paths and change results in the last bit.
            state[key] = value.clone()
    model.load_state_dict(state, strict=False, assign=low_memory)
    if config.tie_word_embeddings:
        model.understanding.lm_head.weight = model.understanding.embed_tokens.weight
    if torch_dtype is not None or device is not None:
        # transformers declares PreTrainedModel.to through functools.wraps, which mypy does not
        # bind as a method (it asks for `self`).
        model.to(device=device, dtype=torch_dtype)  # type: ignore[call-arg]
    return model.eval()


def load_pretrained(
    pretrained_model_name_or_path: str | Path,
    *,
    config: EmCoTConfig | None = None,
    subfolder: str | None = None,
    torch_dtype: torch.dtype | str | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: torch.device | str | None = None,
    low_cpu_mem_usage: bool = True,
    **kwargs,
) -> EmCoTModel:
    """:meth:`EmCoTModel.from_pretrained` with Hugging Face's argument names, through :func:`load_model`.

    Hub options (``revision``, ``token``, …) are accepted and ignored, since only local folders
    load; any other argument is an error rather than silently dropped.
    """

    # Hub options are meaningless for a local folder; anything else is a mistake to report.
    # (AutoModel passes trust_remote_code and adapter_kwargs through; they do not apply either.)
    ignored = {"cache_dir", "force_download", "local_files_only", "proxies", "revision", "token"}
    ignored |= {"trust_remote_code", "_from_auto", "_from_pipeline"}
    adapter = kwargs.pop("adapter_kwargs", None) or {}
    if "_adapter_model_path" in adapter:
        raise ValueError(
            f"{pretrained_model_name_or_path} holds a PEFT adapter; load its base policy and merge the "
            "adapter with emcot's fine-tuning tools instead"
        )
    unknown = sorted(set(kwargs) - ignored)
    if unknown:
        raise ValueError(
            f"EmCoTModel.from_pretrained does not support {unknown}; it takes config, subfolder, "
            "torch_dtype/dtype, device_map (one device) and low_cpu_mem_usage"
        )
    if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
        raise ValueError(f"torch_dtype={torch_dtype} and dtype={dtype} disagree; pass one of them")
    if isinstance(device_map, dict) or device_map == "auto":
        raise ValueError(
            "device_map must name one device (e.g. 'cpu' or 'cuda:0'); emcot does not split models"
        )
    folder = Path(pretrained_model_name_or_path)
    folder = folder / subfolder if subfolder else folder
    if not folder.is_dir():
        raise ValueError(
            f"{folder} is not a local folder; emcot loads saved folders only "
            "(download a hub repository first, e.g. with huggingface_hub.snapshot_download)"
        )
    return load_model(
        folder,
        torch_dtype=torch_dtype if torch_dtype is not None else dtype,
        device=device_map,
        low_memory=low_cpu_mem_usage,
        config=config,
    )


def store_weights_as(folder: str | Path, dtype: torch.dtype | None, prefix: str = "model") -> None:
    """Rewrite a saved model's safetensors with floating tensors in ``dtype`` (integers untouched);
    :func:`load_model` casts them back to the config's dtype."""
    if dtype is None:
        return
    folder = Path(folder)
    single = folder / f"{prefix}.safetensors"
    files = [single] if single.is_file() else sorted(folder.glob(f"{prefix}-*-of-*.safetensors"))
    if not files:
        raise ValueError(f"no {prefix} safetensors in {folder} to store as {dtype}")
    for file in files:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(file)).items()}
        save_file(tensors, str(file), metadata={"format": "pt"})
