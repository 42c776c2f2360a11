"""Bad inputs of the training side: recipe fields and files, divergence, damaged checkpoints, metrics,
LeRobot metadata, VQA files and non-finite episodes given to the annotator.

Every case is fast (no training run); the scenarios that train live in ``tests/training``.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import yaml
from corpus import BadInput
from safetensors.torch import save_file

from emcot.training.checkpoints import resumable_checkpoint, truncate_metrics
from emcot.training.data.sources import DataSpec, build_source
from emcot.training.divergence import DivergenceGuard, OnDivergence, StepHealth, refuse_nonfinite
from emcot.training.recipes import RECIPE_DIR, Recipe, load_recipe

# One process, as an accelerate.Accelerator looks to the checkpoint and divergence helpers.
ONE_PROCESS = SimpleNamespace(num_processes=1, process_index=0, is_main_process=True, device="cpu")


# ---------------------------------------------------------------------------------------------
# Recipe fields: stage1-tiny with one field changed.


@cache
def _tiny() -> dict:
    return yaml.safe_load((RECIPE_DIR / "stage1-tiny.yaml").read_text())


def _recipe_with(path: str, value) -> Callable[[Path], Recipe]:
    """A run that builds stage1-tiny with the dotted ``path`` (list indices allowed) set to ``value``."""

    def run(_: Path) -> Recipe:
        data = copy.deepcopy(_tiny())
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[int(last) if isinstance(node, list) else last] = value
        return Recipe.from_dict(data)

    return run


def _field(case_id: str, path: str, value, match: str | None) -> BadInput:
    return BadInput(case_id, _recipe_with(path, value), match, None if match is None else ValueError)


RECIPE_FIELDS = [
    _field(
        "optim-clip-negative", "optim.clip_grad_norm", -1.0, r"optim\.clip_grad_norm must be > 0, got -1\.0"
    ),
    _field("optim-clip-zero", "optim.clip_grad_norm", 0, r"optim\.clip_grad_norm must be > 0"),
    _field("optim-clip-null-is-off", "optim.clip_grad_norm", None, None),
    _field("optim-lr-string", "optim.lr", "fast", r"optim\.lr must be a finite number, got str 'fast'"),
    _field("optim-lr-zero", "optim.lr", 0.0, r"optim\.lr must be > 0"),
    _field("optim-lr-negative", "optim.lr", -1e-3, r"optim\.lr must be > 0"),
    _field("optim-lr-nan", "optim.lr", math.nan, r"optim\.lr must be a finite number"),
    _field("optim-lr-inf", "optim.lr", math.inf, r"optim\.lr must be a finite number"),
    _field("optim-lr-int-is-a-float", "optim.lr", 1, None),
    _field("optim-beta-one", "optim.betas", [0.9, 1.0], r"optim\.betas\[1\] must be < 1, got 1\.0"),
    _field("optim-beta-negative", "optim.betas", [-0.1, 0.95], r"optim\.betas\[0\] must be ≥ 0"),
    _field("optim-betas-one-value", "optim.betas", [0.9], r"optim\.betas must be a list"),
    _field("optim-betas-strings", "optim.betas", ["a", "b"], r"optim\.betas must be a list"),
    _field("optim-eps-zero", "optim.eps", 0.0, r"optim\.eps must be > 0"),
    _field("optim-weight-decay-negative", "optim.weight_decay", -0.1, r"optim\.weight_decay must be ≥ 0"),
    _field("optim-warmup-negative", "optim.warmup_steps", -1, r"optim\.warmup_steps must be ≥ 0"),
    _field("optim-warmup-fraction", "optim.warmup_steps", 2.5, r"optim\.warmup_steps must be an integer"),
    _field("optim-min-lr-ratio-above-one", "optim.min_lr_ratio", 1.5, r"optim\.min_lr_ratio must be ≤ 1"),
    _field("optim-schedule-unknown", "optim.schedule", "exp", r"optim\.schedule must be 'cosine'"),
    _field(
        "optim-unknown-key",
        "optim.learning_rate",
        1.0,
        r"unknown keys \['learning_rate'\] in recipe section 'optim'",
    ),
    _field("train-ema-one", "train.ema_decay", 1.0, r"train\.ema_decay must be < 1"),
    _field("train-ema-negative", "train.ema_decay", -0.1, r"train\.ema_decay must be ≥ 0"),
    _field("train-ema-null-is-off", "train.ema_decay", None, None),
    _field(
        "train-ema-string", "train.ema_decay", "high", r"train\.ema_decay must be a finite number or None"
    ),
    _field("train-total-steps-zero", "train.total_steps", 0, r"train\.total_steps must be ≥ 1"),
    _field("train-total-steps-string", "train.total_steps", "100", r"train\.total_steps must be an integer"),
    _field("train-total-steps-bool", "train.total_steps", True, r"train\.total_steps must be an integer"),
    _field("train-save-every-zero", "train.save_every", 0, r"train\.save_every must be ≥ 1"),
    _field("train-keep-last-zero", "train.keep_last", 0, r"train\.keep_last must be ≥ 1"),
    _field("train-log-every-zero", "train.log_every", 0, r"train\.log_every must be ≥ 1"),
    _field("train-eval-every-negative", "train.eval_every", -5, r"train\.eval_every must be ≥ 0"),
    _field("train-seed-negative", "train.seed", -1, r"train\.seed must be ≥ 0"),
    _field("train-precision-unknown", "train.mixed_precision", "fp8", r"train\.mixed_precision must be auto"),
    _field("train-log-with-a-string", "train.log_with", "wandb", r"train\.log_with must be a list"),
    _field(
        "train-divergence-unknown",
        "train.on_divergence",
        "ignore",
        r"train\.on_divergence must be one of \['stop', 'skip'\]",
    ),
    _field("train-divergence-skip", "train.on_divergence", "skip", None),
    _field("train-max-skips-zero", "train.max_skipped_steps", 0, r"train\.max_skipped_steps must be ≥ 1"),
    _field("train-progress-string", "train.progress", "yes", r"train\.progress must be true/false"),
    _field(
        "packing-packs-zero", "data.packing.packs_per_step", 0, r"data\.packing\.packs_per_step must be ≥ 1"
    ),
    _field(
        "packing-tokens-string",
        "data.packing.expected_tokens",
        "1k",
        r"data\.packing\.expected_tokens must be an integer",
    ),
    _field(
        "packing-expected-above-max",
        "data.packing.expected_tokens",
        4096,
        r"expected_tokens ≤ max_tokens, got 4096 and 1536 \(in recipe section 'data\.packing'\)",
    ),
    _field("dropout-above-one", "data.dropout.text", 1.5, r"data\.dropout\.text must be ≤ 1, got 1\.5"),
    _field("dropout-negative", "data.dropout.vit", -0.1, r"data\.dropout\.vit must be ≥ 0"),
    _field("dropout-nan", "data.dropout.vae", math.nan, r"data\.dropout\.vae must be a finite number"),
    _field("dropout-all-one", "data.dropout", {"text": 1, "vit": 1, "vae": 1}, None),
    _field(
        "data-weight-zero",
        "data.datasets.0.weight",
        0.0,
        r"dataset\.weight must be > 0, got 0\.0 \(in recipe section 'data\.datasets\[0\]'\)",
    ),
    _field(
        "data-weight-negative",
        "data.datasets.2.weight",
        -1,
        r"dataset\.weight must be > 0.*'data\.datasets\[2\]'",
    ),
    _field(
        "data-weight-string", "data.datasets.1.weight", "heavy", r"dataset\.weight must be a finite number"
    ),
    _field("data-num-samples-zero", "data.datasets.0.num_samples", 0, r"dataset\.num_samples must be ≥ 1"),
    _field("data-kind-unknown", "data.datasets.0.kind", "imagenet", r"unknown data kind 'imagenet'"),
    _field(
        "data-lerobot-without-path",
        "data.datasets.0",
        {"kind": "lerobot"},
        r"data kind 'lerobot' needs a path",
    ),
    _field("data-datasets-empty", "data.datasets", [], r"data\.datasets is empty"),
    _field(
        "data-datasets-a-mapping",
        "data.datasets",
        {"kind": "synthetic_vqa"},
        r"data\.datasets must be a list",
    ),
    _field("data-validation-weight", "data.validation.0.weight", -2.0, r"'data\.validation\[0\]'"),
    _field("data-validation-packs-zero", "data.validation_packs", 0, r"data\.validation_packs must be ≥ 1"),
    _field("model-cameras-a-string", "model.cameras", "head", r"model\.cameras must be a list"),
    _field("section-not-a-mapping", "optim", 3, r"recipe\.optim must be an? OptimConfig, got int 3"),
    _field("loss-weight-negative", "loss.text_weight", -1.0, r"text_weight must be ≥ 0"),
    _field("finetune-lora-rank-zero", "finetune.lora", {"r": 0}, r"finetune\.lora\.r must be ≥ 1"),
    _field(
        "finetune-lora-dropout-one", "finetune.lora", {"dropout": 1.0}, r"finetune\.lora\.dropout must be < 1"
    ),
    _field(
        "finetune-lora-unknown-key",
        "finetune.lora",
        {"rank": 4},
        r"unknown keys \['rank'\] in recipe section 'finetune\.lora'",
    ),
    _field("finetune-lora-a-string", "finetune.lora", "yes", r"finetune\.lora must be a LoraSpec or None"),
    _field("finetune-action-dim-zero", "finetune.action_dim", 0, r"finetune\.action_dim must be ≥ 1"),
    _field("finetune-freeze-unknown-group", "finetune.freeze", ["brain"], r"unknown parameter group 'brain'"),
    _field(
        "finetune-train-only-a-string", "finetune.train_only", "und", r"finetune\.train_only must be a list"
    ),
]


# ---------------------------------------------------------------------------------------------
# Recipe files and data-source options.


def _recipe_file(text: str) -> Callable[[Path], Recipe]:
    def run(scratch: Path) -> Recipe:
        path = scratch / "recipe.yaml"
        path.write_text(text)
        return load_recipe(path)

    return run


def _source_options(kind: str, options: dict) -> Callable[[Path], object]:
    def run(scratch: Path) -> object:
        spec = DataSpec(kind, path=str(scratch / "no-dataset"), options=options)
        return build_source(spec, load_recipe("stage1-tiny"), horizon=4)

    return run


RECIPE_FILES = [
    BadInput(
        "yaml-unclosed-bracket",
        _recipe_file("name: x\noptim: {lr: 1e-3\ntrain: {}\n"),
        r"recipe .*recipe\.yaml is not valid YAML at line \d+",
    ),
    BadInput(
        "yaml-bad-indent",
        _recipe_file("name: x\ndata:\n  datasets: []\n bad: 1\n"),
        r"is not valid YAML at line 4",
    ),
    BadInput("yaml-tab", _recipe_file("name: x\n\tdata: {}\n"), r"is not valid YAML at line 2"),
    BadInput("yaml-a-list", _recipe_file("- name: x\n"), r"recipe\.yaml must hold a YAML mapping"),
    BadInput(
        "yaml-field-error-names-the-file",
        _recipe_file(yaml.safe_dump({**_tiny(), "optim": {"lr": -1.0}})),
        r"recipe .*recipe\.yaml: optim\.lr must be > 0",
    ),
    BadInput("yaml-without-data", _recipe_file("name: x\n"), r"needs at least 'name' and 'data'"),
    BadInput("recipe-unknown-name", lambda s: load_recipe("no-such-recipe"), r"shipped recipes"),
    BadInput(
        "future-frame-option-unknown",
        _source_options("lerobot_future", {"offsett": 3}),
        r"unknown options \['offsett'\] of data kind 'lerobot_future'",
    ),
    BadInput(
        "future-frame-offset-zero",
        _source_options("lerobot_future", {"offset": 0}),
        r"FutureFrameConfig\.offset must be ≥ 1",
    ),
    BadInput(
        "sample-option-unknown",
        _source_options("lerobot", {"horizn": 3}),
        r"unknown options \['horizn'\] of data kind 'lerobot'",
    ),
    BadInput(
        "sample-stride-string",
        _source_options("lerobot", {"stride": "2"}),
        r"SampleConfig\.stride must be an integer",
    ),
]


# ---------------------------------------------------------------------------------------------
# Divergence decisions and the finiteness check before weights are written.


def _guard(policy: OnDivergence, losses: dict, grad_norm: float, **kw) -> Callable[[Path], bool]:
    def run(_: Path) -> bool:
        guard = DivergenceGuard(policy, max_consecutive=kw.pop("max_consecutive", 10), skipped=0)
        health = StepHealth(7, losses, grad_norm, 1e-3, **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            applied = guard.apply_update(health)
        assert applied == health.finite and guard.skipped == (0 if applied else 1)
        return applied

    return run


def _refuse(tensors: dict) -> Callable[[Path], None]:
    return lambda scratch: refuse_nonfinite(ONE_PROCESS, {"weights": tensors}, str(scratch / "checkpoint-3"))


NAN_LOSS = {"loss": math.nan, "text": 1.0, "action": math.nan}
STOP, SKIP = OnDivergence.STOP, OnDivergence.SKIP
DIVERGENCE = [
    BadInput(
        "diverge-nan-loss-stops",
        _guard(STOP, NAN_LOSS, 1.0),
        r"diverged at step 7: loss nan \(text 1, action nan\), gradient norm 1.*Lower optim\.lr",
    ),
    BadInput(
        "diverge-inf-grad-stops",
        _guard(STOP, {"loss": 1.0}, math.inf),
        r"diverged at step 7: .*gradient norm inf",
    ),
    BadInput(
        "diverge-nan-loss-tensor-stops",
        _guard(STOP, {"loss": 1.0}, 1.0, loss_finite=False),
        r"diverged at step 7",
    ),
    BadInput(
        "diverge-scaler-overflow-is-not-divergence",
        _guard(STOP, {"loss": 1.0}, math.inf, overflow_ok=True),
        None,
        None,
    ),
    BadInput("diverge-finite-step-applies", _guard(STOP, {"loss": 1.0, "text": 1.0}, 3.0), None, None),
    BadInput("diverge-skip-mode-skips", _guard(SKIP, NAN_LOSS, math.nan), None, None),
    BadInput(
        "diverge-skip-mode-limit",
        _guard(SKIP, NAN_LOSS, math.nan, max_consecutive=1),
        r"1 consecutive steps up to step 7 .*max_skipped_steps",
    ),
    BadInput(
        "write-nan-weights",
        _refuse({"a": torch.ones(3), "b": torch.tensor([1.0, math.nan])}),
        r"not writing .*checkpoint-3: .*NaN/inf values \(weights b\)",
    ),
    BadInput(
        "write-inf-nested-state", _refuse({"exp_avg": {"w": torch.tensor([math.inf])}}), r"weights exp_avg\.w"
    ),
    BadInput("write-finite-weights", _refuse({"a": torch.ones(3), "step": torch.tensor(3)}), None, None),
]


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints on --resume, and metrics.jsonl.


def _fake_checkpoint(folder: Path, step: int) -> None:
    """The files of a training checkpoint, with tiny contents."""
    folder.mkdir(parents=True)
    save_file({"w": torch.ones(64)}, str(folder / "model.safetensors"))
    torch.save({"state": {"w": {"exp_avg": torch.zeros(64)}}, "param_groups": []}, folder / "optimizer.pt")
    (folder / "scheduler.json").write_text(json.dumps({"last_epoch": step}))
    state = {"step": step, "data": {"position": step}, "aliases": {}}
    (folder / "trainer_state.json").write_text(json.dumps(state))
    save_file({"torch": torch.zeros(8, dtype=torch.uint8)}, str(folder / "rng-0.safetensors"))
    (folder / "rng-0.json").write_text(json.dumps({"numpy": [], "python": []}))


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _resume_with(damage: Callable[[Path], None], folders: tuple[int, ...] = (2,)) -> Callable[[Path], Path]:
    """Two checkpoints, ``damage`` applied to those of ``folders``; warnings are raised as errors."""

    def run(scratch: Path) -> Path:
        for step in (1, 2):
            _fake_checkpoint(scratch / f"checkpoint-{step}", step)
        for step in folders:
            damage(scratch / f"checkpoint-{step}")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            found = resumable_checkpoint(scratch, ONE_PROCESS)
        assert found == scratch / "checkpoint-2"
        return found

    return run


def _remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def _truncate(name: str) -> Callable[[Path], None]:
    return lambda folder: _cut(folder / name)


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(text)


FALLBACK = r"skipping damaged checkpoints checkpoint-2 \({}.*\); resuming from checkpoint-1"
RESUME = [
    BadInput("resume-all-good", _resume_with(lambda folder: None), None, None),
    BadInput(
        "resume-model-missing",
        _resume_with(_remove("model.safetensors")),
        FALLBACK.format("model.safetensors is missing"),
        UserWarning,
    ),
    BadInput(
        "resume-model-truncated",
        _resume_with(_truncate("model.safetensors")),
        FALLBACK.format("model.safetensors is truncated or corrupt"),
        UserWarning,
    ),
    BadInput(
        "resume-model-empty",
        _resume_with(_write("model.safetensors", "")),
        FALLBACK.format("model.safetensors is truncated"),
        UserWarning,
    ),
    BadInput(
        "resume-optimizer-missing",
        _resume_with(_remove("optimizer.pt")),
        FALLBACK.format("optimizer.pt is missing"),
        UserWarning,
    ),
    BadInput(
        "resume-optimizer-truncated",
        _resume_with(_truncate("optimizer.pt")),
        FALLBACK.format("optimizer.pt is truncated or corrupt"),
        UserWarning,
    ),
    BadInput(
        "resume-scheduler-missing",
        _resume_with(_remove("scheduler.json")),
        FALLBACK.format("scheduler state .*scheduler.json does not exist"),
        UserWarning,
    ),
    BadInput(
        "resume-scheduler-truncated",
        _resume_with(_truncate("scheduler.json")),
        FALLBACK.format("scheduler state .*scheduler.json is not valid JSON"),
        UserWarning,
    ),
    BadInput(
        "resume-state-missing",
        _resume_with(_remove("trainer_state.json")),
        FALLBACK.format("trainer state .*trainer_state.json does not exist"),
        UserWarning,
    ),
    BadInput(
        "resume-state-truncated",
        _resume_with(_truncate("trainer_state.json")),
        FALLBACK.format("trainer state .*trainer_state.json is not valid JSON"),
        UserWarning,
    ),
    BadInput(
        "resume-state-without-step",
        _resume_with(_write("trainer_state.json", "{}")),
        FALLBACK.format(r"trainer_state.json lacks the fields \['step', 'data', 'aliases'\]"),
        UserWarning,
    ),
    BadInput(
        "resume-rng-json-truncated",
        _resume_with(_truncate("rng-0.json")),
        FALLBACK.format("RNG state .*rng-0.json is not valid JSON"),
        UserWarning,
    ),
    BadInput(
        "resume-rng-tensors-truncated",
        _resume_with(_truncate("rng-0.safetensors")),
        FALLBACK.format("rng-0.safetensors is truncated"),
        UserWarning,
    ),
    BadInput("resume-other-rank-rng-missing-is-fine", _resume_with(_remove("rng-0.safetensors")), None, None),
    BadInput(
        "resume-ema-truncated",
        _resume_with(
            lambda f: (
                save_file({"w": torch.ones(64)}, str(f / "ema.safetensors")) or _cut(f / "ema.safetensors")
            )
        ),
        FALLBACK.format("ema.safetensors is truncated"),
        UserWarning,
    ),
    BadInput(
        "resume-all-damaged",
        _resume_with(_truncate("model.safetensors"), (1, 2)),
        r"no checkpoint in .* can be resumed from: checkpoint-2 \(model\.safetensors is truncated.*\); checkpoint-1 \(model\.safetensors",
    ),
]


def _metrics(text: str, keep: int = 2) -> Callable[[Path], list]:
    def run(scratch: Path) -> list:
        path = scratch / "metrics.jsonl"
        path.write_text(text)
        truncate_metrics(scratch, keep)
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["step"] for r in rows] == [s for s in (1, 2) if s <= keep]
        return rows

    return run


METRICS = [
    BadInput(
        "metrics-clean",
        _metrics('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 3, "loss": 0.4}\n'),
        None,
        None,
    ),
    BadInput(
        "metrics-nan-values",
        _metrics('{"step": 1, "loss": NaN}\n{"step": 2, "loss": Infinity}\n'),
        None,
        None,
    ),
    BadInput(
        "metrics-torn-tail",
        _metrics('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 3, "lo'),
        None,
        None,
    ),
    BadInput("metrics-blank-lines", _metrics('{"step": 1}\n\n{"step": 2}\n\n'), None, None),
    BadInput(
        "metrics-torn-middle",
        _metrics('{"step": 1}\n{"st\n{"step": 2}\n'),
        r"metrics\.jsonl line 2 is not valid JSON",
    ),
    BadInput(
        "metrics-record-without-step",
        _metrics('{"step": 1}\n{"loss": 2}\n{"step": 2}\n'),
        r"metrics\.jsonl record 2 has no integer 'step'",
    ),
    BadInput(
        "metrics-not-records", _metrics("[1, 2]\n3\n"), r"metrics\.jsonl record 1 has no integer 'step'"
    ),
]


# ---------------------------------------------------------------------------------------------
# LeRobot metadata, VQA files and non-finite episodes.


def _states(length: int = 20) -> np.ndarray:
    return np.cumsum(np.full((length, 4), 0.01, np.float32), axis=0)


def _dataset(scratch: Path, states: list[np.ndarray] | None = None, actions: list | None = None) -> Path:
    """A v2.1 LeRobot dataset without cameras: one episode per entry of ``states``."""
    from emcot.training.data.lerobot_writer import EpisodeData, WriterConfig, write_lerobot_dataset

    states = states or [_states()]
    actions = actions or states
    episodes = [EpisodeData("lift the cube", s, a) for s, a in zip(states, actions)]
    config = WriterConfig(version="v2.1", camera_storage="image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the writer's statistics of NaN data
        return write_lerobot_dataset(scratch / "ds", episodes, 10, config)


def _meta(edit: Callable[[Path], None]) -> Callable[[Path], object]:
    """Write a dataset, apply ``edit`` to its root, open it and read its statistics."""

    def run(scratch: Path) -> object:
        from emcot.training.data.lerobot import LeRobotDataset

        root = _dataset(scratch)
        edit(root)
        return LeRobotDataset(root).stats

    return run


def _info(**changes) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        path = root / "meta" / "info.json"
        info = json.loads(path.read_text())
        for key, value in changes.items():
            if value is _DROP:
                info.pop(key)
            else:
                info[key] = value
        path.write_text(json.dumps(info))

    return edit


_DROP = object()


def _meta_file(name: str, text: str) -> Callable[[Path], None]:
    return lambda root: (root / "meta" / name).write_text(text)


def _append_line(name: str, text: str) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        with (root / "meta" / name).open("a") as f:
            f.write(text)

    return edit


def _episode_context(
    states: list[np.ndarray], actions: list | None = None, episode: int = 0
) -> Callable[[Path], object]:
    def run(scratch: Path) -> object:
        from emcot.training.annotation.pipeline import ContextConfig, build_context
        from emcot.training.data.lerobot import LeRobotDataset

        dataset = LeRobotDataset(_dataset(scratch, states, actions))
        return build_context(dataset.episode(episode), ContextConfig(), with_images=False)

    return run


def _annotate_reports_failure(scratch: Path) -> None:
    from emcot.training.annotation.annotators import RuleAnnotator
    from emcot.training.annotation.pipeline import annotate_dataset
    from emcot.training.data.lerobot import LeRobotDataset

    bad = _states()
    bad[5, 2] = math.inf
    dataset = LeRobotDataset(_dataset(scratch, [_states(), bad]))
    summary = annotate_dataset(dataset, RuleAnnotator(), scratch / "ann.jsonl", progress=False)
    assert (summary.ok, summary.failed) == (1, 1), summary.format()
    assert "non-finite values in 'observation.state' (first at frame 5, dimension 2" in summary.failures[1]


def _vqa(name: str, text: str, read: str | None = None) -> Callable[[Path], object]:
    def run(scratch: Path) -> object:
        from emcot.training.data.vqa import LlavaVQADataset

        (scratch / name).write_text(text)
        return LlavaVQADataset(scratch / (read or name))

    return run


def _annotations(text: str) -> Callable[[Path], object]:
    def run(scratch: Path) -> object:
        from emcot.training.annotation.annotations import read_annotations

        (scratch / "ann.jsonl").write_text(text)
        return read_annotations(scratch / "ann.jsonl")

    return run


def _nan_at(row: int, col: int, value: float = math.nan) -> np.ndarray:
    states = _states()
    states[row, col] = value
    return states


INFO = r"info\.json field 'fps'"
DATA = [
    BadInput("lerobot-good", _meta(lambda root: None), None, None),
    BadInput("lerobot-fps-zero", _meta(_info(fps=0)), INFO + r" must be > 0, got 0\.0"),
    BadInput("lerobot-fps-negative", _meta(_info(fps=-30)), INFO + r" must be > 0, got -30\.0"),
    BadInput(
        "lerobot-fps-string", _meta(_info(fps="thirty")), INFO + r" must be a finite number, got str 'thirty'"
    ),
    BadInput("lerobot-fps-bool", _meta(_info(fps=True)), INFO + r" must be a finite number, got bool"),
    BadInput("lerobot-fps-null", _meta(_info(fps=None)), INFO + r" must be a finite number, got NoneType"),
    BadInput("lerobot-fps-float", _meta(_info(fps=29.97)), None, None),
    BadInput("lerobot-fps-missing", _meta(_info(fps=_DROP)), r"info\.json lacks the fields \['fps'\]"),
    BadInput(
        "lerobot-chunks-size-zero", _meta(_info(chunks_size=0)), r"info\.json field 'chunks_size' must be ≥ 1"
    ),
    BadInput(
        "lerobot-total-frames-string",
        _meta(_info(total_frames="many")),
        r"info\.json field 'total_frames' must be an integer",
    ),
    BadInput("lerobot-version-old", _meta(_info(codebase_version="v1.6")), r"only v2\.x and v3\.x"),
    BadInput(
        "lerobot-features-a-list", _meta(_info(features=[])), r"info\.json field 'features' must be a mapping"
    ),
    BadInput(
        "lerobot-info-corrupt",
        _meta(_meta_file("info.json", '{"fps": 10,')),
        r"LeRobot info file .*info\.json is not valid JSON",
    ),
    BadInput(
        "lerobot-info-a-list", _meta(_meta_file("info.json", "[]")), r"info\.json must hold a JSON object"
    ),
    BadInput(
        "lerobot-tasks-corrupt",
        _meta(_append_line("tasks.jsonl", '{"task_index": 1, "ta\n')),
        r"tasks\.jsonl line 2 is not valid JSON",
    ),
    BadInput(
        "lerobot-episodes-corrupt",
        _meta(_meta_file("episodes.jsonl", "{oops}\n")),
        r"episodes\.jsonl line 1 is not valid JSON",
    ),
    BadInput(
        "lerobot-episode-stats-corrupt",
        _meta(_append_line("episodes_stats.jsonl", "{\n")),
        r"episodes_stats\.jsonl line 2 is not valid JSON",
    ),
    BadInput(
        "lerobot-stats-corrupt",
        _meta(_meta_file("stats.json", '{"action": {"mean": [0.1')),
        r"LeRobot statistics file .*stats\.json is not valid JSON",
    ),
    BadInput(
        "lerobot-stats-a-list",
        _meta(_meta_file("stats.json", "[1, 2]")),
        r"stats\.json must map each feature to its statistics",
    ),
    BadInput(
        "annotate-nan-state",
        _episode_context([_nan_at(3, 1)]),
        r"Episode 0 has non-finite values in 'observation\.state' \(first at frame 3, dimension 1: nan\)",
    ),
    BadInput(
        "annotate-inf-action",
        _episode_context([_states()], [_nan_at(7, 0, -math.inf)]),
        r"Episode 0 has non-finite values in 'action' \(first at frame 7, dimension 0: -inf\)",
    ),
    BadInput("annotate-finite-episode", _episode_context([_states()]), None, None),
    BadInput("annotate-pipeline-reports-failed", _annotate_reports_failure, None, None),
    BadInput(
        "vqa-json-corrupt",
        _vqa("vqa.json", '[{"conversations": ['),
        r"VQA file .*vqa\.json is not valid JSON",
    ),
    BadInput(
        "vqa-jsonl-bad-line",
        _vqa("vqa.jsonl", '{"conversations": []}\n{bad\n{"conversations": []}\n'),
        r"vqa\.jsonl line 2 is not valid JSON",
    ),
    BadInput(
        "vqa-json-a-mapping", _vqa("vqa.json", '{"conversations": []}'), r"vqa\.json must hold a JSON list"
    ),
    BadInput(
        "vqa-missing", _vqa("other.json", "[]", read="none.json"), r"VQA file .*none\.json does not exist"
    ),
    BadInput(
        "annotations-bad-middle-line",
        _annotations('{not json\n{"episode_index": 0}\n'),
        r"ann\.jsonl:1 is not valid JSON",
    ),
    BadInput("annotations-empty-file", _annotations(""), None, None),
]

CASES: list[BadInput] = [*RECIPE_FIELDS, *RECIPE_FILES, *DIVERGENCE, *RESUME, *METRICS, *DATA]
