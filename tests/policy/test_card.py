"""Policy cards (what a policy was trained on, a shipped observation) and compact float16 weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emcot.policy.card import CARD_FILE, ExampleObservation, PolicyCard
from emcot.policy.policy import BUNDLED_POLICIES, EmCoTPolicy


def metaworld_card(**changes) -> PolicyCard:
    fields = dict(
        benchmark="metaworld",
        tasks=("reach-v3", "push-v3"),
        camera="corner2",
        resolution=64,
        evaluation={"seed": 1000, "episodes": 10, "max_steps": 500},
        training={"recipes": ["mw-stage1-small", "mw-stage2-small"]},
        example=ExampleObservation(
            "example_observation.png", "Reach a goal position", (0.1, 0.2, 0.3, 1.0), "reach-v3"
        ),
    )
    return PolicyCard(**{**fields, **changes})


@pytest.fixture(scope="module")
def carded(tmp_path_factory):
    """The synthetic policy with a Meta-World card, saved with float16 weights."""
    policy = EmCoTPolicy.synthetic()
    policy.card = metaworld_card()
    policy.card_example = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    folder = policy.save_pretrained(tmp_path_factory.mktemp("p") / "policy", storage_dtype="float16")
    return policy, folder


def test_the_card_and_its_example_survive_save_and_load(carded):
    policy, folder = carded
    assert json.loads((folder / CARD_FILE).read_text())["tasks"] == ["reach-v3", "push-v3"]
    loaded = EmCoTPolicy.from_pretrained(folder)
    assert loaded.card == policy.card
    observation, instruction = loaded.example()
    assert instruction == "Reach a goal position"
    np.testing.assert_array_equal(observation.images["head"], policy.card_example)
    np.testing.assert_allclose(observation.state, [0.1, 0.2, 0.3, 1.0], rtol=1e-6)
    assert EmCoTPolicy.synthetic().example() is None  # no card, nothing shipped


def test_float16_storage_halves_the_weights_and_loads_as_float32(carded, tmp_path):
    policy, folder = carded
    full = EmCoTPolicy.synthetic().save_pretrained(tmp_path / "full")
    assert (folder / "model.safetensors").stat().st_size < 0.55 * (full / "model.safetensors").stat().st_size
    loaded = EmCoTPolicy.from_pretrained(folder)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    for (name, a), b in zip(
        policy.model.state_dict().items(), loaded.model.state_dict().values(), strict=True
    ):
        if a.is_floating_point():  # exactly the float16 rounding of the original
            torch.testing.assert_close(b, a.half().float(), rtol=0, atol=0, msg=name)
    observation = policy.example_observation()
    ours = policy.generate_trace(observation, "push the red block to the left", seed=0)
    theirs = loaded.generate_trace(observation, "push the red block to the left", seed=0)
    assert ours.reasoning == theirs.reasoning
    np.testing.assert_allclose(ours.actions, theirs.actions, atol=5e-3)


def test_bundled_names_and_card_errors(tmp_path):
    assert set(BUNDLED_POLICIES) == {"default", "synthetic"}
    with pytest.raises(ValueError, match="no bundled policy named 'tiny'; bundled: default, synthetic"):
        EmCoTPolicy.bundled("tiny")
    assert EmCoTPolicy.load("synthetic").cameras == ["head"]
    with pytest.raises(ValueError, match="at least one task"):
        metaworld_card(tasks=())
    (tmp_path / CARD_FILE).write_text(json.dumps({"benchmark": "metaworld", "tasks": ["reach-v3"], "camera": "corner2",
                                                    "resolution": 64, "episodes": 3}))  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown PolicyCard keys \['episodes'\]"):
        PolicyCard.load(tmp_path)
    assert PolicyCard.load(tmp_path / "nothing") is None
    with pytest.raises(ValueError, match="needs the card's example entry"):
        metaworld_card(example=None).save(tmp_path, np.zeros((4, 4, 3), np.uint8))
