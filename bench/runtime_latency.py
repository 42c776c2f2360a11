"""Control-loop latency (prints numbers, asserts nothing).

In one run, for the bundled tiny policy and a mid-size random-weight policy:
- per-step median of a full (planning) step, a reuse step (kept plan, actions only) and a
  reactive step, and the ratio reuse / full;
- the same full trace recomputed without caches vs with: every backbone pass the cached trace
  makes is re-run over the whole sequence up to its last token (same layout and mask, as a
  cache-less implementation must), timed against the cached trace;
- in-process ``PolicySession.infer`` vs the same through ``emcot serve`` (openpi-client), and
  server throughput with 1, 2 and 4 concurrent clients (tiny policy).

python bench/runtime_latency.py [--repeats 15] [--threads 2] [--skip-server]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import threading
import time

import torch

from emcot.experts.config import EXPERT_NAMES, ExpertConfig
from emcot.policy.policy import EmCoTPolicy
from emcot.runtime import EveryK, PolicySession
from emcot.sequence.plan import SequencePlan
from emcot.serving import PolicyServer, ServerConfig, SessionConfig
from emcot.synthetic.world import build_synthetic_policy, synthetic_samples


def mid_size_policy() -> EmCoTPolicy:
    """Random weights, 6 layers × 384 wide per expert (~40 M parameters), 48 reasoning tokens."""
    expert = ExpertConfig(
        hidden_size=384, num_layers=6, num_heads=6, num_kv_heads=2, intermediate_size=1024, qk_norm=True
    )
    policy = build_synthetic_policy(synthetic_samples(16), experts={name: expert for name in EXPERT_NAMES})
    policy.generation = policy.generation.replace(max_reasoning_tokens=48)
    return policy


def median_ms(times: list[float]) -> float:
    return 1000.0 * statistics.median(times)


def step_latencies(policy: EmCoTPolicy, repeats: int) -> dict[str, float]:
    """Median ms of a planning step, a reuse step and a reactive step."""
    samples = synthetic_samples(repeats + 1, seed=5)
    full, reuse, reactive = [], [], []
    for mode, out in (("full", None), ("reactive", reactive)):
        session = PolicySession(policy, [EveryK(2)], mode=mode, seed=0)
        session.reset(samples[0].instruction)
        session.step(samples[0].observation)  # warm-up
        for sample in samples[1:]:
            for _ in range(2):
                started = time.perf_counter()
                result = session.step(sample.observation)
                elapsed = time.perf_counter() - started
                if out is not None:
                    out.append(elapsed)
                else:
                    (full if result.replanned else reuse).append(elapsed)
    return {"full": median_ms(full), "reuse": median_ms(reuse), "reactive": median_ms(reactive)}


def truncated(plan: SequencePlan, end: int) -> SequencePlan:
    """The first ``end`` tokens of ``plan``."""
    segments, total = [], 0
    for segment in plan.segments:
        if total >= end:
            break
        take = min(segment.length, end - total)
        segments.append(segment if take == segment.length else dataclasses.replace(segment, length=take))
        total += take
    return SequencePlan(segments)


@torch.no_grad()
def cache_speedup(policy: EmCoTPolicy, repeats: int) -> tuple[float, float, int]:
    """Median ms of a full trace with caches, the same passes without caches, and the pass count."""
    sample = synthetic_samples(1, seed=8)[0]
    passes: list[tuple[int, int, int]] = []

    def record(_module, args, kwargs):
        hidden, query = args[0], args[1] if len(args) > 1 else kwargs["query"]
        passes.append((hidden.shape[0], query.query_start, hidden.shape[1]))

    handle = policy.model.backbone.register_forward_pre_hook(record, with_kwargs=True)
    trace = policy.generate_trace(sample.observation, sample.instruction, mode="full", seed=0)
    handle.remove()
    layout = trace.layout
    assert layout is not None
    cached = []
    for i in range(repeats):
        started = time.perf_counter()
        policy.generate_trace(sample.observation, sample.instruction, mode="full", seed=i)
        cached.append(time.perf_counter() - started)
    width = policy.model.config.experts["und"].hidden_size
    model = policy.model
    uncached = []
    for _ in range(max(3, repeats // 5)):
        started = time.perf_counter()
        for batch, start, length in passes:
            end = min(start + length, len(layout))
            embeds = torch.randn(batch, end, width, dtype=model.dtype, device=model.device)
            model.run_plan(embeds, truncated(layout, end))
        uncached.append(time.perf_counter() - started)
    return median_ms(cached), median_ms(uncached), len(passes)


def report_policy(name: str, policy: EmCoTPolicy, repeats: int) -> None:
    params = sum(p.numel() for p in policy.model.parameters()) / 1e6
    steps = step_latencies(policy, repeats)
    print(
        f"{name} ({params:.1f} M params): full {steps['full']:.1f} ms, reuse {steps['reuse']:.1f} ms, "
        f"reactive {steps['reactive']:.1f} ms per step (median); reuse/full = {steps['reuse'] / steps['full']:.3f}"
    )
    with_cache, without, passes = cache_speedup(policy, repeats)
    print(
        f"{name}: full trace with caches {with_cache:.1f} ms, its {passes} backbone passes without caches "
        f"{without:.1f} ms ({without / with_cache:.1f}x)"
    )


def obs_dicts(n: int) -> list[dict]:
    """Observation dicts of the synthetic world in the server's default form."""
    return [
        {"images": dict(s.observation.images), "state": s.observation.state, "prompt": s.instruction}
        for s in synthetic_samples(n, seed=21)
    ]


