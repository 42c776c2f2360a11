"""The policy server in-process: replies equal in-process sessions; every bad input gets a clear
error (or is dropped) while other clients keep being served; busy, disconnects, slow clients, shutdown."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from emcot.serving import PolicyServer, ServerConfig, SessionConfig, packb, unpackb
from emcot.serving.metadata import PROTOCOL


def still_serving(server, ask, first_reply, matches):
    """Another client is served, and its reply is the one an in-process session gives."""
    matches(ask(server.url), first_reply)


def test_metadata_frame_comes_first(server, client, policy):
    with client(server.url) as (_, meta):
        pass
    assert meta["protocol"] == PROTOCOL and meta["server"] == "emcot" and meta["policy"] == "default"
    assert meta["cameras"] == policy.cameras and meta["state_dim"] == policy.config.action.state_dim
    assert meta["action_dim"] == policy.config.action.action_dim
    assert meta["action_horizon"] == meta["chunk_length"] == policy.config.action.horizon
    assert meta["mode"] == "full" and meta["seed"] == 0
    assert meta["replan"] == [
        {"name": "requested"},
        {"name": "instruction_changed"},
        {"name": "plan_age", "max_steps": 8},
    ]
    assert meta["key_map"] == {"observation/image": "images.head", "observation/state": "state"}
    assert meta == server.metadata


def test_replies_equal_an_in_process_session_with_the_same_seed(
    server, client, request_dict, reference, matches
):
    requests = [request_dict(0), request_dict(1, prompt=None), request_dict(2, prompt=None)]
    expected = reference(requests)
    with client(server.url) as (ws, _):
        replies = []
        for request in requests:
            ws.send(packb(request))
            replies.append(unpackb(ws.recv(timeout=30)))
    for step, (reply, want) in enumerate(zip(replies, expected)):
        matches(reply, want)
        assert reply["server_step"] == step
        assert ("prev_total_ms" in reply["server_timing"]) == (step > 0)  # like openpi: none before the first
    assert [r["replanned"] for r in replies] == [True, False, False]


def test_flat_keys_and_channel_first_images_give_the_same_reply(
    server, ask, request_dict, reference, matches
):
    request = request_dict()
    flat = {
        "observation/image": request["images"]["head"].transpose(2, 0, 1),
        "observation/state": request["state"].astype(np.float64),
        "prompt": request["prompt"],
    }
    matches(ask(server.url, **flat), reference([request])[0])


def test_healthz_answers_without_upgrading(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as response:
        assert response.status == 200 and response.read() == b"OK\n"


def _array_map(dtype: str, data: bytes, shape: list[int]) -> dict:
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}


def _without(request: dict, key: str) -> dict:
    return {k: v for k, v in request.items() if k != key}


def bad_requests(good: dict) -> dict[str, tuple[bytes | str, str]]:
    """Each bad request (built from a good one) and a pattern its error text must contain."""
    head = good["images"]["head"]
    return {
        "malformed msgpack": (b"\xc1\x00\x01", "malformed msgpack"),
        "truncated frame": (packb(good)[:-10], "malformed msgpack"),
        "truncated array buffer": (
            packb({**good, "state": _array_map("<f4", b"\x00" * 15, [4])}),
            "needs 16 bytes, the buffer has 15",
        ),
        "object dtype": (packb({**good, "state": _array_map("|O", b"", [0])}), "dtype '|O' is refused"),
        "text frame": ("hello", "expected a binary msgpack frame, got a text frame"),
        "not a map": (packb([1, 2, 3]), "an observation must be a map"),
        "missing images": (packb(_without(good, "images")), "observation key 'images'"),
        "missing state": (packb(_without(good, "state")), "observation key 'state' missing"),
        "extra key": (
            packb({**good, "velocity": np.zeros(3)}),
            r"unexpected observation key\(s\) \['velocity'\]",
        ),
        "unknown camera": (packb({**good, "images": {"head": head, "top": head}}), "unknown camera 'top'"),
        "float image": (packb({**good, "images": {"head": head / 255.0}}), "must have dtype uint8"),
        "wrong image shape": (
            packb({**good, "images": {"head": np.zeros((8, 8, 4), np.uint8)}}),
            r"got \(8, 8, 4\)",
        ),
        "wrong state shape": (packb({**good, "state": np.zeros(5, np.float32)}), r"shape \(4,\), got \(5,\)"),
        "NaN state": (packb({**good, "state": np.full(4, np.nan, np.float32)}), "NaN or infinite"),
        "no prompt first": (
            packb(_without(good, "prompt")),
            "first observation of a connection needs 'prompt'",
        ),
        "empty prompt": (packb({**good, "prompt": " "}), "'prompt' must be a non-empty string"),
    }


def expect_error(ws, pattern: str, code: int) -> str:
    """The next frame is an error text matching ``pattern``, then the server closes with ``code``."""
    text = ws.recv(timeout=30)
    assert isinstance(text, str), "expected an error text frame"
    assert re.search(pattern, text), text
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    return text


CASES = list(
    bad_requests({"images": {"head": np.zeros((2, 2, 3), np.uint8)}, "state": np.zeros(4), "prompt": "go"})
)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_a_clear_error_then_1011_and_others_are_served(
    case, server, client, request_dict, ask, first_reply, matches
):
    frame, pattern = bad_requests(request_dict())[case]
    errors = server.stats.errors
    with client(server.url) as (ws, _):
        ws.send(frame)
        text = expect_error(ws, pattern, 1011)
    assert text.startswith("emcot serve: ") and "Traceback" not in text  # the client's mistake, not a bug
    assert server.stats.errors == errors + 1
    still_serving(server, ask, first_reply, matches)


def test_an_error_after_good_requests_ends_only_that_connection(
    server, client, request_dict, ask, first_reply, matches
):
    with client(server.url) as (ws, _):
        ws.send(packb(request_dict()))
        assert isinstance(ws.recv(timeout=30), bytes)
        ws.send(packb({**request_dict(), "state": np.zeros(3)}))
        expect_error(ws, r"shape \(4,\), got \(3,\)", 1011)
    still_serving(server, ask, first_reply, matches)


def test_an_oversized_frame_is_dropped_with_1009(server, client, ask, first_reply, matches):
    big = b"\x00" * (50 * 2**20)
    with client(server.url) as (ws, meta), pytest.raises(ConnectionClosed) as closed:
        assert len(big) > meta["max_message_size"]
        ws.send(big)
        ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    still_serving(server, ask, first_reply, matches)


def test_a_client_that_leaves_mid_inference_breaks_nothing(gated_server, client, request_dict, ask, until):
    srv, gate = gated_server()
    with client(srv.url) as (ws, _):
        ws.send(packb(request_dict()))
        assert gate.started.wait(10)
    until(lambda: srv.stats.dropped == 1)  # the server saw it leave while its inference ran
    gate.release.set()
    assert gate.finished.wait(10)
    reply = ask(srv.url)  # the next client gets the policy, and a first reply of its own
    assert reply["server_step"] == 0 and reply["replanned"]
    assert srv.stats.replies == 1 and srv.stats.errors == 0  # the dropped result was never sent


def test_a_queued_request_of_a_client_that_left_never_runs(gated_server, client, request_dict, until):
    srv, gate = gated_server()
    with client(srv.url) as (first, _):
        first.send(packb(request_dict()))
        assert gate.started.wait(10)
        with client(srv.url) as (second, _):
            second.send(packb(request_dict()))
            until(lambda: srv.stats.connections == 2)
            time.sleep(0.1)  # its request is queued behind the first
        until(lambda: srv.stats.dropped == 1)
        gate.release.set()
        assert isinstance(first.recv(timeout=30), bytes)
    assert gate.calls == 1


def test_a_full_queue_answers_busy_with_1013(gated_server, client, request_dict):
    srv, gate = gated_server(max_queue=1)
    with client(srv.url) as (first, _), client(srv.url) as (second, _):
        first.send(packb(request_dict()))
        assert gate.started.wait(10)
        second.send(packb(request_dict()))
        expect_error(second, r"server busy: 1 requests are waiting .*max_queue 1", 1013)
        gate.release.set()
        reply = unpackb(first.recv(timeout=30))  # the queued client is served as usual
    assert reply["actions"].shape == (8, 4) and srv.stats.busy == 1


def test_inference_runs_off_the_event_loop(gated_server, client, request_dict):
    """While an inference runs, the loop still answers health checks and greets new clients."""
    srv, gate = gated_server()
    with client(srv.url) as (first, _):
        first.send(packb(request_dict()))
        assert gate.started.wait(10)
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz", timeout=5) as response:
            assert response.status == 200
        with client(srv.url) as (_, meta):
            assert meta == srv.metadata
        first.ping().wait(5)  # pings are answered too (openpi#717)
        gate.release.set()
        assert isinstance(first.recv(timeout=30), bytes)


def test_a_slow_client_only_slows_itself(server, client, request_dict, ask, first_reply, matches):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as stalled:
        stalled.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # a handshake that never ends
        with client(server.url) as (idle, _):  # a client that never sends its request
            started = time.monotonic()
            still_serving(server, ask, first_reply, matches)
            assert time.monotonic() - started < 5
            idle.send(packb(request_dict()))  # and it is served in turn when it finally asks
            matches(unpackb(idle.recv(timeout=30)), first_reply)


def test_stop_closes_connections_with_1001_after_the_inference_in_flight(gated_server, client, request_dict):
    srv, gate = gated_server()
    with client(srv.url) as (ws, _):
        ws.send(packb(request_dict()))
        assert gate.started.wait(10)
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert stopper.is_alive()  # shutdown waits for the inference in flight
        gate.release.set()
        stopper.join(30)
    assert not stopper.is_alive() and gate.finished.is_set()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()


def test_configs_are_checked(policy):
    with pytest.raises(ValueError, match="ServerConfig.port must be ≤ 65535"):
        ServerConfig(port=70000)
    with pytest.raises(ValueError, match="ServerConfig.max_queue must be ≥ 1"):
        ServerConfig(max_queue=0)
    with pytest.raises(ValueError, match="api_key must not be empty"):
        ServerConfig(api_key=" ")
    assert "secret" not in repr(ServerConfig(api_key="secret"))
    with pytest.raises(ValueError, match="unknown mode 'fulll'"):
        SessionConfig(mode="fulll")
    with pytest.raises(ValueError, match="n_action_steps must lie in"):
        PolicyServer(policy, ServerConfig(port=0), SessionConfig(n_action_steps=99))
    with pytest.raises(ValueError, match="names no camera of this policy"):
        PolicyServer(policy, ServerConfig(port=0, obs_map=(("observation/image", "images.wrist"),)))


def test_api_key_in_process(policy, request_dict, first_reply, matches):
    from websockets.exceptions import InvalidStatus

    config = ServerConfig(port=0, api_key="s3cret")
    with PolicyServer(policy, config, SessionConfig(seed=0)).start_in_thread() as srv:
        for headers in (None, {"Authorization": "Api-Key wrong"}, {"Authorization": "s3cret"}):
            with pytest.raises(InvalidStatus) as refused:
                connect(srv.url, additional_headers=headers, open_timeout=10)
            assert refused.value.response.status_code == 401
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz", timeout=5) as response:
            assert response.status == 200  # health checks need no key
        with connect(srv.url, additional_headers={"Authorization": "Api-Key s3cret"}) as ws:
            unpackb(ws.recv(timeout=10))
            ws.send(packb(request_dict()))
            matches(unpackb(ws.recv(timeout=30)), first_reply)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--port", "70000"], 2, "a port lies in 0..65535"),
        (["--replan", "every_kk=2"], 2, "unknown re-planning rule 'every_kk'; did you mean 'every_k'"),
        (["--obs-map", "observation/image"], 2, "expected KEY=TARGET"),
        (["--max-queue", "0"], 2, "expected a whole number ≥ 1"),
        (["--mode", "dream"], 2, "invalid choice"),
        (["--obs-map", "observation/image=images.wrist"], 1, "names no camera of this policy"),
        (["--n-action-steps", "99"], 1, "n_action_steps must lie in"),
        (["--api-key", ""], 1, "api_key must not be empty"),
    ],
)
def test_serve_command_refuses_bad_options_in_one_line(args, code, message, capsys):
    from emcot.cli.main import main

    try:
        result = main(["serve", "synthetic", *args])
    except SystemExit as exit_:  # usage errors leave through argparse
        result = exit_.code
    err = capsys.readouterr().err.strip()
    assert result == code and message in err and len(err.splitlines()) == 1, err


def test_each_connection_gets_its_own_session_closed_when_it_leaves(policy, client, ask, until):
    opened, closed = [], []

    class Counted:
        def __init__(self) -> None:
            self.inner = SessionConfig(seed=0).open(policy)
            opened.append(self)

        def infer(self, obs):
            return self.inner.infer(obs)

        def close(self) -> None:
            closed.append(self)
            self.inner.close()

    with PolicyServer(policy, ServerConfig(port=0), session_factory=Counted).start_in_thread() as srv:
        assert len(opened) == len(closed) == 1  # the trial session of the constructor
        for _ in range(2):
            assert ask(srv.url)["server_step"] == 0  # a fresh session each time
        until(lambda: len(closed) == 3)
        assert opened == closed


def test_async_replan_sessions_serve_and_stop_their_thinking(policy, request_dict):
    from emcot.runtime.rules import parse_rules

    session = SessionConfig(seed=0, async_replan=True, replan=parse_rules("requested,every_k=2"))
    before = set(threading.enumerate())
    with PolicyServer(policy, ServerConfig(port=0), session).start_in_thread() as srv:
        assert srv.metadata["async_replan"] is True
        with connect(srv.url, compression=None) as ws:
            unpackb(ws.recv(timeout=10))
            for step in range(4):
                ws.send(packb(request_dict(step)))
                reply = unpackb(ws.recv(timeout=30))
                assert reply["server_step"] == step and np.isfinite(reply["actions"]).all()
    # The server's threads, its worker and the sessions' thinking threads have all ended.
    assert not [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
