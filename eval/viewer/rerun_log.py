"""An episode as a Rerun recording (``.rrd``), for the viewer LeRobot users already have.

Needs the ``rerun`` extra (``pip install 'emcot[rerun]'``, the ``rerun-sdk`` package); open the file
with ``rerun episode.rrd``. Everything is on the ``env_step`` timeline:

- ``camera/<name>`` — the kept frames; ``plan/observation``, ``plan/subgoal``, ``plan/reached`` and
  ``plan/reasoning`` (a text document) at each re-plan, ``plan/rule`` as a text log;
- ``action/executed/<d>`` and ``action/predicted/<d>`` (each policy step's chunk, logged at the
  env steps it covers) as scalars; ``reward``, ``success`` and ``latency_ms`` (per policy step).

API: ``write_rerun(record, path) -> Path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emcot.eval.records import EpisodeRecord
from emcot.eval.viewer.episode_page import plan_views


def _rerun() -> Any:
    try:
        import rerun
    except ImportError:
        raise ImportError("writing a Rerun recording needs rerun-sdk: pip install 'emcot[rerun]'") from None
    return rerun


def _log_views(rr: Any, recording: Any, record: EpisodeRecord) -> None:
    for frame in record.frames:
        recording.set_time("env_step", sequence=frame.env_step)
        recording.log(f"camera/{frame.camera}", rr.Image(frame.image))
    for view in plan_views(record):
        recording.set_time("env_step", sequence=view.start)
        recording.log("plan/reasoning", rr.TextDocument(view.reasoning))
        recording.log(
            "plan/rule", rr.TextLog(f"plan {view.index + 1}: {view.reason} (until step {view.end})")
        )
        pictures = {"observation": view.observation, "subgoal": view.subgoal, "reached": view.reached}
        for name, picture in pictures.items():
            if picture is not None:
                recording.log(f"plan/{name}", rr.Image(picture))


def _log_actions(rr: Any, recording: Any, record: EpisodeRecord) -> None:
    for step, action in enumerate(record.actions):
        recording.set_time("env_step", sequence=step)
        for d, value in enumerate(action):
            recording.log(f"action/executed/{d}", rr.Scalars(float(value)))
    for policy_step in record.policy_steps:
        recording.set_time("env_step", sequence=policy_step.env_step)
        recording.log("latency_ms", rr.Scalars(1000.0 * policy_step.timings.get("step", 0.0)))
        # a later chunk's values replace an earlier one's where they overlap (the newest prediction)
        for offset, chunk_action in enumerate(policy_step.predicted):
            recording.set_time("env_step", sequence=policy_step.env_step + offset)
            for d, value in enumerate(chunk_action):
                recording.log(f"action/predicted/{d}", rr.Scalars(float(value)))


def write_rerun(record: EpisodeRecord, path: str | Path) -> Path:
    """Write ``record`` to the Rerun recording ``path`` (see the module docstring for its entities)."""
    rr = _rerun()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recording = rr.RecordingStream(f"emcot/{record.task}/{record.mode}/{record.episode}")
    recording.save(str(path))
    _log_views(rr, recording, record)
    _log_actions(rr, recording, record)
    for step, (reward, solved) in enumerate(zip(record.rewards, record.step_success), 1):
        recording.set_time("env_step", sequence=step)
        recording.log("reward", rr.Scalars(float(reward)))
        recording.log("success", rr.Scalars(float(solved)))
    recording.flush()
    recording.disconnect()
    return path
