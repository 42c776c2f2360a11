"""Fully sharded data parallel (FSDP2) for the trainer, and state dicts that work with or without it.

accelerate shards only GPU runs, so the trainer applies ``fully_shard`` itself, the same way on
GPUs (NCCL) and CPU processes (gloo): the path the CPU tests run is the one GPUs run. Each MoT
layer is one FSDP unit (about 85 % of the weights at HALO size); the root unit holds the
embeddings, the ViT and the expert I/O heads.

State dicts go through ``torch.distributed.checkpoint``'s full-state API, which serves unsharded
and DDP modules too: checkpoints hold plain full tensors keyed by parameter name, whatever
wrote them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from emcot.model.backbone import MoTLayer

if TYPE_CHECKING:
    from torch.distributed.checkpoint.state_dict import ValueType

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
LOAD = StateDictOptions(full_state_dict=True, strict=True)


def shard_module(module: nn.Module, device: torch.device, mixed_precision: str) -> None:
    """Shard ``module`` in place over all processes: one unit per :class:`MoTLayer`, then the root.

    With ``bf16``, weights are gathered and computed in bfloat16 while gradients are reduced and
    stored in float32 (the master weights stay float32).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("train.fsdp needs a distributed launch: run under `accelerate launch` or `torchrun`")
    if mixed_precision == "fp16":
        raise ValueError("FSDP training supports mixed_precision bf16 or no (fp16 needs a gradient scaler)")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_precision == "bf16"
        else MixedPrecisionPolicy()
    )
    for layer in module.modules():
        if isinstance(layer, MoTLayer):
            fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(module, mesh=mesh, mp_policy=policy)


def root_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters outside the MoT layers (the root FSDP unit's)."""
    inside = {id(p) for m in module.modules() if isinstance(m, MoTLayer) for p in m.parameters()}
    return [p for p in module.parameters() if p.requires_grad and id(p) not in inside]


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU weights by name; every process must call it (only the first receives tensors when sharded)."""
    # Typed for any state (nested lists, dicts, scalars); a module's full state holds only tensors.
    return cast(dict[str, torch.Tensor], get_model_state_dict(module, options=FULL))


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Full optimizer state keyed by parameter name (collective like :func:`full_model_state`)."""
    return get_optimizer_state_dict(module, optimizer, options=FULL)


def load_model_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full weights on every process; sharded modules keep their own shard of each tensor."""
    weights: dict[str, ValueType] = dict(state)  # the API's value type is wider than Tensor
    set_model_state_dict(module, weights, options=LOAD)


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Inverse of :func:`full_optimizer_state`, on every process."""
    set_optimizer_state_dict(module, optimizer, state, options=LOAD)


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor: gathered when ``value`` is a sharded DTensor (collective), else itself."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``like``: this process's shard when ``like`` is a DTensor.

    Every process holds ``full`` (read from the same file), so each cuts its shard locally.
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(like, DTensor):
        full = full.to(like.device, like.dtype)
        return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)
    return full
