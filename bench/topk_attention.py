"""Speed and memory of Top-K sparse attention against full attention at long histories (#16).

Each configuration runs in a fresh process so its peak resident memory (``ru_maxrss``) is its own;
the printed memory is the peak minus the process's size after building the inputs. Paths: ``sdpa``
(torch's fused attention), ``full`` (emcot.memory.full_attention, the dense reference),
``topk-train`` (straight-through, forward + backward) and ``topk-gather`` (evaluation).

    python bench/topk_attention.py [--history 1024,4096,16384,65536] [--queries 64] [--top-k 64]
    python bench/topk_attention.py --history 52 --context 1048 --queries 1100 --top-k 8   # a cue-task pack
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

PATHS = ("sdpa", "full", "topk-gather", "topk-train")


def measure(
    path: str, history: int, queries: int, top_k: int, *, repeats: int, context: int = 0
) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from emcot.memory import full_attention, topk_attention

    torch.manual_seed(0)
    heads, dim = 12, 64
    q = torch.randn(1, heads, queries, dim, requires_grad=path == "topk-train")
    k, v = (torch.randn(1, heads, history + context, dim) for _ in range(2))
    # history keys compete for the top_k places; the context keys (the current step) are always kept
    candidates = (torch.arange(history + context) < history) if context else None
    calls = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
        "full": lambda: full_attention(q, k, v),
        "topk-gather": lambda: topk_attention(q, k, v, top_k, training=False, candidates=candidates),
        "topk-train": lambda: (
            topk_attention(q, k, v, top_k, training=True, candidates=candidates).sum().backward()
        ),
    }
    run = calls[path]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.inference_mode(path != "topk-train"):
        run()  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            run()
        seconds = (time.perf_counter() - started) / repeats
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"ms": 1000.0 * seconds, "extra_mib": (peak - before) / 1024.0}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--history", default="1024,4096,16384,65536")
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--context", type=int, default=0, help="always-attended keys besides the history (the current step's)"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # path:history, run inside a child process
    args = parser.parse_args()
    if args.one:
        path, history = args.one.split(":")
        print(
            json.dumps(
                measure(
                    path, int(history), args.queries, args.top_k, repeats=args.repeats, context=args.context
                )
            )
        )
        return
    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; 12 heads × 64, "
        f"{args.queries} queries, {args.context} context keys, top_k {args.top_k}; ms per call, extra peak MiB"
    )
    print("| history | " + " | ".join(f"{p} ms | {p} MiB" for p in PATHS) + " |")
    print("|---" * (1 + 2 * len(PATHS)) + "|")
    for history in (int(h) for h in args.history.split(",")):
        cells = []
        for path in PATHS:
            command = [
                sys.executable,
                __file__,
                "--one",
                f"{path}:{history}",
                "--queries",
                str(args.queries),
                "--top-k",
                str(args.top_k),
                "--repeats",
                str(args.repeats),
                "--context",
                str(args.context),
            ]
            result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
            cells += [f"{result['ms']:.1f}", f"{result['extra_mib']:.0f}"]
        print(f"| {history} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
