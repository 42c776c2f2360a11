"""The observation-dict protocol: the default form, flat robot keys, and one clear error per mistake."""

from __future__ import annotations

import numpy as np
import pytest

from emcot.serving.observations import ObservationSpec, Slot, Target, parse_slot

LIBERO = (
    ("observation/image", "images.agentview"),
    ("observation/wrist_image", "images.wrist"),
    ("observation/state", "state"),
)


@pytest.fixture(scope="module")
def spec():
    return ObservationSpec(("agentview", "wrist"), 8, key_map=LIBERO)


def image(h=224, w=224, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def default_form(**overrides):
    out = {
        "images": {"agentview": image(), "wrist": image(seed=1)},
        "state": np.linspace(-1, 1, 8),
        "prompt": "put the bowl on the plate",
    }
    out.update(overrides)
    return {k: v for k, v in out.items() if v is not ...}


def test_default_form_passes_with_state_cast_to_float32(spec):
    obs = default_form(reset=np.bool_(True))
    out = spec.read(obs)
    assert set(out) == {"images", "state", "prompt", "reset"} and out["reset"] is True
    assert out["images"]["agentview"] is obs["images"]["agentview"]
    assert out["state"].dtype == np.float32 and np.allclose(out["state"], obs["state"])
    assert out["prompt"] == "put the bowl on the plate"
    listed = spec.read(default_form(state=[0.0, 1, 2, 3, 4, 5, 6, 7], prompt=...))
    assert listed["state"].dtype == np.float32 and "prompt" not in listed


def test_flat_libero_keys_map_to_the_default_form(spec):
    agent, wrist, state = image(), image(seed=1), np.arange(8, dtype=np.float64)
    out = spec.read(
        {
            "observation/image": agent,
            "observation/wrist_image": wrist,
            "observation/state": state,
            "prompt": "go",
        }
    )
    assert out["images"]["agentview"] is agent and out["images"]["wrist"] is wrist
    np.testing.assert_array_equal(out["state"], state.astype(np.float32))
    mixed = spec.read({"observation/image": agent, "images": {"wrist": wrist}, "state": state})
    assert set(mixed["images"]) == {"agentview", "wrist"}


def test_channel_first_images_are_transposed(spec):
    hwc = image(48, 64)
    out = spec.read(default_form(images={"agentview": hwc.transpose(2, 0, 1), "wrist": hwc}))
    np.testing.assert_array_equal(out["images"]["agentview"], hwc)
    assert out["images"]["agentview"].flags.c_contiguous
    assert out["images"]["wrist"] is hwc


@pytest.mark.parametrize(
    ("obs", "message"),
    [
        (
            default_form(images=...),
            r"observation key 'images' \(or 'observation/image' for camera 'agentview'\) missing",
        ),
        (default_form(images={"agentview": image()}), "camera 'wrist' in 'images' missing"),
        (default_form(state=...), "observation key 'state' missing"),
        (default_form(extra=1, more=2), r"unexpected observation key\(s\) \['extra', 'more'\]"),
        (
            default_form(images={"agentview": image(), "wrist": image(), "top": image()}),
            "unknown camera 'top'",
        ),
        (default_form(images=[image()]), "'images' must map camera names"),
        (default_form(images={"agentview": image().astype(np.float32), "wrist": image()}), "dtype uint8"),
        (
            default_form(images={"agentview": image()[..., :2], "wrist": image()}),
            r"\(H, W, 3\) or \(3, H, W\)",
        ),
        (default_form(images={"agentview": image()[..., 0], "wrist": image()}), r"got \(224, 224\)"),
        (
            default_form(images={"agentview": np.zeros((0, 4, 3), np.uint8), "wrist": image()}),
            r"got \(0, 4, 3\)",
        ),
        (default_form(images={"agentview": "pixels", "wrist": image()}), "must be a uint8 image array"),
        (default_form(state=np.zeros(7)), r"shape \(8,\), got \(7,\)"),
        (default_form(state=np.zeros((1, 8))), r"shape \(8,\), got \(1, 8\)"),
        (default_form(state=np.array([np.nan] + [0.0] * 7)), "contains NaN or infinite values"),
        (default_form(state=np.array([1e300] + [0.0] * 7)), "contains NaN or infinite values"),
        (default_form(state=np.array(["a"] * 8)), "must be a float array"),
        (default_form(state=np.zeros(8, bool)), "must be a float array"),
        (default_form(state=["a"] * 8), "must be a float array"),
        (default_form(state=None), "must be a float array"),
        (default_form(prompt=""), "'prompt' must be a non-empty string"),
        (default_form(prompt=b"go"), "'prompt' must be a non-empty string"),
        (default_form(reset=1), "'reset' must be true or false"),
        ({**default_form(), 3: "x"}, "observation keys must be strings"),
        ([1, 2], "an observation must be a map"),
        (
            {**default_form(), "observation/image": image()},
            "images.agentview is given twice: as 'images.agentview' and as 'observation/image'",
        ),
    ],
)
def test_each_mistake_is_one_clear_error(spec, obs, message):
    with pytest.raises(ValueError, match=message):
        spec.read(obs)


def test_missing_mapped_camera_names_the_flat_key(spec):
    with pytest.raises(
        ValueError, match=r"observation key 'observation/wrist_image' \(camera 'wrist'\) missing"
    ):
        spec.read({"observation/image": image(), "observation/state": np.zeros(8)})


def test_error_messages_list_the_flat_keys(spec):
    with pytest.raises(ValueError, match="or the flat keys 'observation/image' → images.agentview"):
        spec.read({"bogus": 1})


def test_without_a_key_table_the_message_names_the_default_form():
    with pytest.raises(ValueError, match=r"^observation key 'images' missing; expected \{'images': \{'head'"):
        ObservationSpec(("head",), 2).read({"state": np.zeros(2), "prompt": "go"})


def test_a_policy_without_state_refuses_one():
    spec = ObservationSpec(("head",), 0)
    assert "state" not in spec.read({"images": {"head": image()}, "prompt": "go"})
    assert "state" not in spec.read({"images": {"head": image()}, "state": None})
    with pytest.raises(ValueError, match="this policy takes no state"):
        spec.read({"images": {"head": image()}, "state": np.zeros(3)})


@pytest.mark.parametrize(
    ("key_map", "message"),
    [
        ((("cam", "images.top"),), "names no camera of this policy; choose one of"),
        ((("cam", "images"),), "names no camera"),
        ((("s", "stat"),), "unknown observation target 'stat' \\(did you mean 'state'\\?\\)"),
        ((("s", "state.x"),), "only 'images.<camera>' takes a sub-key"),
        ((("state", "state"),), "cannot be a flat key"),
        ((("", "state"),), "cannot be a flat key"),
        ((("a", "state"), ("a", "prompt")), "'a' is mapped twice"),
        ((("a", "state"), ("b", "state")), "two flat keys map to state"),
    ],
)
def test_bad_key_tables_fail_when_the_spec_is_built(key_map, message):
    with pytest.raises(ValueError, match=message):
        ObservationSpec(("agentview", "wrist"), 8, key_map=key_map)


def test_spec_fields_are_checked():
    with pytest.raises(ValueError, match="ObservationSpec.state_dim must be an integer"):
        ObservationSpec(("head",), "8")
    with pytest.raises(ValueError, match="at least one camera"):
        ObservationSpec((), 8)


def test_slots_parse_and_print():
    assert parse_slot("images.wrist", ("wrist",)) == Slot(Target.IMAGES, "wrist")
    assert str(parse_slot("images.wrist", ("wrist",))) == "images.wrist"
    assert parse_slot("prompt", ("wrist",)) == Slot(Target.PROMPT)


def test_describe_lists_default_and_flat_keys(spec, policy):
    described = spec.describe()
    assert described["observation_keys"] == ["images", "state", "prompt", "reset"]
    assert described["key_map"] == dict(LIBERO)
    assert set(described["observation"]["images"]) == {"agentview", "wrist"}
    own = ObservationSpec.from_policy(policy)
    assert own.cameras == tuple(policy.cameras) and own.state_dim == policy.config.action.state_dim
