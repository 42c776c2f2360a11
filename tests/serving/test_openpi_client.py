"""The real openpi-client against ``emcot serve`` started as a subprocess: metadata, a 20-step loop
through ActionChunkBroker, reset, concurrent clients, the API key, /healthz and SIGTERM."""

from __future__ import annotations

import math
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import emcot
from emcot.runtime.rules import parse_rules

pytest.importorskip(
    "openpi_client", reason="openpi-client is not installed (pip install --no-deps openpi-client)"
)
from openpi_client.action_chunk_broker import ActionChunkBroker  # noqa: E402
from openpi_client.websocket_client_policy import WebsocketClientPolicy  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

# openpi-client opens its connection without a context manager, which websockets ≥ 16 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")

KEY = "test-key-0123"
N_ACTION_STEPS = 5
REPLAN = "requested,instruction_changed,every_k=2"
OBS_MAP = ["observation/image=images.head", "observation/state=state"]
SESSION = {"n_action_steps": N_ACTION_STEPS, "replan": parse_rules(REPLAN)}  # the in-process twin


@dataclass
class Served:
    process: subprocess.Popen
    port: int
    lines: queue.Queue
    stderr: Path

    def client(self, api_key: str | None = KEY) -> WebsocketClientPolicy:
        return WebsocketClientPolicy(host="127.0.0.1", port=self.port, api_key=api_key)


def launch(folder: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, queue.Queue, Path]:
    """Start ``emcot serve default --port 0 ...`` in a subprocess (without waiting for it)."""
    stderr = folder / "stderr.txt"
    process = subprocess.Popen(
        [sys.executable, "-m", "emcot.cli.main", "serve", "synthetic", "--port", "0", *args],
        cwd=folder,  # not the repository root, whose folders would shadow the installed package
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},  # 2 cores: the test process has the other
        stdout=subprocess.PIPE,
        stderr=stderr.open("w"),
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    assert process.stdout is not None
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    return process, lines, stderr


def ready(process: subprocess.Popen, lines: queue.Queue, stderr: Path) -> Served:
    """Wait for the line announcing the address; the server is listening then."""
    try:
        line = lines.get(timeout=120)
    except queue.Empty:
        process.kill()
        raise AssertionError(f"emcot serve did not start: {stderr.read_text()}") from None
    assert line.startswith("emcot serve: listening on ws://127.0.0.1:"), line + stderr.read_text()
    port = int(line.split("ws://127.0.0.1:")[1].split()[0])
    return Served(process, port, lines, stderr)


def stop_server(served: Served) -> int:
    if served.process.poll() is None:
        served.process.send_signal(signal.SIGTERM)
    try:
        return served.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        served.process.kill()
        raise


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[tuple[Served, Served]]:
    """The server most tests share (API key from the environment), and a plain one for the SIGTERM
    test; both start at once, so their start-up times overlap."""
    args = ["--seed", "0", "--n-action-steps", str(N_ACTION_STEPS), "--replan", REPLAN, "--obs-map", *OBS_MAP]
    shared = launch(tmp_path_factory.mktemp("serve"), *args, env={"EMCOT_API_KEY": KEY})
    spare = launch(tmp_path_factory.mktemp("spare"))
    running = ready(*shared), ready(*spare)
    yield running
    for served in running:
        stop_server(served)


@pytest.fixture(scope="module")
def served(servers) -> Served:
    return servers[0]


def libero(request: dict) -> dict:
    """The default-form request in LIBERO's flat keys."""
    return {
        "observation/image": request["images"]["head"],
        "observation/state": request["state"],
        "prompt": request["prompt"],
    }


def test_metadata(served, policy):
    meta = served.client().get_server_metadata()
    action = policy.config.action
    assert meta["emcot_version"] == emcot.__version__ and meta["protocol"] == "openpi-websocket/msgpack-numpy"
    assert meta["cameras"] == ["head"] and meta["state_dim"] == action.state_dim
    assert meta["action_dim"] == action.action_dim and meta["chunk_length"] == action.horizon
    assert meta["action_horizon"] == N_ACTION_STEPS and meta["mode"] == "full" and meta["seed"] == 0
    assert meta["key_map"] == {"observation/image": "images.head", "observation/state": "state"}
    assert meta["observation_keys"] == ["images", "state", "prompt", "reset"]
    assert meta["replan"] == [
        {"name": "requested"},
        {"name": "instruction_changed"},
        {"name": "every_k", "k": 2},
    ]
    assert meta["image_size"] == {"min_side_px": 16, "max_side_px": 128}


