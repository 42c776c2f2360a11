"""Shared pieces of the serving tests: the bundled policy, a request for it, a raw websocket
client, sessions whose inference waits on a gate, and in-process servers."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from websockets.sync.client import ClientConnection, connect

from emcot import EmCoTPolicy
from emcot.runtime import PolicySession
from emcot.serving import PolicyServer, ServerConfig, SessionConfig, packb, unpackb

INSTRUCTION = "push the red block to the left"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Client, reference and server share two cores here: with more busy torch threads than cores,
    each parallel region waits for a descheduled thread and a 80 ms step takes seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def policy() -> EmCoTPolicy:
    return EmCoTPolicy.synthetic()


@pytest.fixture(scope="session")
def request_dict(policy):
    """A valid request in the default form, and the in-process replies it should get."""

    def make(seed: int = 0, prompt: str | None = INSTRUCTION, **extra) -> dict:
        obs = policy.example_observation(seed)
        out = {"images": dict(obs.images), "state": obs.state, **extra}
        if prompt is not None:
            out["prompt"] = prompt
        return out

    return make


@pytest.fixture(scope="session")
def reference(policy):
    """``reference(requests, **session options)``: what a fresh in-process session answers."""

    def run(requests: list[dict], **options) -> list[dict]:
        with PolicySession(policy, seed=0, **options) as session:
            return [session.infer(r) for r in requests]

    return run


@pytest.fixture(scope="session")
def first_reply(reference, request_dict):
    """What a fresh session with seed 0 answers to ``request_dict()``."""
    return reference([request_dict()])[0]


@contextlib.contextmanager
def open_client(url: str, **kwargs) -> Iterator[tuple[ClientConnection, dict]]:
    """A raw client (openpi's settings) and the metadata frame it received first."""
    with connect(url, compression=None, max_size=None, open_timeout=10, **kwargs) as ws:
        yield ws, unpackb(ws.recv(timeout=10))


@pytest.fixture(scope="session")
def client():
    return open_client


@pytest.fixture(scope="session")
def ask(client, request_dict):
    """``ask(url)``: a fresh client sends one valid request; returns its decoded reply."""

    def run(url: str, **request) -> dict:
        with client(url) as (ws, _):
            ws.send(packb(request or request_dict()))
            reply = ws.recv(timeout=30)
        assert isinstance(reply, bytes), reply
        return unpackb(reply)

    return run


@pytest.fixture(scope="module")
def server(policy) -> Iterator[PolicyServer]:
    """An in-process server on a free port with seed 0 and the LIBERO-style main camera key."""
    config = ServerConfig(
        port=0, obs_map=(("observation/image", "images.head"), ("observation/state", "state"))
    )
    with PolicyServer(policy, config, SessionConfig(seed=0), name="default").start_in_thread() as running:
        yield running


class Gate:
    """Holds every gated inference until ``release`` is set; counts the ones that ran."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        self.calls = 0


class GatedSession:
    """A real session whose ``infer`` waits on the gate first (a slow policy, made deterministic)."""

    def __init__(self, inner: PolicySession, gate: Gate) -> None:
        self.inner, self.gate = inner, gate

    def infer(self, obs):
        self.gate.calls += 1
        self.gate.started.set()
        assert self.gate.release.wait(20), "the test never released the gate"
        try:
            return self.inner.infer(obs)
        finally:
            self.gate.finished.set()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def gated_server(policy):
    """``gated_server(**config)``: a started in-process server whose sessions wait on the returned gate."""
    made: list[tuple[PolicyServer, Gate]] = []

    def start(**config) -> tuple[PolicyServer, Gate]:
        gate = Gate()
        session = SessionConfig(seed=0)
        srv = PolicyServer(
            policy,
            ServerConfig(port=0, **config),
            session,
            session_factory=lambda: GatedSession(session.open(policy), gate),
        )
        made.append((srv.start_in_thread(), gate))
        return srv, gate

    yield start
    for srv, gate in made:
        gate.release.set()  # a test that failed early must not leave an inference waiting
        srv.stop()


def wait_for(condition, timeout: float = 10.0) -> None:
    """Poll ``condition()`` until it is true (or fail after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture(scope="session")
def until():
    return wait_for


def assert_reply_matches(reply: dict, expected: dict) -> None:
    """A server reply carries the in-process result (same seed, same step) plus the server's keys."""
    np.testing.assert_allclose(reply["actions"], expected["actions"], rtol=1e-5, atol=1e-6)
    assert reply["actions"].dtype == np.float32
    assert reply["reasoning"] == expected["reasoning"]
    assert reply["replanned"] == expected["replanned"]
    assert set(reply["policy_timing"]) == set(expected["policy_timing"])
    assert "infer_ms" in reply["server_timing"]


@pytest.fixture(scope="session")
def matches():
    return assert_reply_matches
