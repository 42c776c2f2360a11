"""The closed-loop study of issue #14: an EM-CoT policy against its reactive baseline on Meta-World.

Every variant is one resumable ``emcot eval`` folder under ``--out`` (rerun the script to continue
after an interruption); when all exist, ``emcot compare`` puts them side by side in
``OUT/table.md``. Variants: the EM-CoT policy in ``full`` mode re-planning every chunk, every
``--every-k`` chunks, on subgoal reached (``--subgoal-threshold``, capped at k chunks) and
asynchronously every k chunks; in ``reason`` mode every k chunks and every chunk; in ``reactive``
mode; the reactive baseline (``--reactive``); the scripted expert; random actions. Tasks default to the
EM-CoT policy's card; ``--episodes`` may differ between variants (run them with ``--only``).

    python bench/metaworld_study.py --emcot runs/mw-stage2-small/final-ema \\
        --reactive runs/mw-reactive-small/final-ema --subgoal-threshold 1.2 --out runs/mw-study \
        [--only full-every-4,reactive-baseline] [--episodes 10] [--workers 2]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from emcot.eval.agents import AgentSpec, policy_card
from emcot.eval.compare import RunSpec, compare_markdown, load_run
from emcot.eval.envs.metaworld_tasks import expand_tasks
from emcot.eval.envs.mujoco_gl import configure_gl
from emcot.eval.evaluate import EvalConfig, evaluate


@dataclass(frozen=True)
class Variant:
    """One column of the study: a label and the agent it evaluates."""

    label: str
    agent: AgentSpec


def variants(args: argparse.Namespace) -> list[Variant]:
    """Every variant the given policies and threshold allow, in table order."""
    emcot, k = args.emcot, args.every_k
    chosen = [
        Variant("full-every-chunk", AgentSpec(emcot, ("full",), replan="every_k=1")),
        Variant(f"full-every-{k}", AgentSpec(emcot, ("full",), replan=f"plan_age={k}")),
    ]
    if args.subgoal_threshold is not None:
        reached = f"subgoal_reached={args.subgoal_threshold},plan_age={k}"
        chosen.append(Variant("full-subgoal-reached", AgentSpec(emcot, ("full",), replan=reached)))
    chosen += [
        Variant(
            f"full-async-every-{k}", AgentSpec(emcot, ("full",), replan=f"plan_age={k}", async_replan=True)
        ),
        Variant(f"reason-every-{k}", AgentSpec(emcot, ("reason",), replan=f"plan_age={k}")),
        Variant("reason-every-chunk", AgentSpec(emcot, ("reason",), replan="every_k=1")),
        Variant("reactive-mode", AgentSpec(emcot, ("reactive",), replan="every_k=1")),
    ]
    if args.reactive is not None:
        chosen.append(
            Variant("reactive-baseline", AgentSpec(args.reactive, ("reactive",), replan="every_k=1"))
        )
    return [*chosen, Variant("expert", AgentSpec("expert")), Variant("random", AgentSpec("random"))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--emcot", required=True, help="the EM-CoT policy (folder or bundled name)")
    parser.add_argument("--reactive", help="the reactive baseline policy (its variant is skipped without)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tasks", help="default: the EM-CoT policy card's tasks")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--every-k", type=int, default=4, help="plan age (chunks) of the every-k variant")
    parser.add_argument(
        "--subgoal-threshold",
        type=float,
        help="calibrated SubgoalReached value (its variant is skipped without)",
    )
    parser.add_argument("--only", help="comma-separated variant labels to run (default: all)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    configure_gl()
    card = policy_card(args.emcot)
    tasks = args.tasks or (",".join(card.tasks) if card is not None else None)
    if tasks is None:
        parser.error("--tasks is needed: the EM-CoT policy has no card")
    chosen = variants(args)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {v.label for v in chosen}
        if unknown:
            parser.error(
                f"unknown or unavailable variants {sorted(unknown)}; available: {[v.label for v in chosen]}"
            )
        chosen = [v for v in chosen if v.label in wanted]
    for variant in chosen:
        config = EvalConfig(
            tasks=tuple(expand_tasks(tasks)),
            agent=variant.agent,
            episodes=args.episodes,
            workers=args.workers,
        )
        start = time.perf_counter()
        outcome = evaluate(config, args.out / variant.label, progress=True)
        mean = outcome.metrics.episode_mean if outcome.metrics is not None else {}
        rates = ", ".join(f"{mode} {100 * cell.success_rate:.1f} %" for mode, cell in mean.items())
        print(
            f"{variant.label}: {rates} ({outcome.ran} new episodes, {time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    done = [v for v in variants(args) if (args.out / v.label / "results.json").is_file()]
    table = compare_markdown([load_run(RunSpec(args.out / v.label, v.label)) for v in done])
    (args.out / "table.md").write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
