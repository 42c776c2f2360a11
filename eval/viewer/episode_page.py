"""The page of one closed-loop episode (``EpisodeRecord.save``: ``emcot eval``, ``emcot demo``).

A timeline of the kept frames (scrub with the slider or play it) with the re-plans marked by the
rule that fired; at each re-plan the reasoning and the imagined subgoal next to the observation
it was made from and the real frame reached when that sub-task ended; predicted against executed
actions per dimension; reward and success; the policy's latency per step.

A plan's sub-task is taken to end at the first later re-plan whose reasoning differs (the policy
then believes it moved on), or at the end of the episode. The PSNR of the imagined subgoal
against that frame is shown next to the PSNR of simply copying the observation, the baseline an
imagined subgoal has to beat.

API:
- ``PlanView`` and ``plan_views(record) -> list[PlanView]`` — each plan with its three pictures.
- ``episode_page(record, *, title_link=None) -> str`` — the whole page; ``title_link`` is an
  ``(href, text)`` pair linking back to an evaluation page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emcot.eval.records import EpisodeRecord, PolicyStepRecord
from emcot.eval.viewer.html import esc, figure, img, page, table
from emcot.eval.viewer.svg import PALETTE, Marker, Series, Span, line_chart

RULE_COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
TIMELINE_SCRIPT = Path(__file__).with_name("timeline.js")


@dataclass
class PlanView:
    """One re-plan: where it was made and ended, what it said and imagined, and the real scenes."""

    index: int
    start: int
    end: int
    reason: str | None
    reasoning: str
    subgoal: np.ndarray | None
    observation: np.ndarray | None
    reached: np.ndarray | None
    reached_step: int | None

    def psnr(self) -> tuple[float, float] | None:
        """PSNR (dB) of the imagined subgoal and of the observation against the frame reached."""
        if self.subgoal is None or self.reached is None or self.observation is None:
            return None
        # the codec's metric (identical images: its 100 dB cap), imported only when a page scores one
        from emcot.tokenizers.vae import resize_rgb
        from emcot.training.codec import psnr

        size = self.subgoal.shape[:2]
        reached, seen = (resize_rgb(image, size) for image in (self.reached, self.observation))
        return psnr(self.subgoal, reached), psnr(seen, reached)


def _frames_by_step(record: EpisodeRecord) -> dict[int, dict[str, np.ndarray]]:
    frames: dict[int, dict[str, np.ndarray]] = {}
    for frame in record.frames:
        frames.setdefault(frame.env_step, {})[frame.camera] = frame.image
    return dict(sorted(frames.items()))


def _frame_at(frames: dict[int, dict[str, np.ndarray]], step: int) -> tuple[int, np.ndarray] | None:
    """The first camera's frame at ``step``, else the nearest kept one (records of format 1)."""
    if not frames:
        return None
    nearest = min(frames, key=lambda kept: (abs(kept - step), kept))
    return nearest, next(iter(frames[nearest].values()))


def plan_views(record: EpisodeRecord) -> list[PlanView]:
    """Each plan of ``record`` with its observation, its sub-task's end and the frame reached there."""
    frames = _frames_by_step(record)
    views = []
    for i, plan in enumerate(record.plans):
        later = [p.env_step for p in record.plans[i + 1 :] if p.reasoning != plan.reasoning]
        end = later[0] if later else record.steps
        seen, reached = _frame_at(frames, plan.env_step), _frame_at(frames, end)
        views.append(
            PlanView(
                index=i,
                start=plan.env_step,
                end=end,
                reason=plan.reason,
                reasoning=plan.reasoning,
                subgoal=plan.subgoal,
                observation=None if seen is None else seen[1],
                reached=None if reached is None else reached[1],
                reached_step=None if reached is None else reached[0],
            )
        )
    return views


def _rule_colors(record: EpisodeRecord) -> dict[str, str]:
    rules = sorted({step.reason for step in record.policy_steps if step.reason})
    return {rule: RULE_COLORS[i % len(RULE_COLORS)] for i, rule in enumerate(rules)}


