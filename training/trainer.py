"""The accelerate trainer: packed multi-task batches, globally normalised losses, EMA, exact resume.

One optimizer step trains on ``packs_per_step`` packs. Every loss term (text cross-entropy,
subgoal MSE, action L1) is a sum divided by its element count over *all* packs of the step on
*all* processes (counted before the forward pass), so one process with gradient accumulation and
N processes with DDP or FSDP compute the same gradient. Flow noise, flow times and condition
dropout are drawn from generators seeded by ``(seed, step, pack)``, and the data order is a pure
function of the seed and the saved data position, so a resumed run repeats an uninterrupted one
exactly. A step whose loss or gradient norm is not finite stops the run or is skipped
(``train.on_divergence``, see :mod:`emcot.training.divergence`).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from emcot.model.modeling import EmCoTModel
from emcot.policy.policy import EmCoTPolicy
from emcot.training.checkpoints import (
    INITIAL_DIR,
    latest_checkpoint,
    load_checkpoint,
    resumable_checkpoint,
    save_checkpoint,
    truncate_metrics,
)
from emcot.training.collate import SampleCollator
from emcot.training.data.frame_cache import frame_cache
from emcot.training.data.sources import build_source
from emcot.training.divergence import DivergenceGuard, StepHealth, any_process, refuse_nonfinite
from emcot.training.ema import EMA
from emcot.training.finetune import FinetuneConfig, apply_lora, scaled_param_groups, set_trainable
from emcot.training.packing import TokenPacker, shard_packs
from emcot.training.policy_files import export_policy, prepare_initial_policy
from emcot.training.recipes import Recipe
from emcot.training.sharding import full_model_state, full_tensor, root_parameters, shard_module

TERMS = ("text", "subgoal", "action", "vqa")


@dataclass
class TrainResult:
    """What a run did: its folder, last step, the per-step losses it computed and the exported policy."""

    output_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)
    policy_dir: Path | None = None


class LossModule(nn.Module):
    """Wraps the model so DDP/FSDP see one forward: a packed batch → the weighted, globally normalised loss.

    With ``touch_all`` every trainable parameter gets a gradient in every training pass: the MoT
    layers route empty token sets through idle experts, and the parameters outside them join the
    loss with weight zero. FSDP reduces gradients unit by unit and hangs if processes disagree on
    which parameters received one, as they do when one process's packs hold no image or action
    tokens.
    """

    def __init__(self, model: EmCoTModel, touch_all: bool = False) -> None:
        super().__init__()
        self.model = model
        self.touch_all = touch_all
        model.backbone.route_idle_experts = touch_all

    def forward(self, batch, generator, weights: dict[str, float], counts: dict[str, float], scale: float):
        out = self.model.compute_loss(batch, generator)
        loss = sum(weights[k] * out.sums[k] / counts[k] for k in out.sums) * scale
        if self.touch_all and self.training:
            # Looked up per call: FSDP registers gathered tensors in place of the shards here.
            loss = loss + 0.0 * sum(p.sum() for p in root_parameters(self))
        return loss, {k: v.detach().float() for k, v in out.sums.items()}


class Schedule:
    """Learning-rate factor: linear warmup, then cosine / linear decay to ``min_ratio`` (or constant)."""

    def __init__(self, warmup: int, total: int, kind: str, min_ratio: float) -> None:
        self.warmup, self.total, self.kind, self.min_ratio = warmup, total, kind, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.kind == "cosine" else 1.0 - progress
        return self.min_ratio + (1.0 - self.min_ratio) * shape


def mixed_precision(setting: str) -> str:
    """``auto`` → bf16 on a GPU that supports it, else full precision (fp32 on CPU)."""
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


class Trainer:
    """Runs a :class:`Recipe` with accelerate (one CPU/GPU, DDP or FSDP via ``accelerate launch``/``torchrun``).

    FSDP (``train.fsdp``, or an accelerate config with ``distributed_type: FSDP``) is applied by
    :mod:`emcot.training.sharding` rather than by accelerate, so it also runs on CPU processes.
    """

    def __init__(self, recipe: Recipe, output_dir: str | Path, init: str | None = None) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed

        self.recipe = recipe
        self.out = Path(output_dir)
        # accelerate keeps one precision per Python process; a second run in the same process
        # (a notebook, a sweep) may ask for another, so drop the previous run's setting first.
        # The process group (PartialState) is kept.
        AcceleratorState._reset_state()
        self.accelerator = acc = Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision=mixed_precision(recipe.train.mixed_precision),
            log_with=list(recipe.train.log_with) or None,
            project_dir=str(self.out),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        train = recipe.train
        self.sharded = train.fsdp or acc.distributed_type == DistributedType.FSDP
        if self.sharded and recipe.data.validation and recipe.data.validation_packs % acc.num_processes:
            raise ValueError(
                f"with FSDP every process runs the same number of forward passes: set "
                f"data.validation_packs ({recipe.data.validation_packs}) to a multiple of the "
                f"{acc.num_processes} processes"
            )
        initial = self.out / INITIAL_DIR
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            if not (initial / "config.json").is_file():
                prepare_initial_policy(recipe, initial, init)
        acc.wait_for_everyone()
        self.policy = policy = EmCoTPolicy.from_pretrained(initial)
        model = policy.model.train()
        set_seed(train.seed)
        ft = recipe.finetune or FinetuneConfig()
        if ft.lora is not None:
            apply_lora(model, ft.lora)
        self.trainable = set_trainable(model, ft)
        if recipe.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        horizon = model.config.action.horizon
        self.collator = SampleCollator(policy.processor, recipe.data.dropout, recipe.data.subgoal_blur)
        data = recipe.data
        frame_cache().set_budget(int(data.frame_cache_gb * (1 << 30)))
        self.packer = TokenPacker(
            [build_source(s, recipe, horizon) for s in data.datasets],
            [s.weight for s in data.datasets],
            self.collator.num_tokens,
            data.packing,
            seed=train.seed,
        )
        self.val_packs = self._validation_packs()
        module = LossModule(model, touch_all=self.sharded)
        if self.sharded:
            # Sharding replaces the parameters, so the optimizer is built on the sharded ones.
            shard_module(module, acc.device, acc.mixed_precision)
        opt = recipe.optim
        optimizer = torch.optim.AdamW(
            scaled_param_groups(model, opt.lr, opt.lr_scale),
            lr=opt.lr,
            betas=opt.betas,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, Schedule(opt.warmup_steps, train.total_steps, opt.schedule, opt.min_lr_ratio)
        )
        if self.sharded:
            self.module, self.optimizer = module, optimizer
        else:
            self.module, self.optimizer = acc.prepare(module, optimizer)
        self.ema = EMA(model, train.ema_decay) if train.ema_decay is not None else None
        self.guard = DivergenceGuard(train.on_divergence, train.max_skipped_steps)
        self.weights = recipe.loss.weights
        self.step = 0

    @property
    def model(self) -> EmCoTModel:
        """The unwrapped training model (its parameters are shards under FSDP)."""
        return self.accelerator.unwrap_model(self.module).model

    @property
    def torch_optimizer(self) -> torch.optim.Optimizer:
        """The AdamW instance itself (accelerate wraps it outside FSDP)."""
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def _no_sync(self):
        """Skip the gradient reduction of all but a step's last pack."""
        if self.sharded:
            return _gradient_sync_off(self.module)
        return self.accelerator.no_sync(self.module)

    def _autocast(self):
        # DDP and single runs get autocast from accelerate.prepare; FSDP casts weights itself, and
        # autocast keeps float32 inputs (times, position tables) from meeting bfloat16 weights.
        return self.accelerator.autocast() if self.sharded else contextlib.nullcontext()

    def _validation_packs(self) -> list[list]:
        data = self.recipe.data
        if not data.validation:
            return []
        horizon = self.policy.config.action.horizon
        packer = TokenPacker(
            [build_source(s, self.recipe, horizon) for s in data.validation],
            [s.weight for s in data.validation],
            self.collator.num_tokens,
            data.packing,
            seed=self.recipe.train.seed + 1,
        )
        return [packer.next_pack() for _ in range(data.validation_packs)]

    def _seeds(self, step: int, index: int, salt: int) -> np.random.Generator:
        return np.random.default_rng([self.recipe.train.seed, salt, step, index])

    def _generator(self, step: int, index: int, salt: int) -> torch.Generator:
        seed = int(self._seeds(step, index, salt).integers(2**62))
        return torch.Generator(device=self.accelerator.device).manual_seed(seed)

    def _reduce(self, values: dict[str, float]) -> dict[str, float]:
        vec = torch.tensor([float(values.get(k, 0.0)) for k in TERMS], dtype=torch.float64)
        vec = self.accelerator.reduce(vec.to(self.accelerator.device), reduction="sum").cpu()
        return {k: float(v) for k, v in zip(TERMS, vec)}

    def _run_packs(self, local, step: int, salt: int, train: bool) -> tuple[dict, dict, int, bool]:
        """Forward (and backward) this process's ``(index, pack)`` pairs.

        Returns global sums, counts and tokens, and whether every process's losses were finite.
        """
        acc = self.accelerator
        batches = [(i, self.collator(p, rng=self._seeds(step, i, salt + 1))) for i, p in local]
        counts: dict[str, float] = {}
        tokens = 0
        for _, batch in batches:
            tokens += batch.num_tokens
            for k, n in self.model.loss_counts(batch).items():
                counts[k] = counts.get(k, 0) + n
        counts = self._reduce(counts)
        tokens_global = int(self._reduce({"text": tokens})["text"])
        # Evaluation runs the unwrapped module: processes may hold different numbers of packs
        # (not under FSDP, whose forward is collective; its validation packs divide evenly).
        module = self.module if train or self.sharded else acc.unwrap_model(self.module)
        sums: dict[str, float] = {}
        finite = True
        for j, (i, batch) in enumerate(batches):
            with torch.set_grad_enabled(train):
                sync = not train or j == len(batches) - 1
                ctx = self._no_sync() if not sync else contextlib.nullcontext()
                with ctx, self._autocast():
                    loss, part = module(
                        batch.to(acc.device),
                        self._generator(step, i, salt),
                        self.weights,
                        counts,
                        acc.num_processes,
                    )
                    if train:
                        acc.backward(loss)
            finite = finite and bool(torch.isfinite(loss.detach()))
            for k, v in part.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        return self._reduce(sums), counts, tokens_global, not any_process(acc, not finite)

    def _metrics(self, sums: dict, counts: dict) -> dict[str, float]:
        terms = {k: sums[k] / counts[k] for k in TERMS if counts.get(k)}
        return {"loss": sum(self.weights[k] * v for k, v in terms.items()), **terms}

    def validate(self) -> dict[str, float]:
        """Weighted loss and terms on the fixed validation packs (same noise every time)."""
        acc = self.accelerator
        self.module.eval()
        local = [(i, p) for i, p in enumerate(self.val_packs) if i % acc.num_processes == acc.process_index]
        sums, counts, _, _ = self._run_packs(local, 0, salt=10, train=False)
        self.module.train()
        return {f"val/{k}": v for k, v in self._metrics(sums, counts).items()}

    def train_step(self) -> dict[str, float]:
        """One optimizer step on the next global batch (skipped or stopped if it diverged)."""
        acc = self.accelerator
        local = shard_packs(self.packer.next_step(), acc.process_index, acc.num_processes)
        sums, counts, tokens, finite = self._run_packs(local, self.step, salt=0, train=True)
        metrics = self._metrics(sums, counts)
        grad_norm = self._grad_norm()
        lr = float(self.scheduler.get_last_lr()[0])  # typed float | Tensor; our lr is a float
        # accelerate's fp16 grad scaler skips overflowing steps itself (not used when we shard).
        overflow_ok = acc.scaler is not None and not self.sharded
        health = StepHealth(self.step + 1, metrics, grad_norm, lr, finite, overflow_ok=overflow_ok)
        if self.guard.apply_update(health):
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        extra = {"lr": lr, "grad_norm": grad_norm, "tokens": tokens, "skipped_steps": self.guard.skipped}
        return {**metrics, **extra}

    def _grad_norm(self) -> float:
        """The global gradient norm before clipping; gradients are clipped when ``optim.clip_grad_norm`` is set."""
        clip = self.recipe.optim.clip_grad_norm or math.inf
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.sharded:
            return float(full_tensor(torch.nn.utils.clip_grad_norm_(params, clip)))
        return float(self.accelerator.clip_grad_norm_(params, clip))

    def checkpoint(self) -> Path:
        """Write ``checkpoint-<step>`` atomically (temporary folder, then rename)."""
        return save_checkpoint(self)

    def resume(self) -> int:
        """Continue from the newest undamaged checkpoint in the output folder, if any; returns the step."""
        usable = resumable_checkpoint(self.out, self.accelerator)
        if usable is not None:
            self.step = load_checkpoint(self, usable)
        if self.accelerator.is_main_process:
            truncate_metrics(self.out, self.step)
        self.accelerator.wait_for_everyone()
        return self.step

    def export(self, name: str = "final") -> Path | None:
        """Save the trained policy (and ``<name>-ema`` with the EMA weights) as plain policy folders."""
        acc = self.accelerator
        state = {k.removeprefix("model."): v for k, v in full_model_state(self.module).items()}
        averaged = self.ema.state_dict(keep=acc.is_main_process) if self.ema is not None else None
        refuse_nonfinite(acc, {"weights": state, "EMA weights": averaged}, str(self.out / name))
        path = None
        if acc.is_main_process:
            path = export_policy(self.policy, state, self.out / name)
            if averaged is not None:
                averaged = {k: v.to(state[k].dtype) for k, v in averaged.items() if k in state}
                export_policy(self.policy, {**state, **averaged}, self.out / f"{name}-ema")
        acc.wait_for_everyone()
        return path

    def fit(self) -> TrainResult:
        """Train until ``total_steps``, logging, validating and checkpointing on schedule."""
        acc, train = self.accelerator, self.recipe.train
        if train.log_with:
            acc.init_trackers(
                self.recipe.name, config={"recipe": self.recipe.name, "lr": self.recipe.optim.lr}
            )
        losses: list[float] = []
        bar = tqdm(
            total=train.total_steps,
            initial=self.step,
            desc=self.recipe.name,
            disable=not (acc.is_main_process and train.progress),
        )
        while self.step < train.total_steps:
            metrics = self.train_step()
            losses.append(metrics["loss"])
            if train.eval_every and self.val_packs and self.step % train.eval_every == 0:
                metrics.update(self.validate())
            if self.step % train.log_every == 0 or self.step == train.total_steps:
                self._log(metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if self.step % train.save_every == 0 or self.step == train.total_steps:
                self.checkpoint()
        bar.close()
        policy_dir = self.export()
        if train.log_with:
            acc.end_training()
        return TrainResult(self.out, self.step, losses, policy_dir)

    def _log(self, metrics: dict[str, float]) -> None:
        acc = self.accelerator
        if self.recipe.train.log_with:
            acc.log(metrics, step=self.step)
        if acc.is_main_process:
            with (self.out / "metrics.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": self.step, **metrics}) + "\n")


@contextlib.contextmanager
def _gradient_sync_off(module):
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def train(
    recipe: Recipe,
    output_dir: str | Path,
    resume: bool = False,
    init: str | None = None,
) -> TrainResult:
    """Run ``recipe`` into ``output_dir``; ``resume`` continues from its latest checkpoint."""
    out = Path(output_dir)
    if not resume and latest_checkpoint(out) is not None:
        raise ValueError(
            f"{out} already holds checkpoints; pass --resume to continue, or choose another --output-dir"
        )
    trainer = Trainer(recipe, out, init)
    if resume:
        trainer.resume()
    return trainer.fit()
