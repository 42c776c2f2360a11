"""Adapting a trained policy to a new robot: resized action/state projections, statistics, freezing, LoRA.

Resizing keeps the learned weights of the overlapping dimensions and initialises only the new
part: new input columns like the model's fresh linear layers (normal, std 0.02), new output rows
of the zero-initialised velocity head at zero, so a new dimension starts by predicting zero
velocity and the old ones keep their behaviour. The chunk horizon needs no weights (the step
embedding is sinusoidal).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from emcot.io_utils import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Range, check_fields, dataclass_from_dict
from emcot.tokenizers.actions import NormStats, RobotNormStats
from emcot.types import EmCoTSample

PARAM_GROUPS = ("und", "gen", "act", "vision", "vae", "keypoints")
NEW_ROBOT = "new_robot"  # the default name of a fine-tune's robot
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_IO_GROUP = {
    "understanding": "und",
    "subgoal": "gen",
    "action": "act",
    "vision": "vision",
    "latent_codec": "vae",
    # Their own group, so a freshly attached read-out can warm up alone (train_only: [keypoints]);
    # their localiser is frozen by its config either way.
    "keypoints": "keypoints",
}


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters (via ``peft``) on the chosen experts' attention and MLP projections."""

    experts: tuple[str, ...] = ("und",)
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self) -> None:
        check_fields(self, "finetune.lora", r=AT_LEAST_ONE, alpha=POSITIVE, dropout=Range(ge=0, lt=1))
        bad = [e for e in self.experts if e not in ("und", "gen", "act")]
        if bad or not self.experts:
            raise ValueError(f"LoRA experts must be a non-empty subset of ['und', 'gen', 'act'], got {bad}")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown:
            raise ValueError(f"unknown LoRA targets {unknown}; choose from {list(LORA_TARGETS)}")


@dataclass(frozen=True)
class FinetuneConfig:
    """New robot's action/state sizes and horizon (None keeps the model's), and what to train.

    ``train_only`` lists the parameter groups that train (all others freeze); ``freeze`` lists
    groups to freeze. Groups: ``und``, ``gen``, ``act`` (each expert's layers, norms and I/O),
    ``vision`` (the ViT), ``keypoints`` (the camera keypoints' projection) and ``vae`` (always
    frozen). ``robot`` None keeps the starting policy's robot and normalisation statistics (for
    freezing parts of a policy on its own robot).
    """

    robot: str | None = NEW_ROBOT
    action_dim: int | None = None
    state_dim: int | None = None
    horizon: int | None = None
    train_only: tuple[str, ...] | None = None
    freeze: tuple[str, ...] = ()
    lora: LoraSpec | None = None

    def __post_init__(self) -> None:
        check_fields(self, "finetune", action_dim=AT_LEAST_ONE, state_dim=NON_NEGATIVE, horizon=AT_LEAST_ONE)
        if isinstance(self.lora, dict):
            where = " in recipe section 'finetune.lora'"
            object.__setattr__(self, "lora", dataclass_from_dict(LoraSpec, self.lora, "unknown keys", where))
        for name in (*(self.train_only or ()), *self.freeze):
            if name not in PARAM_GROUPS:
                raise ValueError(f"unknown parameter group '{name}'; choose from {list(PARAM_GROUPS)}")


def param_group(name: str) -> str:
    """The group (``und``/``gen``/``act``/``vision``/``vae``) a parameter name belongs to."""
    name = name.removeprefix("module.").removeprefix("model.")
    match = re.match(r"backbone\.(?:layers\.\d+\.experts|norms)\.(und|gen|act)\.", name)
    if match:
        return match.group(1)
    return _IO_GROUP.get(name.split(".")[0], "und")


def _resize_in(layer: nn.Linear, new_in: int, generator: torch.Generator) -> nn.Linear:
    """Linear with ``new_in`` inputs: shared columns copied, new columns ~ N(0, 0.02)."""
    out = nn.Linear(new_in, layer.out_features, bias=layer.bias is not None)
    keep = min(new_in, layer.in_features)
    with torch.no_grad():
        weight = torch.randn(layer.out_features, new_in, generator=generator) * 0.02
        weight[:, :keep] = layer.weight[:, :keep].float()
        out.weight.copy_(weight)
        if layer.bias is not None:
            out.bias.copy_(layer.bias)
    return out.to(layer.weight.dtype)


def _resize_out(layer: nn.Linear, new_out: int) -> nn.Linear:
    """Linear with ``new_out`` outputs: shared rows copied, new rows zero (a zero-initialised head)."""
    out = nn.Linear(layer.in_features, new_out, bias=layer.bias is not None)
    keep = min(new_out, layer.out_features)
    with torch.no_grad():
        out.weight.zero_()
        out.weight[:keep] = layer.weight[:keep]
        if layer.bias is not None:
            out.bias.zero_()
            out.bias[:keep] = layer.bias[:keep]
    return out.to(layer.weight.dtype)


