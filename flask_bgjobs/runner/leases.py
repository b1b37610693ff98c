"""Leases: renew ours, notice the ones we lost, take back the ones other runners left behind.

A running job's lease is renewed every third of ``BGJOBS_LEASE_SECONDS``. Every
`OWNERSHIP_CHECK` (and at once after a cancel wake-up) the runner reads which jobs it still
holds: an attempt whose job was cancelled or taken back is killed, and its late result is
never recorded (the store's fence would refuse it anyway). Every third of the lease it also
sweeps: running jobs of other runners whose lease expired become failed attempts.
"""

from __future__ import annotations

from collections.abc import Callable

from flask_bgjobs.runner.clock import Now
from flask_bgjobs.runner.health import Health
from flask_bgjobs.store import Reclaimed, Store

#: While jobs run, how often the runner checks it still holds their leases (seconds).
OWNERSHIP_CHECK = 1.0


class Leases:
    """Renewal, ownership checks and sweeps, each on its own timer."""

    def __init__(
        self,
        store: Store,
        *,
        owner: str,
        lease_seconds: float,
        sweep: Callable[[str], list[Reclaimed]],
        health: Health,
    ) -> None:
        self.store = store
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.sweep = sweep
        self.health = health
        #: A cancel may have hit one of our jobs: check ownership at the next step.
        self.check_wanted = False
        self.next_renew = 0.0  # monotonic; renewal waits for running attempts
        self.next_owned = 0.0
        self.next_sweep = 0.0  # a new runner sweeps at once
        self.retry_at = 0.0

    def step(self, now: Now, *, running: bool) -> tuple[set[int] | None, list[Reclaimed]]:
        """Renew or check our leases and sweep, as their timers say.

        Returns the ids this runner still holds (``None`` when not checked this time) and the
        jobs the sweep took back.
        """
        owned: set[int] | None = None
        reclaimed: list[Reclaimed] = []
        if now.mono < self.retry_at:
            return None, []
        try:
            if running and now.mono >= self.next_renew:
                owned = self.store.renew(self.owner, self.lease_seconds, now=now.wall)
                self.next_renew = now.mono + self.lease_seconds / 3
                self.next_owned = now.mono + OWNERSHIP_CHECK
            elif running and (self.check_wanted or now.mono >= self.next_owned):
                owned = self.store.owned(self.owner)
                self.next_owned = now.mono + OWNERSHIP_CHECK
            self.check_wanted = False
            if now.mono >= self.next_sweep:
                reclaimed = self.sweep(self.owner)
                self.next_sweep = now.mono + self.lease_seconds / 3
        except Exception as exc:  # noqa: BLE001 - a locked or lost database must not kill us
            self.retry_at = self.health.failed("lease renewal", exc, now.mono)
        return owned, reclaimed

    def started(self, now: Now) -> None:
        """The first attempt after an idle spell: renew a third of a lease from now."""
        self.next_renew = now.mono + self.lease_seconds / 3
        self.next_owned = now.mono + OWNERSHIP_CHECK

    def next_wake(self, running: bool) -> float:
        """When the loop should come back for this part (monotonic)."""
        wake = self.next_sweep
        if running:
            wake = min(wake, self.next_renew, self.next_owned)
        return max(wake, self.retry_at)