def _success_spans(record: EpisodeRecord) -> list[Span]:
    return [Span(step, step + 1, "#2ca02c") for step, solved in enumerate(record.step_success, 1) if solved]


def _header(record: EpisodeRecord, title_link: tuple[str, str] | None) -> str:
    back = f'<p><a href="{esc(title_link[0])}">← {esc(title_link[1])}</a></p>' if title_link else ""
    outcome = (
        f'<span class="badge ok">success at step {record.first_success}</span>'
        if record.success
        else f'<span class="badge fail">failed ({record.steps} steps)</span>'
    )
    latencies = [s.timings.get("step", 0.0) for s in record.policy_steps]
    mean_ms = 1000.0 * float(np.mean(latencies)) if latencies else 0.0
    return (
        f"{back}<h1>{esc(record.task)} · {esc(record.mode)} · episode {record.episode}</h1>"
        f'<p class="meta"><b>{esc(record.instruction)}</b> · seed {record.seed} · {outcome} · '
        f"{len(record.policy_steps)} policy steps, {len(record.plans)} plans · "
        f"{mean_ms:.0f} ms per policy step · {record.wall_s:.1f} s wall</p>"
    )


def _timeline(record: EpisodeRecord, colors: dict[str, str]) -> str:
    frames = _frames_by_step(record)
    if not frames:
        return "<h2>Timeline</h2><p>no frames were kept in this episode (the policy saw no camera)</p>"
    figures = []
    for i, (step, images) in enumerate(frames.items()):
        pictures = "".join(
            figure(img(image, alt=f"frame {step} {camera}", cls="timeline"), camera)
            for camera, image in images.items()
        )
        shown = " shown" if i == 0 else ""
        figures.append(
            f'<div class="frame{shown}" data-step="{step}"><div class="frames">{pictures}</div></div>'
        )
    markers = [
        Marker(step.env_step, colors.get(step.reason or "", "#888"), f"step {step.env_step}: {step.reason}")
        for step in record.policy_steps
        if step.reason
    ]
    strip = line_chart(
        [Series("reward", list(range(1, len(record.rewards) + 1)), record.rewards, "#555")],
        title="reward · re-plans (ticks) · solved (green)",
        x_label="env step",
        width=760,
        height=150,
        markers=markers,
        spans=_success_spans(record),
        x_range=(0, max(record.steps, 1)),
        cursor=True,
    )
    legend = "".join(
        f'<span><i class="swatch" style="background:{color}"></i>{esc(rule)} '
        f"({sum(s.reason == rule for s in record.policy_steps)})</span>"
        for rule, color in colors.items()
    )
    return (
        "<h2>Timeline</h2>"
        '<div class="scrub"><button id="play" type="button">▶ play</button>'
        f'<input id="scrub" type="range" min="0" max="{len(frames) - 1}" value="0" aria-label="frame">'
        '<span id="scrub-label"></span></div>'
        f'<div id="frames">{"".join(figures)}</div>'
        f'<p class="legend">re-planning rules: {legend or "none fired"}</p>{strip}'
    )


