"""Where a policy may be saved, and replacing an old policy folder without ever deleting user files."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from emcot.config import EmCoTConfig


def is_policy_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a saved emcot model or policy (its config.json says ``model_type: emcot``)."""
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("model_type") == EmCoTConfig.model_type


def check_save_target(folder: str | os.PathLike) -> Path:
    """``folder`` resolved, after refusing targets that saving would destroy; creates its parent.

    Allowed: a path that does not exist, an empty folder, or an emcot policy folder (replaced).
    """
    target = Path(folder).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise ValueError(
            f"refusing to save a policy into {target}: it is the working directory or one of its parents; "
            "name a new sub-folder, e.g. ./my-policy"
        )
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise ValueError(f"cannot save a policy to {target}: it is a file, not a folder")
        if any(target.iterdir()) and not is_policy_folder(target):
            raise ValueError(
                f"refusing to save a policy into {target}: the folder is not empty and is not an emcot policy "
                "folder, so replacing it would delete its files; choose a new or empty folder"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def replace_folder(new: Path, target: Path) -> None:
    """Put the finished folder ``new`` at ``target``: move an old ``target`` aside, rename, then delete the old one.

    ``target`` must have passed :func:`check_save_target`. Until the rename, a reader sees the
    complete old folder; after it, the complete new one.
    """
    if not target.exists():
        os.replace(new, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    aside.rmdir()  # only the unique name is wanted: os.replace cannot move onto a folder
    os.replace(target, aside)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)
