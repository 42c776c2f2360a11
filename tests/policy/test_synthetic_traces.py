"""The bundled synthetic policy gives the traces recorded before the restructure.

Reasoning and subgoal pixels must match exactly; actions to 1e-5, because CPUs with other vector units
(AVX-512 against AVX2) round float32 matmuls differently in the last bits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from emcot import EmCoTPolicy
from emcot.synthetic.world import synthetic_samples

RECORDED = json.loads((Path(__file__).parent / "data" / "synthetic_traces.json").read_text())["traces"]


@pytest.fixture(scope="module")
def policy():
    return EmCoTPolicy.synthetic()


@pytest.mark.parametrize(
    "record",
    RECORDED,
    ids=[f"{r['mode']}-seed{r['seed']}{'-guided' if r['options'] else ''}" for r in RECORDED],
)
def test_trace_matches_the_recorded_one(policy, record):
    sample = synthetic_samples(1, seed=record["seed"])[0]
    trace = policy.generate_trace(
        sample.observation, sample.instruction, mode=record["mode"], seed=record["seed"], **record["options"]
    )
    assert trace.reasoning == record["reasoning"]
    recorded = np.frombuffer(bytes.fromhex(record["actions"]), dtype=np.float32).reshape(trace.actions.shape)
    np.testing.assert_allclose(trace.actions.astype(np.float32), recorded, rtol=0, atol=1e-5)
    subgoal = (
        None if trace.subgoal is None else hashlib.sha256(np.asarray(trace.subgoal).tobytes()).hexdigest()
    )
    assert subgoal == record["subgoal_sha256"]
