"""The command-line corpus: every hostile or edge command line we have tried, with how it must end.

A case is data: an argv string whose ``{name}`` placeholders name the scratch inputs of
:func:`make_inputs`, the exit code (2 usage error, 1 failure in the work), and a regex the single
stderr line must contain. New findings are added as new cases; ``test_cli_inputs.py`` runs them all.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

STATE = "--state 0,0,0,0"
FRAME = "predict-frame --policy synthetic --image {png} --prompt go --out {scratch}/next.png --steps 1"


@dataclass(frozen=True)
class CliCase:
    """One tried command line and the one-line failure it must produce."""

    id: str
    argv: str
    code: int
    match: str

    def args(self, inputs: dict[str, str]) -> list[str]:
        """The argv with the scratch inputs filled in (split first, so paths may hold spaces)."""
        return [token.format(**inputs) for token in shlex.split(self.argv)]


def make_inputs(scratch: Path) -> dict[str, str]:
    """Write the scratch files the cases name; returns placeholder → path."""
    from emcot.training.data.lerobot_writer import EpisodeData, WriterConfig, write_lerobot_dataset
    from emcot.training.recipes import RECIPE_DIR

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(scratch / "ok.png")
    png = (scratch / "ok.png").read_bytes()
    (scratch / "truncated.png").write_bytes(png[: len(png) // 2])
    (scratch / "text.png").write_text("not an image\n")
    (scratch / "empty.png").write_bytes(b"")
    (scratch / "folder").mkdir()
    (scratch / "notes.txt").write_text("a file, not a folder\n")
    (scratch / "broken.yaml").write_text("name: x\ndata: [1, 2\n")
    (scratch / "list.yaml").write_text("- 1\n- 2\n")
    recipe = (RECIPE_DIR / "stage1-tiny.yaml").read_text()
    (scratch / "string_lr.yaml").write_text(recipe.replace("lr: 3.0e-3", "lr: fast"))

    states = np.cumsum(np.full((8, 4), 0.01, np.float32), axis=0)
    episode = EpisodeData("push the block", states, states, {"top": np.zeros((8, 16, 16, 3), np.uint8)})
    for name in ("dataset", "fps0_dataset"):
        write_lerobot_dataset(scratch / name, [episode], 10, WriterConfig(camera_storage="image"))
    info = scratch / "fps0_dataset" / "meta" / "info.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "fps": 0}))

    names = ["ok.png", "truncated.png", "text.png", "empty.png", "folder", "notes.txt"]
    names += ["broken.yaml", "list.yaml", "string_lr.yaml", "dataset", "fps0_dataset"]
    inputs = {Path(n).stem: str(scratch / n) for n in names}
    return {**inputs, "png": inputs["ok"], "scratch": str(scratch), "missing": str(scratch / "missing")}


CASES = [
    # Command and usage basics.
    CliCase("no-command", "", 2, r"^emcot: error: .*required: command"),
    CliCase("unknown-command", "nope", 2, r"invalid choice: 'nope'"),
    CliCase("info-without-target", "info", 2, r"^emcot info: error: one of the arguments folder --preset"),
    CliCase("info-folder-and-preset", "info {folder} --preset tiny", 2, r"not allowed with"),
    CliCase("info-unknown-preset", "info --preset nope", 1, r"unknown preset 'nope'"),
    CliCase("info-missing-folder", "info {missing}", 1, r"missing.*config\.json"),
    # Image files: the library never sees a path that is not a decodable image.
    CliCase(
        "image-is-text",
        f"generate --policy synthetic --image head={{text}} --instruction go {STATE}",
        1,
        r"^emcot generate: error: '.*text\.png' is not a readable image \(unknown image format\)$",
    ),
    CliCase(
        "image-is-truncated",
        f"generate --policy synthetic --image head={{truncated}} --instruction go {STATE}",
        1,
        r"'.*truncated\.png' is not a readable image \(image file is truncated",
    ),
    CliCase(
        "image-is-empty",
        f"generate --policy synthetic --image head={{empty}} --instruction go {STATE}",
        1,
        r"'.*empty\.png' is not a readable image",
    ),
    CliCase(
        "image-is-folder",
        f"generate --policy synthetic --image head={{folder}} --instruction go {STATE}",
        1,
        r"'.*folder' is a folder, not an image file",
    ),
    CliCase(
        "image-missing",
        f"generate --policy synthetic --image head={{missing}} --instruction go {STATE}",
        1,
        r"no image file at '.*missing'",
    ),
    CliCase(
        "image-without-camera",
        f"generate --policy synthetic --image {{png}} --instruction go {STATE}",
        2,
        r"argument --image: expected CAMERA=PATH",
    ),
    CliCase(
        "camera-given-twice",
        f"generate --policy synthetic --image head={{png}} --image head={{png}} --instruction go {STATE}",
        1,
        r"camera 'head' is given twice",
    ),
    CliCase(
        "camera-unknown",
        f"generate --policy synthetic --image wrist={{png}} --instruction go {STATE}",
        1,
        r"unknown \['wrist'\]",
    ),
    CliCase(
        "frame-is-text",
        "predict-frame --policy synthetic --image {text} --prompt go --out {scratch}/f.png",
        1,
        r"^emcot predict-frame: error: '.*text\.png' is not a readable image",
    ),
    CliCase(
        "frame-is-truncated",
        "predict-frame --policy synthetic --image {truncated} --prompt go --out {scratch}/f.png",
        1,
        r"is not a readable image \(image file is truncated",
    ),
    # Numbers and vectors: refused by the argument types, before the model loads.
    CliCase(
        "text-guidance-nan",
        f"{FRAME} --text-guidance nan",
        2,
        r"^emcot predict-frame: error: argument --text-guidance: expected a finite number, got 'nan'",
    ),
    CliCase("image-guidance-inf", f"{FRAME} --image-guidance inf", 2, r"argument --image-guidance: .*finite"),
    CliCase("guidance-is-a-word", f"{FRAME} --text-guidance strong", 2, r"expected a number, got 'strong'"),
    CliCase("guidance-negative", f"{FRAME} --image-guidance -3", 1, r"image_guidance"),
    CliCase(
        "steps-zero",
        "predict-frame --policy synthetic --image {png} --prompt go --out {scratch}/f.png --steps 0",
        2,
        r"argument --steps: expected a whole number ≥ 1, got '0'",
    ),
    CliCase(
        "steps-fraction",
        "predict-frame --policy synthetic --image {png} --prompt go --out {scratch}/f.png --steps 1.5",
        2,
        r"argument --steps: expected a whole number",
    ),
    CliCase("seed-is-a-word", f"{FRAME} --seed lucky", 2, r"argument --seed: invalid int value"),
    CliCase(
        "state-is-words",
        "generate --policy synthetic --image head={png} --instruction go --state a,b",
        2,
        r"argument --state: expected comma-separated finite numbers, got 'a,b'",
    ),
    CliCase(
        "state-nan",
        "generate --policy synthetic --image head={png} --instruction go --state nan,0,0,0",
        2,
        r"argument --state: expected comma-separated finite numbers",
    ),
    CliCase(
        "state-wrong-size",
        "generate --policy synthetic --image head={png} --instruction go --state 1,2",
        1,
        r"state must have shape \(4,\)",
    ),
    CliCase(
        "state-missing",
        "generate --policy synthetic --image head={png} --instruction go",
        1,
        r"needs a state vector of size 4",
    ),
    CliCase(
        "instruction-empty",
        f"generate --policy synthetic --image head={{png}} --instruction '' {STATE}",
        1,
        r"non-empty",
    ),
    CliCase(
        "prompt-blank",
        "predict-frame --policy synthetic --image {png} --prompt ' ' --out {scratch}/f.png",
        1,
        r"non-empty",
    ),
    # Outputs: a file where a folder belongs (or the reverse) is refused before any work.
    CliCase(
        "demo-out-is-file",
        "demo --policy synthetic --out {notes}",
        2,
        r"^emcot demo: error: argument --out: '.*notes\.txt' is a file",
    ),
    CliCase(
        "generate-out-below-file",
        f"generate --policy synthetic --image head={{png}} --instruction go {STATE} --out {{notes}}/t",
        2,
        r"'.*notes\.txt' is a file, so .* cannot be created",
    ),
    CliCase(
        "frame-out-is-folder",
        "predict-frame --policy synthetic --image {png} --prompt go --out {folder}",
        2,
        r"argument --out: '.*folder' is a folder; give a file path",
    ),
    CliCase(
        "frame-out-no-image-extension",
        "predict-frame --policy synthetic --image {png} --prompt go --out {scratch}/f.txt",
        2,
        r"needs an image extension",
    ),
    CliCase(
        "frame-out-below-file",
        "predict-frame --policy synthetic --image {png} --prompt go --out {notes}/f.png",
        2,
        r"is a file, so",
    ),
    # Policies.
    CliCase(
        "policy-missing",
        "generate --policy {missing} --image head={png} --instruction go",
        1,
        r"missing.*config\.json",
    ),
    CliCase(
        "policy-is-file", "generate --policy {notes} --image head={png} --instruction go", 1, r"config\.json"
    ),
    # train: emcot.cli.train reports its own ValueErrors with exit 2.
    CliCase("recipe-unknown", "train no-such-recipe", 1, r"neither a YAML file nor a shipped recipe"),
    CliCase("recipe-invalid-yaml", "train {broken}", 1, r"broken\.yaml.*(?i:yaml).*line \d+"),
    CliCase("recipe-not-a-mapping", "train {list}", 1, r"must hold a YAML mapping"),
    CliCase(
        "recipe-string-lr",
        "train {string_lr} --max-steps 1 --output-dir {scratch}/run --no-progress",
        1,
        r"optim\.lr",
    ),
    CliCase("train-steps-zero", "train stage1-tiny --max-steps 0", 2, r"argument --max-steps: .*≥ 1"),
    CliCase(
        "train-output-is-file",
        "train stage1-tiny --output-dir {notes}",
        2,
        r"argument --output-dir: .* is a file",
    ),
    # annotate: emcot.training.annotation.pipeline reports its own ValueErrors with exit 2.
    CliCase(
        "annotate-out-is-folder", "annotate {dataset} --out {folder}", 2, r"argument --out: .* is a folder"
    ),
    CliCase(
        "annotate-speed-nan",
        "annotate {dataset} --out {scratch}/a.jsonl --idle-speed nan",
        2,
        r"argument --idle-speed: expected a finite number",
    ),
    CliCase(
        "annotate-not-a-dataset", "annotate {folder} --out {scratch}/a.jsonl", 1, r"not a LeRobot dataset"
    ),
    CliCase(
        "annotate-bad-episodes",
        "annotate {dataset} --out {scratch}/a.jsonl --episodes x",
        1,
        r"--episodes 'x' must look like",
    ),
    CliCase("annotate-fps-zero", "annotate {fps0_dataset} --out {scratch}/a.jsonl --no-progress", 1, r"fps"),
    # convert.
    CliCase("convert-missing-source", "convert halo {missing} {scratch}/policy", 1, r"missing"),
    CliCase("convert-dst-is-file", "convert halo {folder} {notes}", 2, r"argument dst: .* is a file"),
    CliCase(
        "convert-horizon-zero", "convert halo {folder} {scratch}/p --horizon 0", 2, r"argument --horizon"
    ),
]