def _plans(views: list[PlanView], colors: dict[str, str]) -> str:
    if not views:
        return "<h2>Plans</h2><p>no re-plan produced a trace (a reference policy, or reactive mode)</p>"
    blocks = []
    for view in views:
        pictures = []
        if view.observation is not None:
            pictures.append(
                figure(
                    img(view.observation, alt=f"observation {view.start}"), f"observation · step {view.start}"
                )
            )
        if view.subgoal is not None:
            pictures.append(
                figure(
                    img(view.subgoal, alt=f"imagined subgoal {view.index}", cls="subgoal"), "imagined subgoal"
                )
            )
        if view.reached is not None:
            pictures.append(
                figure(
                    img(view.reached, alt=f"reached {view.reached_step}", cls="reached"),
                    f"real frame reached · step {view.reached_step}",
                )
            )
        scores = view.psnr()
        score = (
            f'<p class="meta">subgoal vs reached: {scores[0]:.1f} dB PSNR (copying the observation: {scores[1]:.1f} dB)</p>'
            if scores
            else ""
        )
        color = colors.get(view.reason or "", "#888")
        blocks.append(
            f'<div class="plan" data-start="{view.start}" data-end="{view.end}">'
            f"<h3>Plan {view.index + 1} · steps {view.start}–{view.end} · "
            f'<i class="swatch" style="background:{color}"></i>{esc(view.reason or "—")}</h3>'
            f'<pre class="reasoning">{esc(view.reasoning) or "(no reasoning in this mode)"}</pre>'
            f"{''.join(pictures)}{score}</div>"
        )
    return f"<h2>Plans ({len(views)})</h2>{''.join(blocks)}"


def _actions(record: EpisodeRecord) -> str:
    executed = np.asarray(record.actions, np.float32)
    if executed.ndim != 2 or executed.size == 0:
        return "<h2>Actions</h2><p>this record keeps no actions (written by an emcot before format 2)</p>"
    charts = []
    for d in range(executed.shape[1]):
        color = PALETTE[d % len(PALETTE)]
        lines = [
            Series(
                "predicted",
                list(range(s.env_step, s.env_step + len(s.predicted))),
                [a[d] for a in s.predicted],
                color,
                dashed=True,
                width=3.0,
                opacity=0.55,
            )
            for s in record.policy_steps
            if s.predicted and len(s.predicted[0]) > d
        ]
        lines.append(Series("executed", list(range(len(executed))), executed[:, d].tolist(), "#111"))
        charts.append(
            line_chart(
                lines,
                title=f"action dim {d}",
                x_label="env step",
                width=370,
                height=180,
                x_range=(0, max(record.steps, 1)),
                cursor=True,
            )
        )
    return (
        "<h2>Actions: predicted chunks (dashed) and executed (black)</h2>"
        f'<div class="plots">{"".join(charts)}</div>'
    )


def _latency(record: EpisodeRecord) -> str:
    steps = record.policy_steps
    if not steps:
        return ""
    thinking = [s for s in steps if s.replanned]
    acting = [s for s in steps if not s.replanned]

    def dots(name: str, group: list[PolicyStepRecord], color: str) -> Series:
        latency_ms = [1000.0 * s.timings.get("step", 0.0) for s in group]
        return Series(name, [s.env_step for s in group], latency_ms, color, dots=True)

    chart = line_chart(
        [dots("re-plan", thinking, "#d62728"), dots("reuse", acting, "#1f77b4")],
        title="policy latency per step (ms)",
        x_label="env step",
        width=760,
        height=170,
        x_range=(0, max(record.steps, 1)),
    )
    stages = sorted({key for s in steps for key in s.timings})
    rows = []
    for label, group in (("re-plan steps", thinking), ("plan-reuse steps", acting)):
        if group:
            rows.append(
                [
                    esc(f"{label} ({len(group)})"),
                    *(f"{1000.0 * np.mean([s.timings.get(k, 0.0) for s in group]):.1f}" for k in stages),
                ]
            )
    return f"<h2>Latency</h2>{chart}{table(['mean ms', *stages], rows)}"


def episode_page(record: EpisodeRecord, *, title_link: tuple[str, str] | None = None) -> str:
    """The whole page of ``record``."""
    colors = _rule_colors(record)
    views = plan_views(record)
    body = "".join(
        [
            _header(record, title_link),
            _timeline(record, colors),
            _plans(views, colors),
            _actions(record),
            _latency(record),
        ]
    )
    plans = [{"start": v.start, "end": v.end} for v in views]
    script = f"const EMCOT_PLANS = {json.dumps(plans)};\n" + TIMELINE_SCRIPT.read_text(encoding="utf-8")
    return page(f"emcot episode — {record.task} {record.mode} #{record.episode}", body, script=script)
