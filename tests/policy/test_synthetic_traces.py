"""The bundled synthetic policy gives bit-identical traces to the ones recorded before the restructure."""

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
def test_trace_is_bit_identical_to_the_recorded_one(policy, record):
    sample = synthetic_samples(1, seed=record["seed"])[0]
    trace = policy.generate_trace(
        sample.observation, sample.instruction, mode=record["mode"], seed=record["seed"], **record["options"]
    )
    assert trace.reasoning == record["reasoning"]
    assert trace.actions.astype(np.float32).tobytes().hex() == record["actions"]
    subgoal = (
        None if trace.subgoal is None else hashlib.sha256(np.asarray(trace.subgoal).tobytes()).hexdigest()
    )
    assert subgoal == record["subgoal_sha256"]
