"""The values ``credbridge agent`` holds between its rounds: a :class:`Session` that hands
back the leased values of the delivered sets instead of issuing them anew, and adopts or
drops the ones a round fetched once the round committed or failed (apart from the loop in
:mod:`credbridge.core.agent`, which decides when)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

from credbridge.core import links
from credbridge.core.config import Config, CredentialSpec, Target
from credbridge.core.engine import Session
from credbridge.core.secret import Secret
from credbridge.core.types import Change, Lease, Mode, Outcome, Request
from credbridge.core.units import UnitAction


class AgentSession(Session):
    """A :class:`Session` that hands back the leased values it holds instead of fetching
    them again, unless they are due for re-issue: re-delivering a target whose static value
    changed must not issue its dynamic secrets anew."""

    def __init__(self, config: Config, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.held: dict[Request, Secret] = {}
        """Leased values of the delivered sets (in memory only), by request."""
        self.reissue: set[Request] = set()
        self.latest: dict[Request, Secret] = {}
        """Leased values fetched in the current delivery, adopted once it committed."""
        self.leases: dict[Request, Lease | None] = {}
        self.live_vms: set[str] = set()
        """VM targets the agent updates in place: a change restarts none of them."""

    def units_to_act_on(
        self,
        targets: Sequence[Target],
        changes: Sequence[tuple[str, str, Change]],
        restart: bool | None,
    ) -> list[UnitAction]:
        actions = super().units_to_act_on(targets, changes, restart)
        return [a for a in actions if not (a.targets and set(a.targets) <= self.live_vms)]

    def resolve(
        self, requests: Iterable[Request], mode: Mode = Mode.DELIVER
    ) -> dict[Request, Outcome]:
        wanted = list(dict.fromkeys(requests))
        kept = {
            r: copy.copy(self.held[r]) for r in wanted if r in self.held and r not in self.reissue
        }
        results = (
            super().resolve([r for r in wanted if r not in kept], mode)
            if len(kept) < len(wanted)
            else {}
        )
        for request, outcome in results.items():
            if request.owner is None or not isinstance(outcome, Secret):
                continue
            self.leases[request] = outcome.lease
            if outcome.lease is not None and outcome.lease.lease_id:
                previous = self.latest.pop(request, None)
                if previous is not None:
                    previous.wipe()
                self.latest[request] = copy.copy(outcome)
        for request, value in kept.items():
            self.leases[request] = value.lease
        return {**results, **kept}

    def adopt(self) -> list[tuple[Request, Lease]]:
        """Keep the leased values of a committed delivery; returns the leases they replaced."""
        replaced = []
        for request, value in self.latest.items():
            old = self.held.pop(request, None)
            if old is not None:
                if old.lease is not None and old.lease != value.lease:
                    replaced.append((request, old.lease))
                old.wipe()
            self.held[request] = value
        self.latest.clear()
        self.reissue.clear()
        self.forget_resolved()
        return replaced

    def discard(self) -> list[tuple[Request, Lease]]:
        """Drop the leased values of a delivery that failed; returns their leases."""
        dropped = [(r, v.lease) for r, v in self.latest.items() if v.lease is not None]
        for value in self.latest.values():
            value.wipe()
        self.latest.clear()
        self.forget_resolved()
        return dropped

    def forget_resolved(self) -> None:
        """Forget this round's values (wiped already): a run that never ends must not keep a
        list of every value it ever resolved. A wiped value stays in their place, so that a
        server's error text is withheld from then on (``Session.resolve``): the values of
        earlier rounds are still delivered and could no longer be compared with it."""
        withheld = Secret(b"")
        withheld.wipe()
        with self._resolving_guard:
            self._resolved[:] = [withheld]
            self._nested_values = None

    def request_for(self, target: Target, spec: CredentialSpec) -> Request | None:
        """What ``spec`` resolves. A VM's ``credential:NAME`` is what its unit loads as NAME:
        the value of the unit target that delivers NAME to that unit (``None``: none does)."""
        if target.kind == "vm" and spec.reference.scheme == "credential":
            for other in self.config.targets.values():
                delivered = other.credential(spec.reference.path)
                if other.kind == "unit" and other.unit == target.unit and delivered is not None:
                    return links.follow(self.config, other, delivered)
            return None
        return links.follow(self.config, target, spec)

    def close(self) -> None:
        for value in [*self.held.values(), *self.latest.values()]:
            value.wipe()
        self.held.clear()
        self.latest.clear()
        super().close()
