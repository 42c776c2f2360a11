"""Every command-line case of ``cases_cli.py`` ends as one stderr line and its exit code; --debug adds the traceback."""

from __future__ import annotations

import re

import pytest
import yaml
from cases_cli import CASES, make_inputs

from emcot.cli.main import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("cli_inputs"))


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of ``emcot argv`` (argparse's usage errors arrive as SystemExit)."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_command_line_ends_in_one_line(case, inputs, capsys):
    code, err = run_cli(case.args(inputs), capsys)
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("emcot"), lines[0]
    assert re.search(case.match, lines[0]), lines[0]
    assert code == case.code, lines[0]


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_adds_the_traceback(where, inputs, capsys):
    argv = ["generate", "--policy", "synthetic", "--image", f"head={inputs['text']}", "--instruction", "go"]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    code, err = run_cli(argv, capsys)
    assert code == 1
    assert "Traceback" in err and "UnidentifiedImageError" in err  # the cause PIL raised is kept
    assert err.strip().splitlines()[-1].startswith("emcot generate: error: ")


def _raise(err: BaseException):
    def fail(*args, **kwargs):
        raise err

    return fail


def test_a_bug_names_its_type_and_points_to_debug(monkeypatch, tmp_path, capsys):
    from emcot.policy.policy import EmCoTPolicy

    monkeypatch.setattr(EmCoTPolicy, "load", _raise(RuntimeError("boom\nsecond line")))
    code, err = run_cli(["demo", "--out", str(tmp_path)], capsys)
    assert code == 1
    assert err == "emcot demo: error: RuntimeError: boom second line (run with --debug for the traceback)\n"


def _yaml_error(text: str) -> yaml.YAMLError:
    try:
        yaml.safe_load(text)
    except yaml.YAMLError as err:
        return err
    raise AssertionError(f"{text!r} parsed")


@pytest.mark.parametrize(
    ("err", "code", "line"),
    [
        (KeyboardInterrupt(), 130, "interrupted"),
        (PermissionError(13, "Permission denied", "/data/x"), 1, "Permission denied: '/data/x'"),
        (ValueError("first\nsecond"), 1, "first\nsecond"),
        (
            _yaml_error("a: [1, 2"),
            1,
            "invalid YAML: expected ',' or ']', but got '<stream end>' (line 1, column 9)",
        ),
    ],
    ids=["ctrl-c", "permission", "multi-line-value-error", "yaml"],
)
def test_user_errors_read_as_their_message(err, code, line, monkeypatch, tmp_path, capsys):
    from emcot.policy.policy import EmCoTPolicy

    monkeypatch.setattr(EmCoTPolicy, "load", _raise(err))
    assert run_cli(["demo", "--out", str(tmp_path)], capsys) == (code, f"emcot demo: error: {line}\n")


def test_predict_frame_writes_no_partial_file(monkeypatch, inputs, tmp_path, capsys):
    from PIL import Image

    monkeypatch.setattr(Image.Image, "save", _raise(KeyboardInterrupt()))
    out = tmp_path / "next.png"
    argv = [
        "predict-frame",
        "--policy",
        "synthetic",
        "--image",
        inputs["png"],
        "--prompt",
        "go",
        "--out",
        str(out),
        "--steps",
        "1",
    ]
    assert run_cli(argv, capsys)[0] == 130
    assert list(tmp_path.iterdir()) == []
