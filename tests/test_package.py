"""Packaging: the namespace mapping, no shadowing of Hugging Face's `tokenizers`, the console script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SNIPPET = (
    "import tokenizers, emcot.tokenizers, emcot.experts, emcot.training, emcot.eval;"
    "from tokenizers import Tokenizer;"
    "assert 'site-packages' in tokenizers.__file__ or 'dist-packages' in tokenizers.__file__, tokenizers.__file__;"
    "assert emcot.tokenizers.__file__.endswith('tokenizers/__init__.py');"
    "print('ok')"
)


@pytest.mark.parametrize("cwd", [ROOT, ROOT / "tests"])
def test_hf_tokenizers_is_not_shadowed(cwd):
    # From the repository root `python -c` puts the checkout on sys.path, the worst case.
    out = subprocess.run(
        [sys.executable, "-c", SNIPPET], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_subpackages_map_to_top_level_folders():
    import emcot.experts
    import emcot.training

    assert Path(emcot.experts.__file__).parent == ROOT / "experts"
    assert Path(emcot.training.__file__).parent == ROOT / "training"


def test_console_script_is_installed():
    exe = shutil.which("emcot")
    assert exe is not None, "console script missing: run `pip install -e .`"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "demo" in out.stdout


def test_public_names_resolve_lazily():
    import emcot

    assert emcot.Observation.__module__ == "emcot.types"
    with pytest.raises(AttributeError):
        emcot.NotAThing  # noqa: B018
