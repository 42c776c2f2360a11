"""``emcot eval metaworld|synthetic-cue``: closed-loop evaluation of a policy, the scripted expert
or random actions on Meta-World or on the memory-dependent cue task; parallel over processes,
resumable, with per-task and per-bucket tables."""

from __future__ import annotations

import argparse
import json

from emcot.cli.args import MODES, output_folder, positive_int, seed_number


def _camera_map(text: str) -> dict[str, str]:
    from emcot.eval.adapters import parse_camera_map

    try:
        return parse_camera_map(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [mode for mode in modes if mode not in MODES]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(
            f"modes are a comma-separated subset of {', '.join(MODES)}; got '{text}'"
        )
    return modes


def _non_negative_int(text: str) -> int:
    if text == "0":
        return 0
    return positive_int(text)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``eval`` arguments to ``parser``."""
    from emcot.eval.envs.benchmarks import BENCHMARKS

    parser.add_argument("benchmark", choices=sorted(BENCHMARKS), help="the benchmark to run")
    parser.add_argument(
        "--policy",
        default="default",
        help="policy folder, a bundled policy ('default', 'synthetic'), 'expert' or 'random'",
    )
    parser.add_argument(
        "--tasks",
        help="Meta-World: easy|medium|hard|very_hard|mt10|mt50 or task,task,... (default: the tasks the "
        "policy's card lists, else the benchmark's: easy, synthetic-cue)",
    )
    parser.add_argument("--episodes", type=positive_int, default=10, help="episodes per task and mode")
    parser.add_argument("--seed", type=seed_number, default=1000, help="episode i uses seed SEED + i")
    parser.add_argument(
        "--modes", type=_modes, default=("full",), help="trace modes, e.g. full,reason,reactive"
    )
    parser.add_argument("--replan", help="re-planning rules, e.g. 'requested,instruction_changed,plan_age=8'")
    parser.add_argument("--n-action-steps", type=positive_int, help="actions executed per policy step")
    parser.add_argument(
        "--async-replan",
        action="store_true",
        help="think in a background thread while acting on the last plan",
    )
    parser.add_argument(
        "--camera-map", type=_camera_map, help="ENV_CAMERA=POLICY_CAMERA,... e.g. corner2=head"
    )
    parser.add_argument("--image-size", type=positive_int, help="side the policy's images are resized to")
    parser.add_argument(
        "--resolution", type=positive_int, help="rendered frame side in px (default 128; synthetic-cue 32)"
    )
    parser.add_argument(
        "--max-steps", type=positive_int, help="env steps per episode (default 500; synthetic-cue 48)"
    )
    parser.add_argument("--workers", type=positive_int, default=1, help="episodes run in parallel processes")
    parser.add_argument(
        "--frame-every", type=_non_negative_int, default=20, help="keep every k-th frame (0: none)"
    )
    parser.add_argument("--render", action="store_true", help="render corner2 for expert/random (frames)")
    parser.add_argument(
        "--no-fast-render", action="store_true", help="keep shadows, anti-aliasing, reflections"
    )
    parser.add_argument("--out", type=output_folder, required=True, help="results folder (re-runs resume)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--no-view", action="store_true", help="skip writing the HTML pages (OUT/view.html, one per episode)"
    )


def run_eval(args: argparse.Namespace) -> int:
    """Run (or resume) the evaluation, print the tables; 0 when every episode is done."""
    from emcot.eval.agents import AgentSpec, policy_card
    from emcot.eval.envs.benchmarks import benchmark
    from emcot.eval.evaluate import RESULTS_FILE, EvalConfig, evaluate
    from emcot.eval.tables import results_table

    agent = AgentSpec(
        policy=args.policy,
        modes=args.modes,
        replan=args.replan,
        n_action_steps=args.n_action_steps,
        camera_map=None if args.camera_map is None else tuple(args.camera_map.items()),
        image_size=args.image_size,
        async_replan=args.async_replan,
    )
    bench = benchmark(args.benchmark)
    tasks = args.tasks
    if tasks is None:
        card = policy_card(args.policy)
        own = card.tasks if card is not None and card.benchmark == args.benchmark else ()
        tasks = ",".join(own) if own else bench.default_tasks
    config = EvalConfig(
        benchmark=args.benchmark,
        tasks=tuple(bench.expand_tasks(tasks)),
        agent=agent,
        episodes=args.episodes,
        seed=args.seed,
        resolution=args.resolution or bench.default_resolution,
        max_steps=args.max_steps or bench.default_max_steps,
        workers=args.workers,
        frame_every=args.frame_every,
        render=args.render,
        fast_render=not args.no_fast_render,
    )
    try:
        bench.require()  # a missing simulator is one line naming the extra, not a traceback
    except ImportError as err:
        raise ValueError(str(err)) from None
    outcome = evaluate(config, args.out, progress=not args.no_progress)
    if outcome.metrics is None:
        print(f"stopped with {outcome.ran + outcome.skipped} episodes done; run again to resume")
        return 1
    print(results_table(outcome.metrics))
    print(f"episodes: {outcome.ran} run now, {outcome.skipped} resumed; results: {args.out / RESULTS_FILE}")
    print(
        "protocol: "
        + json.dumps({k: outcome.protocol[k] for k in ("policy", "seed", "resolution", "max_steps")})
    )
    if not args.no_view:
        from emcot.eval.viewer import build_view

        page = build_view(args.out, args.out / "view.html", progress=not args.no_progress)
        print(f"view it: {page.resolve()}")
    return 0
