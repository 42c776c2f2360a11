"""The process-wide decoded-frame cache: byte-budgeted LRU, and LeRobotDataset reading through it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from emcot.training.data import frame_cache as frame_cache_module
from emcot.training.data.frame_cache import FrameCache, frame_cache
from emcot.training.data.lerobot import LeRobotDataset
from tests.training.lerobot_fixtures import make_dataset


def _array(nbytes: int, value: int = 0) -> np.ndarray:
    return np.full(nbytes, value, dtype=np.uint8)


def test_lru_keeps_the_recently_used_within_the_byte_budget():
    cache = FrameCache(budget_bytes=300)
    loads: list[str] = []

    def loader(key: str, value: int):
        return lambda: (loads.append(key), _array(100, value))[1]

    for key, value in (("a", 1), ("b", 2), ("c", 3)):
        cache.get(key, loader(key, value))
    cache.get("a", loader("a", 1))  # a becomes the most recent; b is now the oldest
    cache.get("d", loader("d", 4))  # 400 bytes > 300: evicts b
    assert cache.stats().entries == 3 and cache.stats().bytes == 300
    assert cache.get("a", loader("a", 1))[0] == 1
    cache.get("b", loader("b", 2))  # a miss: reloaded
    assert loads == ["a", "b", "c", "d", "b"]
    stats = cache.stats()
    assert (stats.hits, stats.misses) == (2, 5)


def test_cached_arrays_are_read_only_and_shared():
    cache = FrameCache(budget_bytes=1000)
    first = cache.get("k", lambda: _array(10))
    assert cache.get("k", lambda: _array(10, 9)) is first
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 1


def test_budget_zero_or_too_small_keeps_nothing_and_shrinking_evicts():
    off = FrameCache(budget_bytes=0)
    off.get("k", lambda: _array(10))
    assert off.stats().entries == 0
    cache = FrameCache(budget_bytes=100)
    cache.get("big", lambda: _array(101))
    assert cache.stats().entries == 0  # larger than the whole budget: returned, not kept
    cache.get("x", lambda: _array(60))
    cache.get("y", lambda: _array(40))
    cache.set_budget(50)
    assert cache.stats().entries == 1 and cache.stats().bytes == 40  # the older x went first
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="budget must be an int >= 0 bytes"):
            cache.set_budget(bad)


@pytest.fixture
def fresh_cache(monkeypatch):
    cache = FrameCache()
    monkeypatch.setattr(frame_cache_module, "_CACHE", cache)
    return cache


def test_datasets_on_one_folder_decode_each_episode_once(tmp_path, fresh_cache):
    root, _ = make_dataset(tmp_path / "ds", count=3)
    one, two = LeRobotDataset(root), LeRobotDataset(root)
    assert frame_cache() is fresh_cache
    first = one.episode(0).images("top")
    for index in (1, 2, 0):  # the per-dataset episode LRU holds one episode: these re-read rows
        one.episode(index).images("top")
    again = two.episode(0).images("top")
    assert again is first
    stats = fresh_cache.stats()
    assert stats.misses == 3 and stats.hits == 2
    np.testing.assert_array_equal(first, LeRobotDataset(root).episode(0).images("top"))


def test_a_rewritten_dataset_is_decoded_afresh(tmp_path, fresh_cache):
    root, _ = make_dataset(tmp_path / "ds", count=2)
    before = LeRobotDataset(root).episode(0).images("top").copy()
    shutil.rmtree(root)
    make_dataset(tmp_path / "ds", count=3)  # the same paths, new files
    after = LeRobotDataset(root).episode(0).images("top")
    assert fresh_cache.stats().misses == 2
    assert after.shape == before.shape
