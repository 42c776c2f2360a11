"""``emcot serve``: a policy behind openpi's websocket protocol, one session per connection."""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING

from emcot.cli.args import MODES, load_policy, positive_int, seed_number

if TYPE_CHECKING:
    from emcot.runtime.rules import ReplanRule

API_KEY_VARIABLE = "EMCOT_API_KEY"


def port_number(text: str) -> int:
    """A TCP port, 0 (pick a free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got '{text}'") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port lies in 0..65535 (0 picks a free one), got '{text}'")
    return value


def key_target(text: str) -> tuple[str, str]:
    """``KEY=TARGET`` → ``(key, target)``; the target is checked against the policy once it loads."""
    key, sep, target = text.partition("=")
    if not (sep and key and target):
        raise argparse.ArgumentTypeError(
            f"expected KEY=TARGET such as observation/image=images.head, got '{text}'"
        )
    return key, target


def replan_rules(text: str) -> tuple[ReplanRule, ...]:
    """A re-planning spec such as ``requested,instruction_changed,plan_age=8,every_k=4``."""
    from emcot.runtime.rules import parse_rules

    try:
        return parse_rules(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options to ``parser``."""
    parser.add_argument(
        "policy", help="policy folder, or a bundled policy: 'default' (Meta-World), 'synthetic'"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=8000, help="0 picks a free port (printed)")
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Api-Key KEY' from clients (or set {API_KEY_VARIABLE}, which keeps it out of ps)",
    )
    parser.add_argument(
        "--replan",
        type=replan_rules,
        default=None,
        help="re-planning rules, e.g. requested,instruction_changed,plan_age=8,every_k=4,subgoal_reached=0.5",
    )
    parser.add_argument("--mode", default="full", choices=MODES)
    parser.add_argument(
        "--n-action-steps", type=positive_int, default=None, help="rows of each returned chunk"
    )
    parser.add_argument("--seed", type=seed_number, default=None, help="step i of a connection uses seed + i")
    parser.add_argument(
        "--obs-map",
        type=key_target,
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=TARGET",
        help="flat observation keys, e.g. observation/image=images.head observation/state=state",
    )
    parser.add_argument(
        "--max-message-size", type=positive_int, default=16 * 2**20, help="larger frames are dropped (1009)"
    )
    parser.add_argument(
        "--max-queue", type=positive_int, default=8, help="pending requests across clients before 1013 (busy)"
    )
    parser.add_argument("--async-replan", action="store_true", help="think in the background, act meanwhile")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: one less than the cores, at least 1)",
    )


def run_serve(args: argparse.Namespace) -> int:
    """Load the policy, listen, serve until SIGINT/SIGTERM, then shut down gracefully."""
    from emcot.serving import PolicyServer, ServerConfig, SessionConfig

    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_VARIABLE) or None
    config = ServerConfig(
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_message_size=args.max_message_size,
        max_queue=args.max_queue,
        obs_map=tuple(args.obs_map),
    )
    rules = {"replan": args.replan} if args.replan is not None else {}  # else the session's default rules
    session = SessionConfig(
        mode=args.mode,
        n_action_steps=args.n_action_steps,
        seed=args.seed,
        async_replan=args.async_replan,
        **rules,
    )
    import torch

    # The event loop and the clients' I/O need a core of their own: with as many busy torch threads
    # as cores, every reply waited for a descheduled OpenMP thread (bench/runtime_latency.py on 2
    # cores: 60 ms server overhead with 2 threads, 2 ms with 1).
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) - 1))
    logging.basicConfig(level=logging.WARNING, format="emcot serve: %(name)s: %(message)s")
    server = PolicyServer(load_policy(args.policy), config, session, name=args.policy)
    meta = server.metadata

    def announce(url: str) -> None:
        auth = ", API key required" if api_key else ""
        print(
            f"emcot serve: listening on {url} (policy {args.policy}, cameras {','.join(meta['cameras'])}, "
            f"mode {meta['mode']}, action horizon {meta['action_horizon']}{auth})",
            flush=True,
        )

    server.serve_forever(on_ready=announce)
    stats = server.stats
    print(
        f"emcot serve: stopped after {stats.connections} connections, {stats.replies} replies, "
        f"{stats.errors} errors",
        flush=True,
    )
    return 0