def test_a_20_step_loop_through_the_action_chunk_broker(served, request_dict, reference):
    client = served.client()
    broker = ActionChunkBroker(client, action_horizon=client.get_server_metadata()["action_horizon"])
    steps = 20
    results = [broker.infer(libero(request_dict(seed=t))) for t in range(steps)]
    calls = sorted({r["server_step"] for r in results})
    assert calls == list(range(math.ceil(steps / N_ACTION_STEPS)))  # one server call per chunk
    # The server saw the observations of steps 0, 5, 10, 15: an in-process session gives the same chunks.
    expected = reference([request_dict(seed=t) for t in range(0, steps, N_ACTION_STEPS)], **SESSION)
    for t, result in enumerate(results):
        assert result["actions"].shape == (4,) and np.isfinite(result["actions"]).all()
        assert result["server_step"] == t // N_ACTION_STEPS
        want = expected[t // N_ACTION_STEPS]["actions"][t % N_ACTION_STEPS]
        np.testing.assert_allclose(result["actions"], want, rtol=1e-5, atol=1e-6)
        assert result["reasoning"] == expected[t // N_ACTION_STEPS]["reasoning"]
        assert result["replanned"] == (t // N_ACTION_STEPS % 2 == 0)  # every_k=2 (--replan)


def test_reset(served, request_dict, reference):
    client = served.client()
    broker = ActionChunkBroker(client, action_horizon=N_ACTION_STEPS)
    first = broker.infer(libero(request_dict(0)))
    broker.infer(libero(request_dict(1)))
    broker.reset()  # openpi sends nothing: the next step asks the server anew, same episode
    same_episode = broker.infer(libero(request_dict(2)))
    assert same_episode["server_step"] == 1 and not same_episode["replanned"]
    broker.reset()
    new_episode = broker.infer({**libero(request_dict(0)), "reset": True})  # "reset" starts an episode
    assert new_episode["server_step"] == 2 and new_episode["replanned"]
    # A new episode starts again at seed + 0: the first chunk comes back.
    np.testing.assert_allclose(new_episode["actions"], first["actions"], rtol=1e-5, atol=1e-6)
    want = reference([request_dict(0), request_dict(2)], **SESSION)
    np.testing.assert_allclose(same_episode["actions"], want[1]["actions"][0], rtol=1e-5, atol=1e-6)


def test_two_concurrent_clients_are_both_served(served, request_dict, reference):
    requests = [request_dict(seed) for seed in (3, 4, 5)]
    expected = reference(requests, **SESSION)
    replies: dict[int, list] = {}
    failures: list[BaseException] = []

    def run(index: int) -> None:
        try:
            client = served.client()
            replies[index] = [client.infer(libero(r)) for r in requests]
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures and set(replies) == {0, 1}
    for index in (0, 1):  # each connection has its own session: both equal a fresh in-process one
        for reply, want in zip(replies[index], expected):
            assert reply["actions"].shape == (N_ACTION_STEPS, 4)
            np.testing.assert_allclose(reply["actions"], want["actions"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("api_key", [None, "wrong"])
def test_a_missing_or_wrong_api_key_is_refused_with_401(served, api_key):
    with pytest.raises(InvalidStatus) as refused:
        served.client(api_key=api_key)
    assert refused.value.response.status_code == 401


def test_errors_reach_the_client_as_runtime_errors(served, request_dict):
    client = served.client()
    with pytest.raises(RuntimeError, match="emcot serve: observation key 'state' missing"):
        client.infer({"observation/image": request_dict()["images"]["head"], "prompt": "go"})
    served.client().infer(libero(request_dict()))  # and the server goes on


def test_healthz(served):
    with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/healthz", timeout=10) as response:
        assert response.status == 200 and response.read() == b"OK\n"


def test_sigterm_closes_clients_and_exits_cleanly(servers, request_dict):
    running = servers[1]
    client = running.client(api_key=None)
    assert client.infer(request_dict())["actions"].shape == (8, 4)
    assert stop_server(running) == 0, running.stderr.read_text()
    final = running.lines.get(timeout=10).strip()
    assert final == "emcot serve: stopped after 1 connections, 1 replies, 0 errors"
    with pytest.raises(ConnectionClosed) as closed:
        client.infer(request_dict())
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
