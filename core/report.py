"""What ``deliver`` and ``check`` report: per-credential lines without values, for people and JSON.

:class:`DeliveryReport` (with its :class:`DeliveryEntry` lines) is what
:meth:`~credbridge.core.engine.Session.deliver` did or would do; :class:`CheckResult` is one line
of :meth:`~credbridge.core.engine.Session.check`. docs/api.md describes each field.
"""

from __future__ import annotations

from typing import Any

from credbridge.core.interfaces import Change
from credbridge.core.records import field, record
from credbridge.core.units import PendingRecord, UnitAction


@record(frozen=True, slots=True)
class DeliveryEntry:
    """One line of a delivery report or dry-run plan (no values)."""

    target: str
    credential: str
    reference: str
    sink: str
    change: Change
    detail: str = ""
    public: str | None = None
    """The value, for a credential whose reference selects a public part (else ``None``)."""

    def as_json(self) -> dict[str, str | None]:
        return {
            "target": self.target,
            "credential": self.credential,
            "reference": self.reference,
            "sink": self.sink,
            "change": self.change.value,
            "detail": self.detail,
            "public": self.public,
        }


@record
class DeliveryReport:
    dry_run: bool
    entries: list[DeliveryEntry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Optional credentials left out because their source had no value."""
    locations: dict[str, str] = field(default_factory=dict)
    """Where each target's credentials went (``Sink.location()``; empty if it does not say)."""
    store: str | None = None
    """Where generated values are kept, when the run used the store."""
    units: list[UnitAction] = field(default_factory=list)
    """Units to restart or reload because their credentials changed (see
    :meth:`Session.restart_changed`)."""
    warnings: list[str] = field(default_factory=list)
    records: list[PendingRecord] = field(default_factory=list)
    """Where the units still to act on are recorded until each is done (see core/units.py)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "entries": [e.as_json() for e in self.entries],
            "skipped": self.skipped,
            "units": [u.as_json() for u in self.units],
            "warnings": self.warnings,
        }

    def summary(self) -> list[str]:
        """Lines for a person: per target where the files went and what changed."""
        lines = []
        by_target: dict[str, dict[Change, int]] = {}
        sinks: dict[str, str] = {}
        for entry in self.entries:
            counts = by_target.setdefault(entry.target, dict.fromkeys(Change, 0))
            counts[entry.change] += 1
            sinks[entry.target] = entry.sink
        for target, counts in by_target.items():
            if self.dry_run:
                what = "would " + ", ".join(f"{c.value} {n}" for c, n in counts.items() if n)
            else:
                what = ", ".join(f"{n} {_PAST[c]}" for c, n in counts.items() if n)
            where = self.locations.get(target, "")
            lines.append(f"{target}: {what} ({sinks[target]}{': ' + where if where else ''})")
        generated = [
            e
            for e in self.entries
            if e.reference.startswith("generate:") and e.change in {Change.ADD, Change.CHANGE}
        ]
        if generated and self.store:
            verb = "would be kept" if self.dry_run else "are kept"
            lines.append(f"new generated values {verb} in the store: {self.store}")
        if self.skipped:
            lines.append(f"skipped (optional, not found): {', '.join(self.skipped)}")
        if self.dry_run and self.entries:
            lines.append("nothing was changed (dry run)")
        return lines


_PAST = {
    Change.ADD: "added",
    Change.CHANGE: "changed",
    Change.KEEP: "kept",
    Change.REMOVE: "removed",
}


@record(frozen=True)
class CheckResult:
    target: str
    credential: str
    reference: str
    ok: bool
    detail: str
    exit_code: int = 0
    """The exit code of the failure (0 when ok)."""
    public: str | None = None
    """The value, for a credential whose reference selects a public part (else ``None``)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "credential": self.credential,
            "reference": self.reference,
            "ok": self.ok,
            "detail": self.detail,
            "public": self.public,
        }
