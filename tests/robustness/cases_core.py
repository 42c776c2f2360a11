"""Bad and edge inputs to the library API: generation options, observations, configs, loading, saving.

Each case gets a scratch folder; ``policy_folder(scratch)`` copies the bundled tiny policy there
for cases that damage a saved policy.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from corpus import BadInput
from safetensors.torch import save_file

from emcot import EmCoTConfig, EmCoTModel, EmCoTPolicy, Observation, Trace
from emcot.experts.config import ExpertConfig
from emcot.inference.options import GenerationOptions
from emcot.io_utils import load_safetensors_folder
from emcot.model.flow import FlowSamplerConfig
from emcot.policy.policy import SYNTHETIC_POLICY

NAN, INF = float("nan"), float("inf")
INSTRUCTION = "push the red block to the left"


@functools.cache
def shared_policy() -> EmCoTPolicy:
    """One loaded policy for the cases that do not change it."""
    return EmCoTPolicy.synthetic()


def policy_folder(scratch: Path) -> Path:
    target = scratch / "policy"
    if not target.exists():
        shutil.copytree(SYNTHETIC_POLICY, target)
    return target


def trace(**options):
    policy = shared_policy()
    return lambda scratch: policy.generate_trace(policy.example_observation(), INSTRUCTION, **options)


def observe(images=None, state="default"):
    """A trace from an observation built from ``images``/``state`` (default: valid ones)."""

    def run(scratch):
        policy = shared_policy()
        valid = policy.example_observation()
        obs = Observation(
            images=valid.images if images is None else images,
            state=valid.state if isinstance(state, str) and state == "default" else state,
        )
        return policy.generate_trace(obs, INSTRUCTION)

    return run


def predict_frame(**options):
    policy = shared_policy()
    frame = policy.example_observation().images[policy.cameras[0]]
    return lambda scratch: policy.predict_frame(frame, "Imagine the next scene: push.", seed=0, **options)


def edited_json(name: str, edit):
    """Load the policy after ``edit(data)`` changed its ``name`` JSON file."""

    def run(scratch):
        folder = policy_folder(scratch)
        data = json.loads((folder / name).read_text())
        edit(data)
        (folder / name).write_text(json.dumps(data))
        return EmCoTPolicy.from_pretrained(folder)

    return run


def corrupt_file(name: str, content: str = '{"truncated": '):
    def run(scratch):
        folder = policy_folder(scratch)
        (folder / name).write_text(content)
        return EmCoTPolicy.from_pretrained(folder)

    return run


def sharded_with_corrupt_index(scratch):
    folder = policy_folder(scratch)
    state = load_safetensors_folder(folder)
    (folder / "model.safetensors").unlink()
    save_file(state, str(folder / "model-00001-of-00001.safetensors"))
    (folder / "model.safetensors.index.json").write_text('{"weight_map": ')
    return EmCoTPolicy.from_pretrained(folder)


def nan_weights(scratch):
    folder = policy_folder(scratch)
    state = load_safetensors_folder(folder)
    state["action.action_out.bias"] = torch.full_like(state["action.action_out.bias"], NAN)
    save_file(state, str(folder / "model.safetensors"))
    policy = EmCoTPolicy.from_pretrained(folder)
    return policy.generate_trace(policy.example_observation(), INSTRUCTION, mode="reactive")


def huge_statistics(scratch):
    """Action statistics of 1e38 make un-normalised actions overflow float32."""
    folder = policy_folder(scratch)
    stats = json.loads((folder / "norm_stats.json").read_text())
    for robot in stats["robots"].values():
        action = robot["action"]
        action["std"] = [3e38] * len(action["std"])
    (folder / "norm_stats.json").write_text(json.dumps(stats))
    policy = EmCoTPolicy.from_pretrained(folder)
    return policy.generate_trace(policy.example_observation(), INSTRUCTION, mode="reactive")


def save_to(target: str):
    def run(scratch):
        work = scratch / "work"
        work.mkdir(exist_ok=True)
        (work / "mine.txt").write_text("user file")
        cwd = os.getcwd()
        os.chdir(work)
        try:
            return shared_policy().save_pretrained(target)
        finally:
            os.chdir(cwd)
            assert (work / "mine.txt").read_text() == "user file"

    return run


def load_model(**kwargs):
    return lambda scratch: EmCoTModel.from_pretrained(policy_folder(scratch), **kwargs)


def trace_folder(content: str | None):
    def run(scratch):
        folder = scratch / "trace"
        folder.mkdir()
        if content is not None:
            (folder / "trace.json").write_text(content)
        return Trace.load(folder)

    return run


def returns_finite_actions(fn):
    """The case must succeed and give finite actions."""

    def run(scratch):
        result = fn(scratch)
        assert np.isfinite(result.actions).all()
        return result

    return run


CASES: list[BadInput] = [
    # Generation options: NaN/inf passed every `value < 0` check and gave NaN actions or black images.
    *[
        BadInput(f"{name}-{value}", trace(**{name: value}), f"{name} must be a finite number")
        for name in ("text_guidance", "image_guidance", "action_text_guidance", "action_image_guidance")
        for value in (NAN, INF)
    ],
    BadInput("guidance-negative", trace(text_guidance=-1.0), "text_guidance must be ≥ 0"),
    BadInput("guidance-string", trace(text_guidance="high"), "text_guidance must be a finite number"),
    BadInput("temperature-nan", trace(temperature=NAN, do_sample=True), "temperature must be a finite"),
    BadInput("temperature-zero", trace(temperature=0.0, do_sample=True), "temperature must be > 0"),
    BadInput("temperature-string", trace(temperature="hot"), "temperature must be a finite number"),
    BadInput("top-p-above-one", trace(top_p=1.5), r"top_p must be ≤ 1"),
    BadInput("top-k-zero", trace(top_k=0), "top_k must be ≥ 1"),
    BadInput("top-k-float", trace(top_k=2.5), "top_k must be an integer"),
    BadInput("subgoal-steps-zero", trace(subgoal_steps=0), "subgoal_steps must be ≥ 1"),
    BadInput("action-steps-float", trace(action_steps=2.5), "action_steps must be an integer"),
    BadInput(
        "max-reasoning-string", trace(max_reasoning_tokens="10"), "max_reasoning_tokens must be an integer"
    ),
    BadInput("mode-typo", trace(mode="fulll"), "unknown mode 'fulll'"),
    BadInput("mode-not-a-string", trace(mode=3), "mode must be a string"),
    BadInput("unknown-option", trace(subgoal_stepz=3), r"unknown generation options \['subgoal_stepz'\]"),
    BadInput("do-sample-string", trace(do_sample="yes"), "do_sample must be true/false"),
    BadInput("seed-string", trace(seed="7"), "seed must be an integer or None"),
    BadInput("seed-float", trace(seed=1.5), "seed must be an integer or None"),
    BadInput("seed-numpy-int", returns_finite_actions(trace(seed=np.int64(7))), None, None),
    BadInput("top-k-numpy-int", returns_finite_actions(trace(top_k=np.int32(5), do_sample=True)), None, None),
    BadInput("sampler-config-nan", lambda s: FlowSamplerConfig(shift=NAN), "FlowSamplerConfig.shift must be"),
    BadInput("options-direct-inf", lambda s: GenerationOptions(image_guidance=INF), "image_guidance must be"),
    BadInput(
        "text-generate-temperature-nan",
        lambda s: shared_policy().model.generate(torch.tensor([[1, 2]]), do_sample=True, temperature=NAN),
        "temperature must be a finite number",
    ),
    BadInput(
        "text-generate-top-p-zero",
        lambda s: shared_policy().model.generate(torch.tensor([[1, 2]]), top_p=0.0),
        "top_p must be > 0",
    ),
    BadInput(
        "text-generate-max-new-float",
        lambda s: shared_policy().model.generate(torch.tensor([[1, 2]]), max_new_tokens=2.0),
        "max_new_tokens must be an integer",
    ),
    # predict_frame's overrides go through the same sampler checks.
    BadInput("frame-text-guidance-nan", predict_frame(text_guidance=NAN), "text_guidance must be a finite"),
    BadInput(
        "frame-image-guidance-inf", predict_frame(image_guidance=INF), "image_guidance must be a finite"
    ),
    BadInput("frame-steps-zero", predict_frame(steps=0), "num_steps must be ≥ 1"),
    BadInput("frame-unknown-option", predict_frame(seed_offset=1), "unexpected keyword", TypeError),
    BadInput(
        "frame-seed-string",
        lambda s: shared_policy().predict_frame(
            shared_policy().example_observation().images["head"], "Imagine.", seed="1"
        ),
        "seed must be an integer",
    ),
    # Observations: container types are checked where the Observation is built.
    BadInput(
        "images-list", observe(images=[np.zeros((32, 32, 3), np.uint8)]), "Observation.images must be a dict"
    ),
    BadInput("images-none", lambda s: Observation(images=None), "Observation.images must be a dict"),
    BadInput(
        "image-nested-list", observe(images={"head": [[0, 0, 0]]}), r"Observation.images\['head'\] must be"
    ),
    BadInput("image-float", observe(images={"head": np.zeros((32, 32, 3))}), "must be a uint8 array"),
    BadInput("image-gray", observe(images={"head": np.zeros((32, 32), np.uint8)}), "must be a uint8 array"),
    BadInput("camera-unknown", observe(images={"wrist": np.zeros((32, 32, 3), np.uint8)}), "missing"),
    BadInput(
        "state-strings", observe(state=np.array(["a", "b", "c", "d"])), "Observation.state must be numbers"
    ),
    BadInput("state-nan", observe(state=np.array([0.0, NAN, 0.0, 0.0])), "state contains NaN"),
    BadInput("state-float64-overflow", observe(state=np.full(4, 1e300)), "beyond float32's range"),
    BadInput("state-wrong-size", observe(state=np.zeros(3)), r"state must have shape \(4,\)"),
    BadInput("state-missing", observe(state=None), "needs a state vector"),
    BadInput("state-list-ok", returns_finite_actions(observe(state=[0.1, 0.2, 0.3, 0.4])), None, None),
    # Instructions.
    BadInput(
        "instruction-empty",
        lambda s: shared_policy().generate_trace(shared_policy().example_observation(), "   "),
        "instruction must be a non-empty string",
    ),
    BadInput(
        "instruction-40k-chars",
        lambda s: shared_policy().generate_trace(shared_policy().example_observation(), "push " * 8000),
        "over this policy's limit of 2048",
    ),
    BadInput(
        "prompt-40k-chars-frame",
        lambda s: shared_policy().predict_frame(
            shared_policy().example_observation().images["head"], "imagine " * 5000
        ),
        "max_prompt_tokens",
    ),
    # Config numbers are checked at construction.
    BadInput(
        "config-rope-theta-negative",
        edited_json("config.json", lambda d: d.update(rope_theta=-1)),
        "EmCoTConfig.rope_theta must be > 1",
    ),
    BadInput(
        "config-rms-eps-nan",
        edited_json("config.json", lambda d: d["experts"]["act"].update(rms_norm_eps=NAN)),
        "ExpertConfig.rms_norm_eps must be a finite number",
    ),
    BadInput(
        "config-vocab-string",
        edited_json("config.json", lambda d: d.update(vocab_size="big")),
        "EmCoTConfig.vocab_size must be an integer",
    ),
    BadInput(
        "config-horizon-float",
        edited_json("config.json", lambda d: d["action"].update(horizon=8.5)),
        "ActionSpaceConfig.horizon must be an integer",
    ),
    BadInput(
        "config-prompt-limit-zero",
        lambda s: EmCoTConfig.from_preset("tiny", max_prompt_tokens=0),
        "max_prompt_tokens must be ≥ 1",
    ),
    BadInput(
        "config-expert-heads-string", lambda s: ExpertConfig(num_heads="4"), "num_heads must be an integer"
    ),
    BadInput(
        "config-sampler-interval-short",
        edited_json("config.json", lambda d: d["subgoal_sampler"].update(guidance_interval=[0.4])),
        "guidance_interval must be",
    ),
    BadInput(
        "config-model-type", edited_json("config.json", lambda d: d.update(model_type="qwen2")), "not 'emcot'"
    ),
    # Non-finite outputs never reach the caller.
    BadInput("weights-nan", nan_weights, "action chunk contains NaN .* weight tensors hold NaN"),
    BadInput("statistics-overflow", huge_statistics, r"action chunk \(robot units\) contains NaN"),
    # Corrupt files name their path.
    BadInput("corrupt-config-json", corrupt_file("config.json"), r"config.json is not valid JSON"),
    BadInput(
        "corrupt-processor-json",
        corrupt_file("processor_config.json"),
        r"processor_config.json is not valid JSON",
    ),
    BadInput(
        "corrupt-generation-json",
        corrupt_file("generation_config.json"),
        r"generation_config.json is not valid JSON",
    ),
    BadInput("corrupt-norm-stats", corrupt_file("norm_stats.json"), r"norm_stats.json is not valid JSON"),
    BadInput("corrupt-safetensors-index", sharded_with_corrupt_index, r"index.json is not valid JSON"),
    BadInput("truncated-safetensors", corrupt_file("model.safetensors", "xx"), "truncated or corrupt"),
    BadInput(
        "generation-json-unknown-key",
        edited_json("generation_config.json", lambda d: d.update(stepz=3)),
        r"unknown GenerationOptions keys \['stepz'\] in .*generation_config.json",
    ),
    BadInput(
        "generation-json-nan",
        edited_json("generation_config.json", lambda d: d.update(text_guidance=NAN)),
        "text_guidance must be a finite number",
    ),
    BadInput(
        "processor-json-cameras-string",
        edited_json("processor_config.json", lambda d: d.update(cameras="head")),
        "ProcessorConfig.cameras must be a list",
    ),
    BadInput(
        "trace-json-corrupt", trace_folder('{"reasoning": '), "trace file .*trace.json is not valid JSON"
    ),
    BadInput("trace-json-missing", trace_folder(None), "trace file .*trace.json does not exist"),
    BadInput("trace-json-fields", trace_folder('{"reasoning": "x"}'), "lacks the fields"),
    # Loading options.
    BadInput("from-pretrained-unknown-kwarg", load_model(attn_implementation="flash"), "does not support"),
    BadInput(
        "from-pretrained-device-map-auto", load_model(device_map="auto"), "device_map must name one device"
    ),
    BadInput(
        "from-pretrained-dtype-typo", load_model(torch_dtype="bfloat61"), "unknown torch_dtype 'bfloat61'"
    ),
    BadInput("from-pretrained-int-dtype", load_model(torch_dtype=torch.int8), "floating torch dtype"),
    BadInput(
        "from-pretrained-hub-id", lambda s: EmCoTModel.from_pretrained("org/some-model"), "not a local folder"
    ),
    # Saving never deletes what is not an old policy.
    BadInput("save-to-cwd", save_to("."), "working directory or one of its parents"),
    BadInput("save-to-parent", save_to(".."), "working directory or one of its parents"),
    BadInput("save-to-file", save_to("mine.txt"), "is a file, not a folder"),
    BadInput("save-to-new-subfolder", save_to("new-policy"), None, None),
]
