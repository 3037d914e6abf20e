"""``credbridge agent``: deliver once, then keep every target fresh (docs/agent.md).

The agent is a loop around :meth:`Session.deliver`: each credential has a deadline, and the
process sleeps (no polling) until the earliest one or a signal. At a deadline it

* renews a renewable lease through its :class:`LeasedSource` (the value stays as it is),
  scheduled as Vault Agent's lifetime watcher does it: after ``renew_at`` of the remaining
  lifetime plus a random grace of 10-20 % of the lease (2/3 gives Vault's own formula);
* re-fetches a value that cannot be renewed (no lease, renewal refused or capped), or whose
  ``refresh = "DURATION"`` passed (static sources), and delivers its target -- only when a
  value changed, all or nothing per target -- then restarts the units whose credentials
  changed, through the same restart machinery (and interruption record) as ``deliver``.

A failure keeps the values in place and retries with exponential backoff and jitter. The
state (never a value) is written to a file that ``credbridge status`` reads.

This module is the loop: what is due, renewals, deliveries, signals. Around it:
:mod:`~credbridge.core.agent_state` (settings, the per-target and per-credential state, the
state file), :mod:`~credbridge.core.agent_session` (the leased values held between rounds),
:mod:`~credbridge.core.agent_vms` (running VMs: shares updated in place, restarts, stale
reports) and :mod:`~credbridge.core.sdnotify` (the systemd protocol).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from credbridge.core.agent_session import AgentSession
from credbridge.core.agent_state import (
    DEFAULT_REFRESH,
    AgentSettings,
    CredentialState,
    TargetState,
    read_state,
    stamp,
    state_path,
    write_state,
)
from credbridge.core.agent_vms import changed_for_vms, launch_of, update_vm
from credbridge.core.config import Config, CredentialSpec, load_config
from credbridge.core.errors import (
    CredbridgeError,
    ResolutionFailed,
    SourceError,
    Timeout,
    Unreachable,
)
from credbridge.core.fsutil import LockWait
from credbridge.core.plugins import SOURCE
from credbridge.core.sdnotify import notify, watchdog_interval
from credbridge.core.types import Change, Lease, LeasedSource, Request
from credbridge.core.vm import VmSink

__all__ = ["Agent", "AgentSettings", "backoff", "read_state", "renewal_delay", "state_path"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- timing


def renewal_delay(
    lease_seconds: float, remaining: float, renew_at: float, rng: random.Random
) -> float:
    """Seconds until a lease is renewed: Vault's lifetime watcher, with ``renew_at`` in place of
    its fixed 2/3. The grace is 10-20 % of the lease (random); the renewal comes after
    ``renew_at`` of the remaining time plus the rest of the way to the grace."""
    grace = 0.1 * lease_seconds + rng.uniform(0, 0.1 * lease_seconds)
    return max(0.0, renew_at * remaining + (1 - renew_at) * min(grace, remaining))


def backoff(failures: int, minimum: float, maximum: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: ``minimum * 2^(failures-1)`` capped at ``maximum``, less
    a random 0-25 % (as Vault Agent's auto-auth), so many retries do not come in lockstep."""
    exponent = min(max(failures - 1, 0), 60)
    delay = min(maximum, minimum * float(2**exponent))
    return delay * (1 - 0.25 * rng.random())


# --------------------------------------------------------------------------- the agent