def resize_action_space(
    policy,
    action_dim: int | None = None,
    state_dim: int | None = None,
    horizon: int | None = None,
    seed: int = 0,
) -> None:
    """Give ``policy`` (in place) a new action size, state size and/or chunk horizon."""
    model = policy.model
    old = model.config.action
    new = dataclasses.replace(
        old,
        action_dim=old.action_dim if action_dim is None else action_dim,
        state_dim=old.state_dim if state_dim is None else state_dim,
        horizon=old.horizon if horizon is None else horizon,
    )
    gen = torch.Generator().manual_seed(seed)
    io = model.action
    hidden = io.action_in.out_features
    if new.action_dim != old.action_dim:
        io.action_in = _resize_in(io.action_in, new.action_dim, gen)
        io.action_out = _resize_out(io.action_out, new.action_dim)
    if new.state_dim != old.state_dim:
        if new.state_dim == 0:
            io.state_in = None
        elif io.state_in is None:
            io.state_in = _resize_in(nn.Linear(0, hidden), new.state_dim, gen)
        else:
            io.state_in = _resize_in(io.state_in, new.state_dim, gen)
    io.action_dim, io.state_dim = new.action_dim, new.state_dim
    model.config.action = new
    policy.processor.config.action = new


def robot_norm_stats(samples: Sequence[EmCoTSample], robot: str) -> RobotNormStats:
    """Statistics of the actions (and states) of ``robot``'s samples that carry actions."""
    own = [s for s in samples if s.robot == robot and s.actions is not None]
    if not own:
        raise ValueError(f"no samples with actions for robot '{robot}'; check the data's robot name")
    actions = np.concatenate([np.asarray(s.actions, np.float32) for s in own])
    states = [s.observation.state for s in own if s.observation.state is not None]
    state = NormStats.compute(np.stack(states)) if states else None
    return RobotNormStats({robot: {"state": state, "action": NormStats.compute(actions)}})


def apply_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """Inject LoRA adapters (in place) into the chosen experts' projections; returns the model."""
    from peft import LoraConfig, inject_adapter_in_model

    experts = "|".join(spec.experts)
    targets = "|".join(spec.targets)
    pattern = rf"backbone\.layers\.\d+\.experts\.({experts})\.(?:mlp\.)?({targets})"
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=pattern)
    return inject_adapter_in_model(config, model)


def set_trainable(model: nn.Module, config: FinetuneConfig) -> dict[str, int]:
    """Freeze per :class:`FinetuneConfig` (LoRA experts train only their adapters); returns trainable counts per group."""
    lora_experts = set(config.lora.experts) if config.lora is not None else set()
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        group = param_group(name)
        if "lora_" in name:
            train = True
        elif group == "vae" or group in lora_experts or group in config.freeze:
            train = False
        else:
            train = config.train_only is None or group in config.train_only
        param.requires_grad_(train)
        if train:
            counts[group] = counts.get(group, 0) + param.numel()
    if not counts:
        raise ValueError("the fine-tuning settings freeze every parameter; train at least one group")
    return counts


def merged_state_dict(
    model: nn.Module, values: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The plain model's state dict with LoRA adapters merged in (``values`` overrides entries, e.g. EMA)."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    state.update(values or {})
    for prefix, module in model.named_modules():
        scaling = getattr(module, "scaling", None)
        if not isinstance(scaling, dict) or f"{prefix}.base_layer.weight" not in state:
            continue
        for adapter, scale in scaling.items():
            a = state.pop(f"{prefix}.lora_A.{adapter}.weight")
            b = state.pop(f"{prefix}.lora_B.{adapter}.weight")
            base = f"{prefix}.base_layer.weight"
            state[base] = state[base] + scale * (b.float() @ a.float()).to(state[base].dtype)
    out = {}
    for key, value in state.items():
        if "lora_" not in key:
            out[key.replace(".base_layer.", ".")] = value
    return out


@dataclass
class Adaptation:
    """What :func:`adapt_policy` changed, for logs."""

    resized: dict[str, tuple[int, int]] = field(default_factory=dict)
    robot: str = ""


def adapt_policy(policy, config: FinetuneConfig, samples: Sequence[EmCoTSample], seed: int = 0) -> Adaptation:
    """Resize the action space and replace the normalisation statistics with the new robot's
    (kept when ``config.robot`` is None)."""
    old = policy.model.config.action
    resize_action_space(policy, config.action_dim, config.state_dim, config.horizon, seed)
    new = policy.model.config.action
    if config.robot is not None:
        policy.processor.norm_stats = robot_norm_stats(samples, config.robot)
        policy.processor.settings.robot = config.robot
    resized = {
        k: (getattr(old, k), getattr(new, k))
        for k in ("action_dim", "state_dim", "horizon")
        if getattr(old, k) != getattr(new, k)
    }
    return Adaptation(resized, policy.processor.settings.robot)


def scaled_param_groups(model: nn.Module, lr: float, lr_scale: dict[str, float]) -> list[dict]:
    """The trainable parameters as AdamW groups: one at ``lr``, one per ``lr_scale`` entry (a recipe's
    ``optim.lr_scale``: the parameters under that top-level module, at ``lr × scale``); a scale that
    names no module with trainable parameters raises."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    unknown = sorted(m for m in lr_scale if not any(n.split(".")[0] == m for n, _ in named))
    if unknown:
        modules = sorted({n.split(".")[0] for n, _ in named})
        raise ValueError(
            f"optim.lr_scale names {unknown}, which hold no trainable parameters; modules: {modules}"
        )
    groups = [{"params": [p for n, p in named if n.split(".")[0] not in lr_scale], "lr": lr}]
    for module, scale in lr_scale.items():
        groups.append({"params": [p for n, p in named if n.split(".")[0] == module], "lr": lr * scale})
    return groups
