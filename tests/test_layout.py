"""The house rules of DESIGN §1 and §8 that the code's shape must keep: dependencies point one way,
argparse lives only in ``emcot.cli``, modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"emcot": "emcot", "experts": "emcot.experts", "tokenizers": "emcot.tokenizers",
           "training": "emcot.training", "eval": "emcot.eval"}  # fmt: skip

# Lower layers never import higher ones (DESIGN §1). The first matching prefix decides.
LAYERS: list[tuple[str, int]] = [
    ("emcot.io_utils", 0),
    ("emcot.types", 0),
    ("emcot.tokenizers", 1),
    ("emcot.experts", 1),
    ("emcot.config", 2),
    ("emcot.presets", 2),
    ("emcot.sequence", 3),
    ("emcot.memory.config", 1),  # a plain dataclass that EmCoTConfig holds
    ("emcot.memory", 3),  # history segments and Top-K attention; the backbone and the session use it
    ("emcot.model", 4),
    ("emcot.inference", 5),
    ("emcot.policy", 6),
    ("emcot.interop", 7),
    ("emcot.synthetic", 7),
    ("emcot.training", 8),
    ("emcot.runtime", 8),
    ("emcot.serving", 9),
    ("emcot.eval", 9),
    ("emcot.cli", 10),
]
# EmCoTModel.from_components is the public entry point of component initialisation; the builder it
# calls lazily imports nothing above the model.
ALLOWED = {("emcot.model.modeling", "emcot.interop.components")}


def layer(module: str) -> int:
    for prefix, rank in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return rank
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py; add it")


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if folder == "emcot" and parts[0] in {"experts", "tokenizers", "training", "eval"}:
                continue
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every emcot import outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in out if name == "emcot" or name.startswith("emcot.")]


MODULES = modules()


def test_dependencies_point_one_way():
    back = []
    for name, path in MODULES.items():
        if name == "emcot":
            continue  # the root only maps public names lazily
        for line, target in imports(path):
            if target == "emcot" or (name, target) in ALLOWED:
                continue
            if layer(target) > layer(name):
                back.append(f"{path.relative_to(ROOT)}:{line} {name} → {target}")
    assert not back, "imports that run against the layer order:\n" + "\n".join(back)


def test_argparse_lives_only_in_the_cli():
    offenders = [
        str(path.relative_to(ROOT))
        for name, path in MODULES.items()
        if not name.startswith("emcot.cli") and "argparse" in {t for _, t in _all_imports(path)}
    ]
    assert not offenders


def _all_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    return [(n.lineno, a.name) for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= 420, f"{name} has {lines} lines; split it by responsibility"


def _private_reaches(path: Path) -> list[str]:
    """``x._name`` where ``x`` is not ``self``/``cls`` (dunders are Python's, not private state)."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")):
            continue
        if node.attr.startswith("__") and node.attr.endswith("__"):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}:
            continue
        out.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    return out


# Meta-World's evaluation protocol is set through these attributes of the simulator (not ours): its
# seeding, and the goal marker that only its step() places (MetaWorldEnv.reset places it too).
SIMULATOR_PROTOCOL = {
    "self._env._freeze_rand_vec",
    "self._env._target_site_config",
    "self._env._set_pos_site",
}


def test_runtime_serving_and_eval_use_only_public_attributes():
    """The control loop is built on the policy's public API (issue: no reaching into the model)."""
    offenders = [
        reach
        for name, path in MODULES.items()
        if name.split(".")[1:2] in (["runtime"], ["serving"], ["eval"])
        for reach in _private_reaches(path)
        if reach.split(" ", 1)[1] not in SIMULATOR_PROTOCOL
    ]
    assert not offenders, "private attributes of other objects:\n" + "\n".join(offenders)
