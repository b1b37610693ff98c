"""What wakes the runner before its next timer: signals, datagrams, PostgreSQL notifications.

- Signals (SIGCHLD, SIGTERM, SIGINT) arrive through `signal.set_wakeup_fd` on a pipe the
  selector watches, so the loop never runs Python code inside a signal handler beyond a count.
- A datagram on this runner's socket: a web process on this host enqueued or cancelled a job.
- On PostgreSQL, a ``LISTEN`` connection: the same news from other hosts.

Each is turned into a flag the loop reads (`claim`, `leases`); none does any work itself.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
from collections.abc import Callable
from typing import Any

from flask_bgjobs import models
from flask_bgjobs.launcher import Launcher
from flask_bgjobs.runner.clock import Now
from flask_bgjobs.runner.health import Health
from flask_bgjobs.store import Listener, Store

#: After losing the LISTEN connection, wait this long before reconnecting (seconds).
RECONNECT = 1.0
#: After failing to connect it, wait this long (seconds).
RECONNECT_FAILED = 5.0


class Wakeups:
    """The runner's signal pipe, wake-up socket and LISTEN connection."""

    def __init__(
        self,
        selector: selectors.BaseSelector,
        launcher: Launcher,
        store: Store,
        health: Health,
        *,
        on_stop: Callable[[], None],
    ) -> None:
        self.selector = selector
        self.launcher = launcher
        self.store = store
        self.health = health
        self.on_stop = on_stop
        #: An enqueue was announced: claim.
        self.claim = False
        #: A cancel was announced: check leases.
        self.leases = False
        self._sig_r = self._sig_w = -1
        self._sock: socket.socket | None = None
        self._sock_path: str | None = None
        self._listener: Listener | None = None
        self._next_listen = 0.0  # monotonic
        self._lost: BaseException | None = None

    def setup(self) -> None:
        """Install the signal handlers and bind the wake-up socket."""
        # A log over `ulimit -f` is then a failed write (EFBIG), not a dead runner.
        if hasattr(signal, "SIGXFSZ"):
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        self._sig_r, self._sig_w = os.pipe()
        os.set_blocking(self._sig_r, False)
        os.set_blocking(self._sig_w, False)
        signal.set_wakeup_fd(self._sig_w)
        signal.signal(signal.SIGCHLD, _noop)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.selector.register(self._sig_r, selectors.EVENT_READ, self._drain_signals)
        bound = self.launcher.bind()
        if bound is not None:
            self._sock, self._sock_path = bound
            self.selector.register(self._sock, selectors.EVENT_READ, self._on_datagram)

    def teardown(self) -> None:
        """Restore the signal handlers; close and remove what `setup` made."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        if self._sock is not None and self._sock_path is not None:
            # Removed only from the folder bind() checked, through a descriptor of it.
            self.launcher.unbind(self._sock, self._sock_path)
        self._sock = None
        self._close_listener()
        for fd in (self._sig_r, self._sig_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._sig_r = self._sig_w = -1

    def fds(self) -> list[int]:
        """Descriptors a forked job process must close."""
        found = [fd for fd in (self._sig_r, self._sig_w) if fd >= 0]
        if self._sock is not None:
            found.append(self._sock.fileno())
        if self._listener is not None:
            found.append(self._listener.fd)
        return found

    def step(self, now: Now) -> None:
        """(Re)connect the LISTEN connection when its timer says so."""
        if self._lost is not None:
            self.health.failed("LISTEN", self._lost, now.mono)
            self._lost = None
            self._next_listen = now.mono + RECONNECT
        if self.store.is_postgres and self._listener is None and now.mono >= self._next_listen:
            try:
                self._listener = self.store.listen()
            except Exception as exc:  # noqa: BLE001
                self._next_listen = now.mono + RECONNECT_FAILED
                self.health.failed("LISTEN", exc, now.mono)
                return
            assert self._listener is not None
            self.selector.register(self._listener.fd, selectors.EVENT_READ, self._on_notify)
            self.claim = True  # notifications may have been missed while disconnected

    def next_wake(self) -> float | None:
        """When the LISTEN connection is due to be (re)made (monotonic)."""
        if self.store.is_postgres and self._listener is None:
            return self._next_listen
        return None

    # -- selector callbacks ------------------------------------------------------------------

    def _on_signal(self, _signum: int, _frame: Any) -> None:
        self.on_stop()

    def _drain_signals(self, _mask: int) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._sig_r, 4096):
                pass

    def _on_datagram(self, _mask: int) -> None:
        assert self._sock is not None
        while True:
            try:
                payload = self._sock.recv(64)
            except OSError:  # BlockingIOError included: all read
                return
            self._note(payload.decode("ascii", "replace"))

    def _on_notify(self, _mask: int) -> None:
        assert self._listener is not None
        try:
            payloads = self._listener.payloads()
        except Exception as exc:  # noqa: BLE001 - reconnected by `step`, which knows the time
            self._close_listener()
            self._lost = exc
            return
        for payload in payloads:
            self._note(payload)

    def _note(self, payload: str) -> None:
        if payload == models.WAKE_CANCELLED:
            self.leases = True
        else:
            self.claim = True

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self._listener.fd)
            self._listener.close()
            self._listener = None


def _noop(_signum: int, _frame: Any) -> None:
    """SIGCHLD handler: its only job is to make the wake-up fd readable."""
