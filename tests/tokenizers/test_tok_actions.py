"""Action/state codec: stats, normaliser round trips, clipping, JSON I/O, padding, chunk windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emcot.tokenizers.actions import (
    ActionSpaceConfig,
    Normalizer,
    NormStats,
    RobotNormStats,
    chunk_windows,
    pad_to_dim,
    unpad,
)


@pytest.fixture
def data() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(loc=[0.0, 5.0, -3.0, 100.0], scale=[1.0, 0.1, 2.0, 30.0], size=(2000, 4))
    return x.astype(np.float32)


@pytest.fixture
def stats(data) -> NormStats:
    return NormStats.compute(data)


def test_config_round_trip_and_validation():
    cfg = ActionSpaceConfig(action_dim=7, state_dim=8, horizon=50, norm_mode="mean_std")
    assert ActionSpaceConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="norm_mode"):
        ActionSpaceConfig(norm_mode="minmax")
    with pytest.raises(ValueError, match="action_dim"):
        ActionSpaceConfig(action_dim=0)
    with pytest.raises(ValueError, match="state_dim"):
        ActionSpaceConfig(state_dim=-1)
    with pytest.raises(ValueError, match="horizon"):
        ActionSpaceConfig(horizon=2.5)
    with pytest.raises(ValueError, match="Unknown"):
        ActionSpaceConfig.from_dict({"action_dim": 3, "chunk": 4})


def test_stats_compute(data, stats):
    assert stats.dim == 4 and stats.count == 2000
    assert stats.mean.dtype == np.float32
    np.testing.assert_allclose(stats.mean, data.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.q01, np.quantile(data, 0.01, axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats.q99, np.quantile(data, 0.99, axis=0), rtol=1e-5)
    assert np.all(stats.min <= stats.q01) and np.all(stats.q01 < stats.q99) and np.all(stats.q99 <= stats.max)
    # Torch input and [..., D] input give the same statistics.
    again = NormStats.compute(torch.from_numpy(data).reshape(40, 50, 4))
    np.testing.assert_array_equal(again.q99, stats.q99)


def test_stats_bad_inputs():
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        NormStats.compute(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        NormStats.compute(np.array([[1.0], [np.nan]]))
    with pytest.raises(ValueError, match="one length"):
        NormStats(mean=[0, 0], std=[1], q01=[0], q99=[1], min=[0], max=[1], count=3)


def test_stats_json_round_trip(stats):
    back = NormStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    for name in ("mean", "std", "q01", "q99", "min", "max"):
        np.testing.assert_array_equal(getattr(back, name), getattr(stats, name))
        assert getattr(back, name).dtype == np.float32
    assert back.count == stats.count
    with pytest.raises(ValueError, match="lacks"):
        NormStats.from_dict({"mean": [0.0]})


@pytest.mark.parametrize("mode", ["mean_std", "quantile", "none"])
def test_round_trip_numpy(mode, data, stats):
    norm = Normalizer(mode, stats)
    inside = np.clip(data[:200], stats.q01, stats.q99)
    y = norm.normalize(inside)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == inside.shape
    back = norm.unnormalize(y)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, inside, rtol=1e-5, atol=1e-4)
    if mode == "none":
        np.testing.assert_array_equal(y, inside)


@pytest.mark.parametrize("mode", ["mean_std", "quantile"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_torch(mode, dtype, data, stats):
    norm = Normalizer(mode, stats)
    inside = torch.from_numpy(np.clip(data[:64], stats.q01, stats.q99)).to(dtype).reshape(4, 16, 4)
    y = norm.normalize(inside)
    assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.device == inside.device
    torch.testing.assert_close(norm.unnormalize(y), inside, rtol=1e-5, atol=1e-4)


def test_mean_std_values(data, stats):
    y = Normalizer("mean_std", stats).normalize(data)
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(y.std(0), 1.0, atol=1e-3)


def test_quantile_mapping_and_clipping(stats):
    norm = Normalizer("quantile", stats)
    ends = np.stack([stats.q01, stats.q99])
    np.testing.assert_allclose(norm.normalize(ends), [[-1.0] * 4, [1.0] * 4], atol=1e-5)
    outliers = np.stack([stats.q01 - 10 * (stats.q99 - stats.q01), stats.q99 + 5.0])
    y = norm.normalize(outliers)
    np.testing.assert_array_equal(y, [[-1.0] * 4, [1.0] * 4])
    # Model outputs beyond [-1, 1] are clipped to the data envelope on the way out.
    back = norm.unnormalize(np.array([[-3.0] * 4, [7.0] * 4], dtype=np.float32))
    np.testing.assert_allclose(back, ends, rtol=1e-5, atol=1e-5)
    unclipped = Normalizer("quantile", stats, clip=False)
    assert np.all(np.abs(unclipped.normalize(outliers)) > 1.0)
    np.testing.assert_allclose(unclipped.unnormalize(unclipped.normalize(outliers)), outliers, rtol=1e-5)


@pytest.mark.parametrize("mode", ["mean_std", "quantile"])
def test_constant_dimension_is_safe(mode):
    rng = np.random.default_rng(1)
    data = np.stack([rng.normal(size=500), np.full(500, 0.7)], axis=1).astype(np.float32)
    norm = Normalizer(mode, NormStats.compute(data))
    y = norm.normalize(data)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y[:, 1], 0.0, atol=1e-6)
    np.testing.assert_allclose(norm.unnormalize(y)[:, 1], 0.7, atol=1e-6)
    assert np.all(np.isfinite(norm.normalize(np.array([[0.0, 3.0]], dtype=np.float32))))


def test_integer_input_becomes_float(stats):
    y = Normalizer("mean_std", stats).normalize(np.ones((2, 4), dtype=np.int64))
    assert y.dtype == np.float32


def test_normalizer_errors(stats):
    norm = Normalizer("mean_std", stats)
    with pytest.raises(ValueError, match=r"dimension 4.*last dimension 7"):
        norm.normalize(np.zeros((3, 7)))
    with pytest.raises(ValueError, match="dimension 4"):
        norm.unnormalize(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="needs NormStats"):
        Normalizer("quantile", None)
    with pytest.raises(ValueError, match="mode"):
        Normalizer("minmax", stats)
    x = np.arange(6.0).reshape(2, 3)
    assert Normalizer("none", None).normalize(x) is x


def test_robot_norm_stats_json(tmp_path, stats, data):
    robots = RobotNormStats()
    robots.add("aloha", action=stats, state=NormStats.compute(data[:, :2]))
    robots.add("franka", action=NormStats.compute(data[:, :3]))
    path = tmp_path / "sub" / "norm_stats.json"
    robots.save(path)
    loaded = RobotNormStats.load(path)
    assert loaded.robots == ["aloha", "franka"]
    assert "aloha" in loaded and "ur5" not in loaded
    entry = loaded.for_robot("aloha")
    np.testing.assert_array_equal(entry["action"].q01, stats.q01)
    assert entry["state"].dim == 2
    assert loaded.for_robot("franka")["state"] is None
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    rebuilt = RobotNormStats({"x": {"action": stats, "state": None}})
    assert rebuilt.robots == ["x"]


def test_robot_norm_stats_errors(tmp_path, stats):
    robots = RobotNormStats({"aloha": {"action": stats}})
    with pytest.raises(ValueError, match=r"'ur5'.*\['aloha'\].*NormStats.compute"):
        robots.for_robot("ur5")
    with pytest.raises(ValueError, match="not found"):
        RobotNormStats.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        RobotNormStats.load(bad)
    bad.write_text(json.dumps({"robots": {}}))
    with pytest.raises(ValueError, match="Not an emcot-norm-stats"):
        RobotNormStats.load(bad)
    with pytest.raises(ValueError, match="must be"):
        RobotNormStats({"aloha": {"actions": stats}})


def test_pad_unpad():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    padded = pad_to_dim(x, 5)
    assert padded.shape == (2, 5) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:, 3:], 0.0)
    np.testing.assert_array_equal(unpad(padded, 3), x)
    t = torch.arange(6.0).reshape(1, 2, 3)
    tp = pad_to_dim(t, 4)
    assert tp.shape == (1, 2, 4) and torch.equal(unpad(tp, 3), t)
    assert pad_to_dim(x, 3) is x
    with pytest.raises(ValueError, match="unpad"):
        pad_to_dim(x, 2)
    with pytest.raises(ValueError, match="pad_to_dim"):
        unpad(x, 4)


def test_chunk_windows_at_episode_end():
    actions = np.arange(10, dtype=np.float32).reshape(5, 2)  # step t holds [2t, 2t+1]
    chunks, is_pad = chunk_windows(actions, horizon=3)
    assert chunks.shape == (5, 3, 2) and is_pad.shape == (5, 3) and is_pad.dtype == bool
    np.testing.assert_array_equal(chunks[0], actions[0:3])
    np.testing.assert_array_equal(chunks[3], [actions[3], actions[4], actions[4]])
    np.testing.assert_array_equal(chunks[4], [actions[4]] * 3)
    np.testing.assert_array_equal(is_pad[2], [False, False, False])
    np.testing.assert_array_equal(is_pad[3], [False, False, True])
    np.testing.assert_array_equal(is_pad[4], [False, True, True])
    t_chunks, t_pad = chunk_windows(torch.from_numpy(actions), horizon=3)
    assert torch.equal(t_chunks, torch.from_numpy(chunks)) and torch.equal(t_pad, torch.from_numpy(is_pad))
    long_chunks, long_pad = chunk_windows(actions[:1], horizon=4)
    assert long_chunks.shape == (1, 4, 2) and long_pad.tolist() == [[False, True, True, True]]


def test_chunk_windows_errors():
    with pytest.raises(ValueError, match=r"\[T, D\]"):
        chunk_windows(np.zeros(4), horizon=2)
    with pytest.raises(ValueError, match="horizon"):
        chunk_windows(np.zeros((4, 2)), horizon=0)
