"""A steady stream of requests through the gateway, every outcome recorded with its time.

`Stream` runs a few threads, each sending one request at a time on a connection of its own
(`harness.send`) in a loop until stopped or its time is up; every request becomes an `Outcome`
with its start and end (`time.monotonic()`), status and body, or the exception it raised.
`fire` sends single requests in the background (e.g. slow ones that must be in flight at a
given moment) and records them the same way.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import harness


@dataclass
class Outcome:
    path: str
    started: float
    ended: float
    status: int | None = None
    body: bytes = b""
    headers: list[tuple[str, str]] | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def refused(self) -> bool:
        """The TCP connection was refused: the gateway had no listener, so it never took the request."""
        return isinstance(self.error, ConnectionRefusedError)

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers or [] if n.lower() == name.lower()), None)

    def kind(self) -> str:
        """A short name of what happened: the status, or the exception's type."""
        if self.error is not None:
            return type(self.error).__name__
        return str(self.status)

    def __repr__(self) -> str:
        what = f"{self.status} {self.headers} {self.body[:120]!r}" if self.error is None else repr(self.error)
        return f"Outcome({self.path} @{self.started:.3f}-{self.ended:.3f}: {what})"


def request(port: int, path: str, timeout: float = 15.0) -> Outcome:
    started = time.monotonic()
    try:
        reply = harness.send(port, "GET", path, timeout=timeout)
        return Outcome(path, started, time.monotonic(), reply.status, reply.body, reply.headers)
    except Exception as err:  # noqa: BLE001 - every failure is an outcome to count
        return Outcome(path, started, time.monotonic(), error=err)


class Stream:
    """`threads` senders of GET `path` to the gateway at `port`, each pausing `pause` s between
    requests, until `stop()` or `duration` seconds have passed."""

    def __init__(self, port: int, path: str, *, threads: int = 3, pause: float = 0.02,
                 duration: float = 60.0, timeout: float = 15.0):
        self.port, self.path, self.pause, self.timeout = port, path, pause, timeout
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + duration
        self._threads = [threading.Thread(target=self._run, daemon=True, name=f"stream-{i}")
                         for i in range(threads)]
        self.extra: list[threading.Thread] = []

    def __enter__(self) -> "Stream":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            self._record(request(self.port, self.path, self.timeout))
            if self.pause:
                self._stop.wait(self.pause)

    def fire(self, path: str, count: int = 1) -> list[threading.Thread]:
        """Sends `count` requests for `path` at once, each on a thread of its own, recorded here."""
        threads = [threading.Thread(target=lambda: self._record(request(self.port, path, self.timeout)),
                                    daemon=True, name=f"fire-{path}") for _ in range(count)]
        for thread in threads:
            thread.start()
        self.extra.extend(threads)
        return threads

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads + self.extra:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads + self.extra if t.is_alive()]
        assert not alive, f"stream threads still running after {timeout}s: {alive}"

    # --- views ---------------------------------------------------------------------------------

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return sorted(self.outcomes, key=lambda o: o.started)

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def wait_for(self, n: int, timeout: float = 10.0) -> None:
        """Waits until `n` more requests have been recorded (the stream is flowing)."""
        target = self.count() + n
        harness.wait_until(f"{n} more streamed requests", lambda: self.count() >= target, timeout, 0.02)

    def failures(self, since: float = float("-inf"), until: float = float("inf")) -> list[Outcome]:
        return [o for o in self.snapshot() if not o.ok and since <= o.started <= until]

    def successes_since(self, since: float) -> list[Outcome]:
        return [o for o in self.snapshot() if o.ok and o.started >= since]


def summary(outcomes: list[Outcome]) -> str:
    """`N requests: {kind: count}` plus the first few failures, for assertion messages."""
    kinds = Counter(o.kind() for o in outcomes)
    bad = [o for o in outcomes if not o.ok][:5]
    return f"{len(outcomes)} requests: {dict(kinds)}; first failures: {bad}"


def grpc_backoff_bound(outage: float, *, base: float = 1.0, multiplier: float = 1.6, jitter: float = 0.2,
                       cap: float = 120.0) -> float:
    """The longest gRPC-Go can wait, after a server came back `outage` seconds after the client's
    first failed connection attempt, before its next attempt.

    Attempts happen at A_1 = 0 and A_k = A_(k-1) + b_(k-1), with b_i = min(cap, base·multiplier^(i-1))
    ·(1 ± jitter). The next attempt after `outage` is A_n with A_(n-1) < outage, so it comes at most
    b_(n-1),max after the server is back; n is largest when every back-off so far was at its
    shortest. Returns that b_(n-1),max.
    """
    elapsed, i = 0.0, 1  # elapsed: A_i with every back-off at its minimum
    while True:
        backoff = min(cap, base * multiplier ** (i - 1))
        if elapsed + backoff * (1 - jitter) >= outage:
            return backoff * (1 + jitter)
        elapsed += backoff * (1 - jitter)
        i += 1
