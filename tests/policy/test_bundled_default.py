"""The bundled default: the `small` policy trained on Meta-World, compact on disk, with its card."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open

from emcot.eval.envs.metaworld_tasks import SPLITS, TASK_DESCRIPTIONS
from emcot.policy.policy import DEFAULT_POLICY, EmCoTPolicy

MULTI_STAGE = {"pick-place-v3", "bin-picking-v3", "assembly-v3", "shelf-place-v3", "pick-place-wall-v3"}


@pytest.fixture(scope="module")
def policy():
    return EmCoTPolicy.default()


def test_it_is_stored_in_float16_and_stays_small():
    with safe_open(DEFAULT_POLICY / "model.safetensors", framework="pt") as weights:
        dtypes = {str(weights.get_slice(key).get_dtype()) for key in weights.keys()}  # noqa: SIM118
    assert dtypes <= {"F16", "I64"} and "F16" in dtypes
    size = sum(path.stat().st_size for path in DEFAULT_POLICY.iterdir())
    assert size < 25 * 2**20


def test_its_card_lists_the_training_tasks_and_protocol(policy):
    card = policy.card
    assert card is not None and card.benchmark == "metaworld" and card.camera == "corner2"
    assert 6 <= len(card.tasks) <= 10 and set(card.tasks) <= set(TASK_DESCRIPTIONS)
    assert len(set(card.tasks) & MULTI_STAGE) >= 2 and set(card.tasks) & set(SPLITS["easy"])
    assert card.evaluation["seed"] == 1000 and card.evaluation["max_steps"] == 500
    assert policy.cameras == ["corner2"] and policy.config.action.action_dim == 4


def test_a_trace_on_the_shipped_observation_names_the_task(policy):
    observation, instruction = policy.example()
    assert instruction in TASK_DESCRIPTIONS.values()
    assert observation.images["corner2"].shape == (128, 128, 3)
    trace = policy.generate_trace(observation, instruction, seed=0)
    assert instruction.lower() in trace.reasoning.lower()  # "… To pick and place a puck to a goal, I will …"
    assert trace.subgoal.size == (64, 64)
    assert np.isfinite(trace.actions).all() and np.abs(trace.actions).max() <= 1.5
