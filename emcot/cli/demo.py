"""``emcot demo``: the bundled policy in action.

With the Meta-World policy (``default``) and the ``[sim]`` extra installed, one closed-loop episode
of a task it was trained on; without the simulator, one trace on the real Meta-World observation
shipped in the policy folder. The ``synthetic`` policy shows a trace on a scene of its pushing task.
"""

from __future__ import annotations

import argparse
import importlib.util

from emcot.cli.args import (
    MODES,
    add_policy_argument,
    load_policy,
    output_folder,
    positive_int,
    print_trace,
    save_image,
    seed_number,
)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` options to ``parser``."""
    parser.add_argument(
        "--out",
        type=output_folder,
        default="emcot-demo",
        help="folder for reasoning.txt, subgoal.png, observation.png (and an episode in the simulator)",
    )
    add_policy_argument(parser)
    parser.add_argument(
        "--seed", type=seed_number, default=1000, help="scene and sampling seed (evaluation seeds: 1000+)"
    )
    parser.add_argument("--mode", default="full", choices=MODES)
    parser.add_argument("--task", help="simulator task (default: the first of the policy card's tasks)")
    parser.add_argument(
        "--max-steps", type=positive_int, help="episode step cap (default: the card's protocol)"
    )
    parser.add_argument(
        "--no-sim", action="store_true", help="one trace on the shipped observation, even with [sim]"
    )


def _trace_on_shipped_observation(policy, args: argparse.Namespace) -> int:
    from PIL import Image

    from emcot.eval.viewer import build_view

    example = policy.example()
    if example is None:
        from emcot.synthetic.world import synthetic_samples

        sample = synthetic_samples(1, seed=args.seed)[0]
        example = sample.observation, sample.instruction
    observation, instruction = example
    print(f"instruction: {instruction}")
    trace = policy.generate_trace(observation, instruction, mode=args.mode, seed=args.seed)
    print_trace(trace, args.out, observation)
    save_image(Image.fromarray(observation.images[policy.cameras[0]]), args.out / "observation.png")
    print(f"view it     : {build_view(args.out, args.out / 'trace.html', progress=False).resolve()}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo the policy and the installed extras allow, and save its outputs."""
    policy = load_policy(args.policy)
    card = policy.card
    simulate = (
        not args.no_sim
        and card is not None
        and card.benchmark == "metaworld"
        and importlib.util.find_spec("metaworld") is not None
    )
    if not simulate:
        return _trace_on_shipped_observation(policy, args)
    from emcot.eval.demo import run_demo_episode, save_demo
    from emcot.eval.envs.mujoco_gl import configure_gl
    from emcot.eval.viewer import build_view

    assert card is not None
    configure_gl()
    task = args.task or card.tasks[0]
    demo = run_demo_episode(policy, task, seed=args.seed, mode=args.mode, max_steps=args.max_steps)
    record = demo.record
    print(f"task: {record.task} — {record.instruction} (seed {record.seed})")
    if record.plans:
        print(f"first reasoning: {record.plans[0].reasoning}")
    outcome = (
        f"success at step {record.first_success}" if record.success else f"no success in {record.steps} steps"
    )
    print(
        f"{outcome}; {len(record.policy_steps)} policy steps, {len(record.plans)} plans, {record.wall_s:.1f} s"
    )
    for path in save_demo(demo, args.out):
        print(f"wrote {path}")
    print(f"wrote {args.out / 'episode'} (the whole episode: every policy step, plan and timing)")
    page = build_view(args.out / "episode", args.out / "episode.html", progress=False)
    print(f"view it: {page.resolve()}")
    return 0
