"""What the commands share: argument types, image files, policy loading and trace printing.

The argument types raise ``argparse.ArgumentTypeError``, which argparse turns into a usage error
(exit 2) before any work starts.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emcot.sequence.layouts import TraceMode

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from emcot.inference.trace import Trace
    from emcot.policy.policy import EmCoTPolicy
    from emcot.types import Observation

# Trace modes for --mode; importing the enum is light (sequence.layouts needs only torch).
MODES = tuple(mode.value for mode in TraceMode)

# ---------------------------------------------------------------------------------------------
# Argument types.


def finite_float(text: str) -> float:
    """A number that is neither NaN nor infinite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
    return value


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what} ≥ {low}, got '{text}'")
    return value


def positive_int(text: str) -> int:
    """A whole number ≥ 1."""
    return _int_at_least(text, 1, "a whole number")


def non_negative_int(text: str) -> int:
    """A whole number ≥ 0 (a count that may be zero)."""
    return _int_at_least(text, 0, "a whole number")


def seed_number(text: str) -> int:
    """A random seed: a whole number ≥ 0."""
    return _int_at_least(text, 0, "a seed")


def state_vector(text: str) -> np.ndarray:
    """Comma-separated finite numbers, e.g. ``0.1,0.2,0,1``."""
    try:
        values = [finite_float(v) for v in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers, got '{text}'") from None
    return np.array(values, np.float32)


def camera_path(text: str) -> tuple[str, str]:
    """``CAMERA=PATH`` → ``(camera, path)``."""
    name, sep, path = text.partition("=")
    if not (sep and name and path):
        raise argparse.ArgumentTypeError(f"expected CAMERA=PATH, got '{text}'")
    return name, path


def _refuse_file_ancestor(path: Path) -> None:
    # mkdir would fail below a file only after the work is done.
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"'{parent}' is a file, so '{path}' cannot be created")
            return


def output_folder(text: str) -> Path:
    """A folder to write into: existing, or creatable."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"'{path}' is a file; give a folder")
    _refuse_file_ancestor(path)
    return path


def output_file(text: str) -> Path:
    """A file to write: not a folder, and creatable."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"'{path}' is a folder; give a file path")
    _refuse_file_ancestor(path)
    return path


def image_output(text: str) -> Path:
    """An image file to write, its format named by an extension Pillow can write (.png, .jpg, ...)."""
    path = output_file(text)
    if _image_format(path) is None:
        raise argparse.ArgumentTypeError(f"'{path}' needs an image extension Pillow can write, e.g. .png")
    return path


def _image_format(path: Path) -> str | None:
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    return fmt if fmt in Image.SAVE else None


# ---------------------------------------------------------------------------------------------
# Image files.


def read_image(path: str | Path) -> np.ndarray:
    """The RGB pixels of an image file; a missing, non-image or truncated file raises ValueError."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"'{path}' is a folder, not an image file")
    if not path.is_file():
        raise ValueError(f"no image file at '{path}'")
    try:
        with Image.open(path) as image:
            image.load()  # open() reads only the header; a truncated file fails while decoding
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        reason = "unknown image format" if isinstance(err, UnidentifiedImageError) else str(err)
        raise ValueError(f"'{path}' is not a readable image ({reason})") from err


def save_image(image: PILImage.Image, path: Path) -> Path:
    """Write ``image`` through a temporary file, so an interrupted save never leaves a torn image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        image.save(tmp, format=_image_format(path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------------------------
# Policies and traces.


def add_policy_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--policy FOLDER`` (default: the bundled Meta-World policy)."""
    parser.add_argument(
        "--policy",
        default="default",
        help="policy folder, or a bundled policy: 'default' (Meta-World), 'synthetic'",
    )


def load_policy(name: str) -> EmCoTPolicy:
    """The policy ``--policy`` names: a folder, or a bundled policy (``default``, ``synthetic``)."""
    from emcot.policy.policy import EmCoTPolicy

    return EmCoTPolicy.load(name)


def print_trace(trace: Trace, out: Path | None, observation: Observation | None = None) -> None:
    """Print a summary of ``trace``; save it (with the ``observation`` it saw) into ``out`` when given."""
    print(f"instruction : {trace.instruction}")
    print(f"mode        : {trace.mode}")
    print(f"reasoning   : {trace.reasoning}")
    print(f"subgoal     : {'image ' + 'x'.join(map(str, trace.subgoal.size)) if trace.subgoal else 'none'}")
    print(f"actions     : shape {trace.actions.shape}, first step {np.round(trace.actions[0], 3).tolist()}")
    print("timings (s) : " + ", ".join(f"{k} {v:.3f}" for k, v in trace.timings.items()))
    if out is not None:
        print(f"saved to    : {trace.save(out, observation)}")
