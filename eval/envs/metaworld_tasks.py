"""Meta-World v3 data tables: task descriptions, difficulty splits, MT10, cameras (no simulator needed).

API:
- ``TASK_DESCRIPTIONS: dict[str, str]`` — one instruction sentence for each of the 50 tasks.
- ``SPLITS: dict[str, tuple[str, ...]]`` — ``easy`` (28), ``medium`` (11), ``hard`` (6),
  ``very_hard`` (5), ``mt10`` (Meta-World's MT10 list) and ``mt50`` (all 50).
- ``DIFFICULTY: tuple[str, ...]`` — the four difficulty buckets, in order.
- ``difficulty_of(task) -> str`` — the bucket a task belongs to.
- ``expand_tasks(spec) -> list[str]`` — ``"easy"``, ``"mt10"``, ``"a,b,c"`` or a mix, in order,
  without repeats; unknown names raise a ValueError with the closest match.
- ``CAMERAS: dict[str, CameraSpec]`` — the cameras a Meta-World env can render, with LeRobot's
  placement of ``corner2`` and which frames need flipping.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

# One sentence per task: the protocol's text, checked word for word against LeRobot's Meta-World
# task descriptions (src/lerobot/envs/metaworld_config.json), so a policy fine-tuned on LeRobot's
# dataset sees the instructions it was trained on. push-v3 and push-back-v3 share one sentence there.
TASK_DESCRIPTIONS: dict[str, str] = {
    "assembly-v3": "Pick up a nut and place it onto a peg",
    "basketball-v3": "Dunk the basketball into the basket",
    "bin-picking-v3": "Grasp the puck from one bin and place it into another bin",
    "box-close-v3": "Grasp the cover and close the box with it",
    "button-press-topdown-v3": "Press a button from the top",
    "button-press-topdown-wall-v3": "Bypass a wall and press a button from the top",
    "button-press-v3": "Press a button",
    "button-press-wall-v3": "Bypass a wall and press a button",
    "coffee-button-v3": "Push a button on the coffee machine",
    "coffee-pull-v3": "Pull a mug from a coffee machine",
    "coffee-push-v3": "Push a mug under a coffee machine",
    "dial-turn-v3": "Rotate a dial 180 degrees",
    "disassemble-v3": "Pick a nut out of a peg",
    "door-close-v3": "Close a door with a revolving joint",
    "door-lock-v3": "Lock the door by rotating the lock clockwise",
    "door-open-v3": "Open a door with a revolving joint",
    "door-unlock-v3": "Unlock the door by rotating the lock counter-clockwise",
    "hand-insert-v3": "Insert the gripper into a hole",
    "drawer-close-v3": "Push and close a drawer",
    "drawer-open-v3": "Open a drawer",
    "faucet-open-v3": "Rotate the faucet counter-clockwise",
    "faucet-close-v3": "Rotate the faucet clockwise",
    "hammer-v3": "Hammer a screw on the wall",
    "handle-press-side-v3": "Press a handle down sideways",
    "handle-press-v3": "Press a handle down",
    "handle-pull-side-v3": "Pull a handle up sideways",
    "handle-pull-v3": "Pull a handle up",
    "lever-pull-v3": "Pull a lever down 90 degrees",
    "pick-place-wall-v3": "Pick a puck, bypass a wall and place the puck",
    "pick-out-of-hole-v3": "Pick up a puck from a hole",
    "pick-place-v3": "Pick and place a puck to a goal",
    "plate-slide-v3": "Slide a plate into a cabinet",
    "plate-slide-side-v3": "Slide a plate into a cabinet sideways",
    "plate-slide-back-v3": "Get a plate from the cabinet",
    "plate-slide-back-side-v3": "Get a plate from the cabinet sideways",
    "peg-insert-side-v3": "Insert a peg sideways",
    "peg-unplug-side-v3": "Unplug a peg sideways",
    "soccer-v3": "Kick a soccer into the goal",
    "stick-push-v3": "Grasp a stick and push a box using the stick",
    "stick-pull-v3": "Grasp a stick and pull a box with the stick",
    "push-v3": "Push the puck to a goal",
    "push-wall-v3": "Bypass a wall and push a puck to a goal",
    "push-back-v3": "Push the puck to a goal",
    "reach-v3": "Reach a goal position",
    "reach-wall-v3": "Bypass a wall and reach a goal",
    "shelf-place-v3": "Pick and place a puck onto a shelf",
    "sweep-into-v3": "Sweep a puck into a hole",
    "sweep-v3": "Sweep a puck off the table",
    "window-open-v3": "Push and open a window",
    "window-close-v3": "Push and close a window",
}

DIFFICULTY = ("easy", "medium", "hard", "very_hard")

# The difficulty buckets of Seo et al. 2022 (Masked World Models, appendix), which LeRobot's
# Meta-World benchmark and the SmolVLA paper report: 28 / 11 / 6 / 5 tasks. Written down from that
# classification and checked against LeRobot's DIFFICULTY_TO_TASKS; tests check the sizes and that
# the buckets partition Meta-World's 50 tasks.
_BUCKETS: dict[str, tuple[str, ...]] = {
    "easy": (
        "button-press-v3", "button-press-topdown-v3", "button-press-topdown-wall-v3",
        "button-press-wall-v3", "coffee-button-v3", "dial-turn-v3", "door-close-v3", "door-lock-v3",
        "door-open-v3", "door-unlock-v3", "drawer-close-v3", "drawer-open-v3", "faucet-close-v3",
        "faucet-open-v3", "handle-press-v3", "handle-press-side-v3", "handle-pull-v3",
        "handle-pull-side-v3", "lever-pull-v3", "plate-slide-v3", "plate-slide-back-v3",
        "plate-slide-back-side-v3", "plate-slide-side-v3", "reach-v3", "reach-wall-v3",
        "window-close-v3", "window-open-v3", "peg-unplug-side-v3",
    ),
    "medium": (
        "basketball-v3", "bin-picking-v3", "box-close-v3", "coffee-pull-v3", "coffee-push-v3",
        "hammer-v3", "peg-insert-side-v3", "push-wall-v3", "soccer-v3", "sweep-v3", "sweep-into-v3",
    ),
    "hard": ("assembly-v3", "hand-insert-v3", "pick-out-of-hole-v3", "pick-place-v3", "push-v3", "push-back-v3"),
    "very_hard": ("shelf-place-v3", "disassemble-v3", "stick-pull-v3", "stick-push-v3", "pick-place-wall-v3"),
}  # fmt: skip

# Meta-World's own MT10 list (metaworld.env_dict.MT10_V3), in its order.
MT10: tuple[str, ...] = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)

SPLITS: dict[str, tuple[str, ...]] = {**_BUCKETS, "mt10": MT10, "mt50": tuple(TASK_DESCRIPTIONS)}

_BUCKET_OF = {task: bucket for bucket, tasks in _BUCKETS.items() for task in tasks}


def difficulty_of(task: str) -> str:
    """The difficulty bucket (``easy`` … ``very_hard``) of a Meta-World task."""
    check_task(task)
    return _BUCKET_OF[task]


def check_task(task: str) -> str:
    """``task`` if it is one of the 50 Meta-World v3 tasks; otherwise a ValueError naming the closest."""
    if task in TASK_DESCRIPTIONS:
        return task
    guess = difflib.get_close_matches(task, list(TASK_DESCRIPTIONS), n=1)
    if not guess and not task.endswith("-v3"):
        guess = difflib.get_close_matches(f"{task}-v3", list(TASK_DESCRIPTIONS), n=1)
    hint = f" (did you mean '{guess[0]}'?)" if guess else ""
    raise ValueError(
        f"unknown Meta-World task '{task}'{hint}; give a v3 task name like 'drawer-open-v3' "
        f"or a split: {', '.join(SPLITS)}"
    )


def expand_tasks(spec: str) -> list[str]:
    """Task names from a spec: split names (``easy``, ``mt10``, …) and task names, comma-separated."""
    tasks: list[str] = []
    for part in (piece.strip() for piece in spec.split(",")):
        if not part:
            continue
        # "drawer-open" is accepted for "drawer-open-v3": v3 is the only version Meta-World 3 ships.
        short = f"{part}-v3" if f"{part}-v3" in TASK_DESCRIPTIONS else part
        names = SPLITS.get(part.lower().replace("-", "_")) or (check_task(short),)
        tasks += [name for name in names if name not in tasks]
    if not tasks:
        raise ValueError(f"no Meta-World task in '{spec}'; give task names or one of {', '.join(SPLITS)}")
    return tasks


@dataclass(frozen=True)
class CameraSpec:
    """A Meta-World camera: its MuJoCo name, an optional new position (world frame, metres) and
    whether frames are turned 180° (flipped on both axes) to come out upright."""

    name: str
    position: tuple[float, float, float] | None = None
    flip: bool = False


CAMERAS: dict[str, CameraSpec] = {
    # LeRobot's placement: corner2 moved closer to the table; as mounted it renders upside down.
    "corner2": CameraSpec("corner2", position=(0.75, 0.075, 0.7), flip=True),
    # The wrist view tracks the gripper and is upright as rendered.
    "gripperPOV": CameraSpec("gripperPOV"),
}
