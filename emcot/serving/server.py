"""`PolicyServer`: an emcot policy behind openpi's websocket protocol.

On connect the server sends one binary frame, the metadata; then each binary request (a
msgpack-numpy observation dict) gets one binary reply: the session's output plus
``server_timing`` and ``server_step``. A request that is wrong gets a text frame saying what was
wrong and the connection closes with 1011; a full queue closes with 1013 ("try again later"); an
oversized frame with 1009. The server itself keeps serving everyone else.

Inference runs off the event loop on one worker thread per policy, so websocket pings are
answered during a long step (openpi#717) and requests from all clients are served in arrival
order (each client is lock-step, so that is fair). Each connection has its own
:class:`~emcot.runtime.PolicySession`.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import signal
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from emcot.serving.metadata import ServerConfig, SessionConfig, server_metadata
from emcot.serving.observations import ObservationSpec
from emcot.serving.protocol import ProtocolError, packb, unpackb

if TYPE_CHECKING:
    from emcot.policy.policy import EmCoTPolicy

logger = logging.getLogger("emcot.serving")

HEALTH_PATH = "/healthz"


class InferenceSession(Protocol):
    """What a connection talks to: openpi's ``infer`` contract and a ``close``."""

    def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """One observation dict → one reply dict."""
        ...

    def close(self) -> None:
        """Release what the session holds (its background thread, if any)."""
        ...


@dataclass
class ServerStats:
    """Counters since the server was made: connections accepted, requests answered, results
    dropped because their client left during inference, requests refused because the queue was
    full, connections closed for an error."""

    connections: int = 0
    replies: int = 0
    dropped: int = 0
    busy: int = 0
    errors: int = 0


class ServerBusy(Exception):
    """The queue of pending requests is full."""


