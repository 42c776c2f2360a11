"""Saving a policy never deletes what is not an old policy, and replaces an old one atomically."""

from __future__ import annotations

import os

import pytest

from emcot import EmCoTPolicy


@pytest.fixture(scope="module")
def policy():
    return EmCoTPolicy.synthetic()


def test_saving_into_the_working_directory_or_its_parent_is_refused(policy, tmp_path, monkeypatch):
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    for target in (".", "..", str(work)):
        with pytest.raises(ValueError, match="working directory or one of its parents"):
            policy.save_pretrained(target)
    assert (work / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(work)) == ["notes.txt"]


def test_a_folder_with_user_files_or_a_file_is_refused_untouched(policy, tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "data.csv").write_text("1,2,3")
    with pytest.raises(ValueError, match="not empty and is not an emcot policy"):
        policy.save_pretrained(folder)
    assert sorted(os.listdir(folder)) == ["data.csv"]
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        policy.save_pretrained(file)
    assert file.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "project"]


def test_an_empty_folder_and_an_old_policy_folder_are_written(policy, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    policy.save_pretrained(empty)
    assert (empty / "model.safetensors").is_file()
    (empty / "stale.bin").write_text("from an older save")
    policy.save_pretrained(empty)  # a policy folder: replaced whole
    assert not (empty / "stale.bin").exists()
    assert EmCoTPolicy.from_pretrained(empty).config.to_dict() == policy.config.to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no temporary folders left


def test_a_crash_while_writing_leaves_the_old_policy(policy, tmp_path, monkeypatch):
    target = tmp_path / "policy"
    policy.save_pretrained(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def fail(folder):
        raise OSError("disk full")

    monkeypatch.setattr(policy.processor, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        policy.save_pretrained(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]