def client_loop(url: str, observations: list[dict], times: list[float]) -> None:
    """One openpi client: connect, then one ``infer`` per observation, timing each."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    client = WebsocketClientPolicy(url)
    for obs in observations:
        started = time.perf_counter()
        client.infer(obs)
        times.append(time.perf_counter() - started)


def report_server(repeats: int, threads: int) -> None:
    """In-process ``infer`` vs the same through the server, and throughput with 1, 2, 4 clients,
    with ``threads`` torch threads."""
    try:
        import openpi_client  # noqa: F401
    except ImportError:
        print("server: skipped (pip install --no-deps openpi-client==0.1.2)")
        return
    torch.set_num_threads(threads)
    policy = EmCoTPolicy.synthetic()
    session_config = SessionConfig(replan=(EveryK(4),), seed=0)
    observations = obs_dicts(repeats)
    local = session_config.open(policy)
    local.infer(observations[0])
    in_process = []
    for obs in observations:
        started = time.perf_counter()
        local.infer(obs)
        in_process.append(time.perf_counter() - started)
    with PolicyServer(policy, ServerConfig(port=0), session_config).start_in_thread() as server:
        assert server.url is not None
        client_loop(server.url, observations[:1], [])  # warm-up connection
        served: list[float] = []
        client_loop(server.url, observations, served)
        print(
            f"tiny, every_k=4, {threads} torch thread(s): in-process infer {median_ms(in_process):.1f} ms, through emcot serve "
            f"{median_ms(served):.1f} ms (median); server overhead {median_ms(served) - median_ms(in_process):.1f} ms"
        )
        for clients in (1, 2, 4):
            times: list[list[float]] = [[] for _ in range(clients)]
            workers = [
                threading.Thread(target=client_loop, args=(server.url, observations, times[i]))
                for i in range(clients)
            ]
            started = time.perf_counter()
            for thread in workers:
                thread.start()
            for thread in workers:
                thread.join()
            wall = time.perf_counter() - started
            replies = sum(len(t) for t in times)
            latency = median_ms([x for t in times for x in t])
            print(
                f"  {clients} concurrent client(s): {replies / wall:.1f} replies/s in total, "
                f"median latency {latency:.1f} ms per reply"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-server", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report_policy("tiny (bundled)", EmCoTPolicy.synthetic(), args.repeats)
    report_policy("mid-size (random)", mid_size_policy(), args.repeats)
    if not args.skip_server:
        for threads in sorted({1, args.threads}):
            report_server(4 * args.repeats, threads)


if __name__ == "__main__":
    main()
