"""The benchmark registry: ``emcot eval synthetic-cue`` runs the memory task end to end, and the
Meta-World protocol keeps its keys."""

from __future__ import annotations

import json

import pytest

from emcot.cli.main import main
from emcot.eval.agents import AgentSpec
from emcot.eval.envs.benchmarks import benchmark
from emcot.eval.evaluate import EvalConfig, protocol_of


def test_eval_synthetic_cue_runs_the_expert_and_random(tmp_path, capsys):
    for policy, low, high in (("expert", 1.0, 1.0), ("random", 0.0, 0.6)):
        out = tmp_path / policy
        assert (
            main(
                [
                    "eval",
                    "synthetic-cue",
                    "--policy",
                    policy,
                    "--episodes",
                    "6",
                    "--out",
                    str(out),
                    "--no-progress",
                    "--no-view",
                    "--frame-every",
                    "0",
                ]
            )
            == 0
        )
        results = json.loads((out / "results.json").read_text())
        cell = results["tasks"]["synthetic-cue"][policy]
        assert low <= cell["success_rate"] <= high
        assert results["protocol"]["benchmark"] == "synthetic-cue"
        assert results["protocol"]["max_steps"] == 48 and results["protocol"]["resolution"] == 32
    assert "synthetic-cue" in capsys.readouterr().out


def test_eval_synthetic_cue_runs_a_memory_policy(tmp_path):
    from emcot.synthetic.cue import build_cue_policy, cue_action_samples, cue_demos

    policy = build_cue_policy(cue_action_samples(cue_demos(4)), memory={"history_length": 2, "top_k": 4})
    policy.save_pretrained(tmp_path / "policy")
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "synthetic-cue",
            "--policy",
            str(tmp_path / "policy"),
            "--modes",
            "reactive",
            "--episodes",
            "2",
            "--max-steps",
            "24",
            "--out",
            str(out),
            "--no-progress",
            "--no-view",
        ]
    )
    assert code == 0
    episode = json.loads((out / "episodes/reactive/synthetic-cue/000/episode.json").read_text())
    assert len(episode["policy_steps"]) == 3  # 24 steps, chunks of 8, the block never solved


def test_the_benchmarks_know_their_tasks_and_keep_the_metaworld_protocol():
    with pytest.raises(ValueError, match="one task, 'synthetic-cue'"):
        EvalConfig(tasks=("reach-v3",), benchmark="synthetic-cue")
    with pytest.raises(ValueError, match="did you mean 'synthetic-cue'"):
        benchmark("synthetic-cu")
    meta = protocol_of(EvalConfig(tasks=("reach-v3",), agent=AgentSpec(policy="expert")))
    assert {"benchmark", "metaworld", "camera", "policy", "seed", "resolution", "max_steps"} <= set(meta)
    assert meta["benchmark"] == "metaworld"
    cue = protocol_of(
        EvalConfig(tasks=("synthetic-cue",), agent=AgentSpec(policy="expert"), benchmark="synthetic-cue")
    )
    assert cue["cue"]["cue_steps"] == 1 and "metaworld" not in cue