class Agent:
    """One ``credbridge agent`` process: :meth:`run` returns when it is told to stop."""

    def __init__(
        self,
        config_path: Path,
        *,
        restart: bool | None = None,
        state: Path | None = None,
        lock_wait: LockWait | None = None,
    ) -> None:
        self.config_path = config_path
        self.restart = restart
        self.lock_wait = lock_wait
        self.rng = random.SystemRandom()
        self.stop = False
        self.reload = False
        self.ready = False
        self.targets: dict[str, TargetState] = {}
        self.started_at = time.time()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._watchdog = watchdog_interval()
        self._watchdog_next = 0.0
        self.config = load_config(config_path)
        self.settings = AgentSettings.from_config(self.config)
        self.session = self._open_session(self.config)
        self.state_file = state or state_path(self.session, self.settings)
        self._build(self.config)

    # ---------------------------------------------------------------- set-up

    def _open_session(self, config: Config) -> AgentSession:
        session = AgentSession(config, lock_wait=self.lock_wait)
        session.validate()
        session.select_targets(())  # at least one unit target
        return session

    def _refresh_for(self, config: Config, spec: CredentialSpec, request: Request) -> float:
        if spec.refresh is not None:
            return spec.refresh
        return config.refresh.get(request.reference.scheme, DEFAULT_REFRESH)

    def _build(self, config: Config) -> None:
        """The per-credential states of ``config``'s unit targets; a credential that kept its
        reference keeps its schedule, a new one is due now."""
        old = self.targets
        self.targets = {}
        self.session.live_vms = set()
        for target in config.targets.values():
            previous = old.get(target.name)
            state = TargetState(target.name, target.unit, kind=target.kind)
            if previous is not None:
                state.failures, state.last_error = previous.failures, previous.last_error
                state.stale, state.stale_launch = previous.stale, previous.stale_launch
            self.targets[target.name] = state
            if target.kind == "vm":
                sink = self.session.sink(target)
                state.live = isinstance(sink, VmSink) and sink.changes_after_boot
                if not state.live:
                    continue  # read at launch only: its unit is restarted, or it is stale
                self.session.live_vms.add(target.name)
            for spec in target.credentials:
                request = self.session.request_for(target, spec)
                if request is None:
                    log.warning(
                        "%s/%s: %s is read from the VM unit's own credentials, which no unit "
                        "target of this config delivers: not kept fresh while the VM runs",
                        target.name,
                        spec.name,
                        spec.text,
                    )
                    continue
                kept = previous.credentials.get(spec.name) if previous else None
                refresh = self._refresh_for(config, spec, request)
                if kept is not None and kept.request == request:
                    kept.refresh = refresh
                    state.credentials[spec.name] = kept
                else:
                    state.credentials[spec.name] = CredentialState(
                        target.name, spec.name, spec.text, request, refresh
                    )

    # ---------------------------------------------------------------- signals

    def _install_signals(self) -> None:
        def on_stop(_signum: int, _frame: object) -> None:
            self.stop = True

        def on_reload(_signum: int, _frame: object) -> None:
            self.reload = True

        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_reload)

    def _sleep_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` (``time.monotonic()``) or a signal, with no periodic
        wake-up."""
        while not (self.stop or self.reload):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            readable, _, _ = select.select([self._wake_read], [], [], left)
            if readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_read, 256):
                        pass

    # ---------------------------------------------------------------- the loop

    def run(self) -> int:
        self._install_signals()
        notify("STATUS=delivering")
        try:
            while not self.stop:
                if self.reload:
                    self._reload()
                self._cycle()
                self._report()
                if self.stop:
                    break
                self._sleep_until(self._next_deadline())
                self._ping_watchdog()
        finally:
            notify("STOPPING=1", "STATUS=stopping")
            self.session.close()
            self._write_state(stopped=True)
        return 0

    def _next_deadline(self) -> float:
        deadlines = [c.next_at for t in self.targets.values() for c in t.credentials.values()]
        if self._watchdog is not None:
            deadlines.append(self._watchdog_next)
        wall, mono = time.time(), time.monotonic()
        for target in self.targets.values():
            for cred in target.credentials.values():
                lease = cred.lease
                if lease and lease.expires_at and not cred.expired_reported:
                    deadlines.append(mono + lease.expires_at - wall)  # to report the expiry
        return min(deadlines) if deadlines else mono + DEFAULT_REFRESH

    def _ping_watchdog(self) -> None:
        if self._watchdog is not None and time.monotonic() >= self._watchdog_next:
            notify("WATCHDOG=1")
            self._watchdog_next = time.monotonic() + self._watchdog

    def _report(self) -> None:
        """Write the state file, then tell systemd (READY=1 once every target is delivered):
        a ``credbridge status`` run on READY sees the state that READY announces."""
        self._ping_watchdog()
        for state in self.targets.values():
            if state.stale and launch_of(self, self.config.targets[state.name]) != (
                state.stale_launch
            ):
                log.info("%s: the VM was launched again: it has the new values", state.name)
                state.stale, state.stale_launch = [], None
        stale = [t.name for t in self.targets.values() if t.stale]
        healthy = all(t.last_error is None for t in self.targets.values())
        failing = [t.name for t in self.targets.values() if t.last_error is not None]
        expired = [t.name for t in self.targets.values() if t.status() == "expired"]
        if expired:
            status = f"EXPIRED values kept in {', '.join(expired)}; retrying"
        elif failing:
            status = f"keeping last good values of {', '.join(failing)}; retrying"
        elif stale:
            status = f"running VM(s) with stale values: {', '.join(stale)}"
        else:
            status = f"{len(self.targets)} target(s) fresh"
        became_ready = healthy and not self.ready
        self.ready = self.ready or healthy
        self._write_state()
        if became_ready:
            notify("READY=1", f"STATUS={status}")
            log.info("every target delivered: ready")
        else:
            notify(f"STATUS={status}")

    def _reload(self) -> None:
        self.reload = False
        notify(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )
        try:
            config = load_config(self.config_path)
            settings = AgentSettings.from_config(config)
            session = self._open_session(config)
        except CredbridgeError as error:
            log.error("config not reloaded, keeping the running one: %s", error)  # noqa: TRY400
            notify("READY=1")
            return
        old = self.session
        self.session, self.config, self.settings = session, config, settings
        self._build(config)
        # Leased values the new config still delivers are handed over (not issued anew);
        # the others are revoked through the session that issued them.
        wanted = {c.request for t in self.targets.values() for c in t.credentials.values()}
        session.held = {r: v for r, v in old.held.items() if r in wanted}
        dropped = [(r, v.lease) for r, v in old.held.items() if r not in wanted and v.lease]
        old.held = {r: v for r, v in old.held.items() if r not in wanted}
        self.revoke(dropped, old)
        old.close()
        for target in self.targets.values():
            for cred in target.credentials.values():
                if cred.action == "refresh":
                    # Static values are read again at once (cheap, and the new config may
                    # deliver them differently); leases keep their schedule.
                    cred.next_at = 0.0
        self.ready = False  # READY=1 again after the first complete delivery of the new config
        log.info("config reloaded from %s", self.config_path)

    def _cycle(self) -> None:
        self._report_expired(time.time())
        now = time.monotonic()
        due = [c for t in self.targets.values() for c in t.credentials.values() if c.next_at <= now]
        renewing = [c for c in due if c.action == "renew"]
        firsts: dict[Request, CredentialState] = {}
        for cred in renewing:
            firsts.setdefault(cred.request, cred)
        self._renew_all(list(firsts.values()))
        for cred in renewing:
            first = firsts[cred.request]
            if first is not cred:  # the same value through a target: link: renewed once
                cred.lease, cred.action, cred.next_at = first.lease, first.action, first.next_at
                cred.last_error, cred.failures = first.last_error, first.failures
        now = time.monotonic()
        names = [
            t.name
            for t in self.targets.values()
            if any(c.next_at <= now and c.action != "renew" for c in t.credentials.values())
        ]
        units = [n for n in names if self.targets[n].kind == "unit"]
        if units:
            self._deliver(units)
        # After the unit targets: a value they changed is due in the VMs that share it.
        now = time.monotonic()
        for state in self.targets.values():
            if state.live and any(
                c.next_at <= now and c.action != "renew" for c in state.credentials.values()
            ):
                update_vm(self, state)

    def _report_expired(self, now: float) -> None:
        for target in self.targets.values():
            for cred in target.credentials.values():
                lease = cred.lease
                if lease is None or lease.expires_at is None or lease.expires_at > now:
                    cred.expired_reported = False
                    continue
                if not cred.expired_reported:
                    cred.expired_reported = True
                    log.error(
                        "%s/%s: the delivered value EXPIRED at %s and could not be replaced "
                        "(%s); it stays in place until a new one is delivered",
                        target.name,
                        cred.name,
                        stamp(lease.expires_at),
                        cred.last_error or target.last_error or "no new value yet",
                    )

    # ---------------------------------------------------------------- renewals

    def _renew_all(self, creds: Sequence[CredentialState]) -> None:
        """Renew leases, up to ``[credbridge] concurrency`` at once (each renewal waits for a
        round trip; many leases issued together come due together)."""
        if len(creds) <= 1 or self.config.concurrency == 1:
            for cred in creds:
                self._renew(cred)
            return
        for scheme in {c.request.reference.scheme for c in creds}:
            with contextlib.suppress(CredbridgeError):  # _renew reports it per credential
                self.session.source(scheme)  # opened here, not raced by the workers
        from concurrent.futures import ThreadPoolExecutor

        workers = min(self.config.concurrency, len(creds))
        with ThreadPoolExecutor(workers, thread_name_prefix="credbridge-renew") as pool:
            list(pool.map(self._renew, creds))

    def _renew(self, cred: CredentialState) -> None:
        lease = cred.lease
        scheme = cred.request.reference.scheme
        try:
            source = self.session.source(scheme)
            if lease is None or not isinstance(source, LeasedSource):
                cred.action = "reissue"
                return
            with self.session.plugins.guard(SOURCE, scheme, "renew()"):
                renewed = source.renew(cred.request, lease)
        except CredbridgeError as error:
            cred.failures += 1
            if isinstance(error, SourceError):
                cred.last_error = f"renewal failed: {error.kind}: {error.problem}"
            else:  # a plugin that failed: one attributed line, never its message
                cred.last_error = f"renewal failed: {error}"
            now = time.time()
            if isinstance(error, Unreachable | Timeout) and (
                lease is not None and (lease.expires_at is None or lease.expires_at > now)
            ):
                # The backend may be back before the lease ends: retry the renewal.
                cred.next_at = time.monotonic() + backoff(
                    cred.failures, self.settings.retry_min, self.settings.retry_max, self.rng
                )
                log.warning("%s/%s: %s; retrying", cred.target, cred.name, cred.last_error)
            else:
                log.warning(
                    "%s/%s: %s; fetching a new value", cred.target, cred.name, cred.last_error
                )
                cred.action = "reissue"
            return
        cred.failures = 0
        cred.last_error = None
        extended = (
            renewed.expires_at is not None
            and lease.expires_at is not None
            and renewed.expires_at > lease.expires_at
        )
        cred.lease = renewed
        held = self.session.held.get(cred.request)
        if held is not None:
            held.lease = renewed
        self._share_lease(cred.request, renewed)
        log.info("%s/%s: lease renewed until %s", cred.target, cred.name, stamp(renewed.expires_at))
        self.schedule(cred, extended=extended)

    def _share_lease(self, request: Request, lease: Lease) -> None:
        """Every credential holding this request's value (``target:`` links) sees the lease."""
        for target in self.targets.values():
            for cred in target.credentials.values():
                if cred.request == request:
                    cred.lease = lease

    def schedule(self, cred: CredentialState, *, extended: bool = True) -> None:
        lease = cred.lease
        now = time.monotonic()
        if lease is None or lease.expires_at is None:
            cred.action, cred.next_at = "refresh", now + cred.refresh
            return
        remaining = max(0.0, lease.expires_at - time.time())
        # The lease's current term: what the last fetch or renewal granted (scheduled right
        # after it), not the time since it was first issued.
        duration = remaining
        source = self.session.source(cred.request.reference.scheme)
        renewable = lease.renewable and isinstance(source, LeasedSource) and extended
        delay = renewal_delay(duration, remaining, self.settings.renew_at, self.rng)
        grace = 0.1 * duration
        if renewable and remaining - delay > grace:
            cred.action = "renew"
        else:
            # Not renewable, or renewing stopped extending it (its max TTL): fetch a new one.
            cred.action = "reissue"
        cred.next_at = now + delay

    # ---------------------------------------------------------------- deliveries

    def _deliver(self, names: Sequence[str]) -> None:
        now = time.monotonic()
        for name in names:
            for cred in self.targets[name].credentials.values():
                if cred.next_at <= now and cred.action in {"reissue", "fetch"}:
                    self.session.reissue.add(cred.request)
        try:
            self._deliver_once(names)
        except ResolutionFailed as error:
            failed: dict[str, list[str]] = {}
            for failure in error.failures:
                target, _, credential = (failure.credential or "").partition("/")
                failed.setdefault(target, []).append(str(failure))
                state = self.targets.get(target)
                if state is not None and credential in state.credentials:
                    state.credentials[credential].last_error = f"{failure.kind}: {failure.problem}"
            for name in failed:
                self.failed(name, "; ".join(failed[name]))
            rest = [n for n in names if n not in failed]
            if rest:
                try:
                    self._deliver_once(rest)
                except CredbridgeError as again:
                    for name in rest:
                        self.failed(name, str(again))
        except CredbridgeError as error:
            for name in names:
                self.failed(name, str(error))

    def _deliver_once(self, names: Sequence[str]) -> None:
        session = self.session
        try:
            report = session.deliver(names, restart=self.restart, changed_only=True)
        except BaseException:
            self.revoke(session.discard())
            raise
        now = time.time()
        self.revoke(session.adopt())
        changes = {(e.target, e.credential): e.change for e in report.entries}
        for name in names:
            target = self.targets[name]
            if target.last_error is not None:
                log.warning("%s: delivered again after: %s", name, target.last_error)
            target.failures, target.last_error = 0, None
            for cred in target.credentials.values():
                change = changes.get((name, cred.name))
                cred.checked_at = now
                cred.last_error = None
                cred.failures = 0
                if change is not None and change is not Change.KEEP:
                    cred.delivered_at = now
                cred.lease = session.leases.get(cred.request, cred.lease)
                self.schedule(cred)
            changed = [c for (t, c), ch in changes.items() if t == name and ch is not Change.KEEP]
            if changed:
                log.info("%s: delivered (changed: %s)", name, ", ".join(changed))
        session.leases.clear()
        restarted: set[str] = set()
        for action in session.restart_changed(report):
            if action.status == "failed":
                log.error(
                    "delivered, but %s of %s failed: %s", action.action, action.unit, action.detail
                )
            else:
                restarted.add(action.unit)
                log.info("%s %s: %s", action.action, action.unit, action.status)
        changed_values = [(t, c) for (t, c), ch in changes.items() if ch is not Change.KEEP]
        changed_for_vms(self, changed_values, restarted)

    def revoke(
        self, leases: Sequence[tuple[Request, Lease]], session: AgentSession | None = None
    ) -> None:
        session = session or self.session
        for request, lease in leases:
            scheme = request.reference.scheme
            try:
                source = session.source(scheme)
                if isinstance(source, LeasedSource):
                    with session.plugins.guard(SOURCE, scheme, "revoke()"):
                        source.revoke(request, lease)
            except CredbridgeError as error:
                log.warning("%s: cannot revoke the replaced lease: %s", request.reference, error)

    def failed(self, name: str, message: str) -> None:
        target = self.targets[name]
        target.failures += 1
        target.last_error = message
        delay = backoff(target.failures, self.settings.retry_min, self.settings.retry_max, self.rng)
        now = time.monotonic()
        for cred in target.credentials.values():
            if cred.next_at <= now:
                cred.next_at = now + delay
        log.error(
            "%s: not delivered, keeping the last good values (retry in %.0fs): %s",
            name,
            delay,
            message,
        )

    # ---------------------------------------------------------------- state file

    def snapshot(self, *, stopped: bool = False) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "running": not stopped,
            "config": str(self.config_path),
            "started_at": stamp(self.started_at),
            "updated_at": stamp(time.time()),
            "ready": self.ready,
            "targets": {name: t.as_json() for name, t in self.targets.items()},
        }

    def _write_state(self, *, stopped: bool = False) -> None:
        write_state(self.state_file, self.snapshot(stopped=stopped))