class PolicyServer:
    """Serve ``policy`` over websockets: ``serve_forever()`` (blocking, stops on SIGINT/SIGTERM),
    ``await run()`` inside an event loop, or ``start_in_thread()`` for tests and benchmarks
    (``stop()`` or ``with`` ends it).

    ``name`` is what the metadata calls the policy. ``session_factory`` replaces the default
    ``session.open(policy)``, e.g. to wrap sessions for measurements.
    """

    def __init__(
        self,
        policy: EmCoTPolicy,
        config: ServerConfig | None = None,
        session: SessionConfig | None = None,
        *,
        name: str = "policy",
        session_factory: Callable[[], InferenceSession] | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        self.session_config = session or SessionConfig()
        self.spec = ObservationSpec.from_policy(policy, self.config.obs_map)
        self.metadata = server_metadata(policy, self.spec, self.session_config, self.config, name=name)
        self._metadata_frame = packb(self.metadata)
        self._open_session: Callable[[], InferenceSession] = session_factory or (
            lambda: self.session_config.open(policy)
        )
        self._open_session().close()  # a session that cannot be built fails here, not per client
        self.stats = ServerStats()
        self.url: str | None = None
        self.port: int | None = None
        self._pending = 0
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stop_requested = threading.Event()
        self._thread: threading.Thread | None = None

    # -----------------------------------------------------------------------------------------
    # Running and stopping.

    async def run(
        self, *, on_ready: Callable[[str], None] | None = None, handle_signals: bool = False
    ) -> None:
        """Listen until :meth:`stop` (or SIGINT/SIGTERM with ``handle_signals``); then close every
        connection with 1001, wait for the inference in flight and return."""
        loop = asyncio.get_running_loop()
        self._stop_event, self._loop = asyncio.Event(), loop
        if self._stop_requested.is_set():
            self._stop_event.set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emcot-infer")
        signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
        try:
            async with serve(
                self._serve_connection,
                self.config.host,
                self.config.port,
                compression=None,
                max_size=self.config.max_message_size,
                process_request=self._check_request,
            ) as server:
                self._listening(server)
                for sig in signals:
                    loop.add_signal_handler(sig, self._on_signal)
                if on_ready is not None and self.url is not None:
                    on_ready(self.url)
                await self._stop_event.wait()
                server.close()  # stop accepting; 1001 to every client; handlers drop their results
                await server.wait_closed()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True)  # the inference in flight finishes

    def serve_forever(self, *, on_ready: Callable[[str], None] | None = None) -> None:
        """Block serving until SIGINT or SIGTERM, then shut down gracefully."""
        asyncio.run(self.run(on_ready=on_ready, handle_signals=True))

    def start_in_thread(self, timeout: float = 30.0) -> PolicyServer:
        """Serve on a background thread; returns once listening (``self.url`` set)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                asyncio.run(self.run(on_ready=lambda _: ready.set()))
            except BaseException as err:  # reported to the caller of start_in_thread
                failure.append(err)
                ready.set()

        self._stop_requested.clear()
        self._thread = threading.Thread(target=main, name="emcot-serve", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"the server did not start listening within {timeout} s")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Ask the server to shut down (from any thread); joins the thread of :meth:`start_in_thread`."""
        self._stop_requested.set()
        loop, stop_event = self._loop, self._stop_event
        if loop is not None and stop_event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop_event.set)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
            self._thread = None

    def __enter__(self) -> PolicyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listening(self, server: Server) -> None:
        host, port = server.sockets[0].getsockname()[:2]
        self.port = int(port)
        self.url = f"ws://[{host}]:{port}" if ":" in host else f"ws://{host}:{port}"

    def _on_signal(self) -> None:
        logger.info("shutting down")
        if self._loop is not None:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.remove_signal_handler(sig)  # a second Ctrl-C interrupts the wait
        if self._stop_event is not None:
            self._stop_event.set()

    # -----------------------------------------------------------------------------------------
    # HTTP: health check and API key, before the websocket upgrade.

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path == HEALTH_PATH:
            return connection.respond(HTTPStatus.OK, "OK\n")
        key = self.config.api_key
        if key is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {key}".encode()):
                return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong API key\n")
        return None

    # -----------------------------------------------------------------------------------------
    # One connection.

    async def _serve_connection(self, connection: ServerConnection) -> None:
        with self._lock:
            self.stats.connections += 1
        session = self._open_session()
        try:
            await connection.send(self._metadata_frame)
            await self._exchange(connection, session)
        except ConnectionClosed:
            pass  # the client left (or the server is shutting down): nobody to answer
        except Exception as err:
            await self._fail(connection, err)
        finally:
            self._close_session(session)

    async def _exchange(self, connection: ServerConnection, session: InferenceSession) -> None:
        prev_total_ms: float | None = None
        for step in itertools.count():
            message = await connection.recv()
            started = time.perf_counter()
            if isinstance(message, str):
                raise ProtocolError("expected a binary msgpack frame, got a text frame")
            obs = self.spec.read(unpackb(message))
            if step == 0 and "prompt" not in obs:
                raise ValueError("the first observation of a connection needs 'prompt' (the instruction)")
            reply = await self._infer(connection, session, obs)
            if reply is None:
                return  # the client left during inference: its result is dropped
            timing = {"infer_ms": (time.perf_counter() - started) * 1000.0}
            if prev_total_ms is not None:
                timing["prev_total_ms"] = prev_total_ms
            await connection.send(packb({**reply, "server_timing": timing, "server_step": step}))
            with self._lock:
                self.stats.replies += 1
            prev_total_ms = (time.perf_counter() - started) * 1000.0

    async def _infer(
        self, connection: ServerConnection, session: InferenceSession, obs: dict[str, Any]
    ) -> dict[str, Any] | None:
        """``session.infer(obs)`` on the worker thread; None when the connection closed first."""
        assert self._executor is not None
        with self._lock:
            if self._pending >= self.config.max_queue:
                raise ServerBusy(
                    f"server busy: {self._pending} requests are waiting for the policy "
                    f"(max_queue {self.config.max_queue}); try again later"
                )
            self._pending += 1
        future = self._executor.submit(session.infer, obs)
        future.add_done_callback(self._release)  # also when cancelled before it ran
        result: asyncio.Future[dict[str, Any]] = asyncio.wrap_future(future)
        closed: asyncio.Future[Any] = asyncio.ensure_future(connection.wait_closed())
        waiting: set[asyncio.Future[Any]] = {result, closed}
        try:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if result not in done:
            result.cancel()  # a request still queued never runs; a running one finishes unseen
            with self._lock:
                self.stats.dropped += 1
            return None
        return result.result()

    def _release(self, _: Future) -> None:
        with self._lock:
            self._pending -= 1

    async def _fail(self, connection: ServerConnection, err: Exception) -> None:
        """Tell the client what went wrong (a text frame, as openpi does), then close."""
        busy = isinstance(err, ServerBusy)
        if busy:
            code, reason, text = CloseCode.TRY_AGAIN_LATER, "server busy", str(err)
        elif isinstance(err, ValueError):
            code, reason, text = CloseCode.INTERNAL_ERROR, "bad request", f"emcot serve: {err}"
            logger.warning("%s: %s", _peer(connection), err)
        else:  # a bug, not the client's fault: the traceback helps whoever reports it
            text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            code, reason = CloseCode.INTERNAL_ERROR, "internal error"
            logger.error("%s: inference failed", _peer(connection), exc_info=err)
        with self._lock:
            if busy:
                self.stats.busy += 1
            else:
                self.stats.errors += 1
        try:
            await connection.send(text)
            await connection.close(code, reason)
        except ConnectionClosed:
            pass

    def _close_session(self, session: InferenceSession) -> None:
        executor = self._executor
        if executor is None:
            session.close()
            return
        try:
            executor.submit(session.close)  # after this session's inference, if one still runs
        except RuntimeError:  # the executor is shutting down: nothing of this session runs any more
            session.close()


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else "client"
