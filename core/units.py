"""Restart what changed: which systemd units ``deliver`` acts on, and acting on them.

After a delivery committed, the units whose delivered set changed (a credential added,
changed or removed) are restarted or reloaded -- once each, after every target committed,
through ``systemctl``:

============================  ===============================================
``on_change``                 what credbridge runs
============================  ===============================================
``restart``                   ``systemctl try-restart UNIT``
``reload-or-restart``         ``systemctl try-reload-or-restart UNIT``
``reload``                    ``systemctl reload UNIT`` (only if it is active)
``none``                      nothing
============================  ===============================================

A unit target acts on its ``unit``. A VM target acts on its ``unit`` (default
``microvm@NAME.service``) when a credential it takes at launch changed in this delivery: a
``credential:NAME`` its unit receives from a delivered unit target, or a ``target:`` link to
a changed credential. Several targets naming one unit are merged: the strongest action wins.

``systemctl`` runs with the allow-listed environment of :func:`credbridge.core.process.child_env`
and never sees a value (unit names only).

Pending restarts survive an interruption: once the targets are committed, and before the
first ``systemctl`` call, the units still to act on are recorded in
:data:`PENDING_NAME` beside each lock file of the delivery's sinks (``/run/credstore/`` for
the credstore: gone at reboot, when every unit starts afresh anyway). Each unit is struck off
once ``systemctl`` returned for it. A run stopped in between (SIGTERM, SIGKILL, a crash) leaves
the rest recorded; the next ``deliver`` that takes one of those locks acts on them as well,
even if nothing changed since, and reports them (``--dry-run`` and ``--no-restart`` only say so).

Inside a systemd service (``$INVOCATION_ID`` set: ``credbridge-deliver.service``, a timer's
unit) the jobs are only queued (``systemctl --no-block``, status ``queued``). The delivering
unit is ordered ``Before=`` the units it restarts, so systemd holds their start until its own
start job has finished -- and that job is this very process: waiting would deadlock until the
timeout, with the units stopped meanwhile. Queued, they start as soon as the delivery ends.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from credbridge.core import links
from credbridge.core.config import ON_CHANGE, Config, Target
from credbridge.core.fsutil import LockWait, atomic_write, locked, opened_dir, read_file_at
from credbridge.core.interfaces import Change
from credbridge.core.records import field, record, replace

log = logging.getLogger(__name__)

SYSTEMCTL = "systemctl"
RESTART_TIMEOUT = 300.0
"""Seconds one ``systemctl`` call may take (it waits for the unit's stop and start)."""
VERBS = {
    "restart": "try-restart",
    "reload-or-restart": "try-reload-or-restart",
    "reload": "reload",
}
_STRENGTH = {name: len(ON_CHANGE) - index for index, name in enumerate(ON_CHANGE)}
PENDING_NAME = ".credbridge-restarts.json"
"""The record of units a delivery committed for but has not restarted yet (no values)."""
PENDING_DETAIL = "pending from an interrupted run"


@record(frozen=True)
class UnitAction:
    """What ``deliver`` does (or did) to one unit, and why (the targets that changed)."""

    unit: str
    action: str
    targets: tuple[str, ...]
    status: str = "planned"
    """``planned`` (not run yet, or ``--dry-run``), ``done``, ``queued`` (inside a service:
    the job is in systemd's queue), ``failed`` or ``skipped``."""
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "action": self.action,
            "targets": list(self.targets),
            "status": self.status,
            "detail": self.detail,
        }


def on_change_for(target: Target, config: Config, restart: bool | None) -> str:
    """The action for one target: its own ``on_change``, else ``--restart`` (``restart``),
    else ``[defaults] on_change``, else ``none``; ``--no-restart`` (False) disables all."""
    if restart is False:
        return "none"
    if target.on_change is not None:
        return target.on_change
    if restart:
        return "restart"
    return config.default_on_change or "none"


@record
class _Selection:
    order: list[str] = field(default_factory=list)
    actions: dict[str, str] = field(default_factory=dict)
    targets: dict[str, list[str]] = field(default_factory=dict)

    def add(self, unit: str, action: str, target: str) -> None:
        if action == "none":
            return
        if unit not in self.actions:
            self.order.append(unit)
            self.actions[unit] = action
            self.targets[unit] = []
        elif _STRENGTH[action] > _STRENGTH[self.actions[unit]]:
            self.actions[unit] = action
        if target not in self.targets[unit]:
            self.targets[unit].append(target)

    def result(self) -> list[UnitAction]:
        return [UnitAction(u, self.actions[u], tuple(self.targets[u])) for u in self.order]


def select_units(
    config: Config,
    delivered: Sequence[Target],
    changes: Iterable[tuple[str, str, Change]],
    restart: bool | None,
) -> list[UnitAction]:
    """The units to act on after delivering ``delivered`` with these (target, credential,
    change) results (a VM takes a changed value through a ``target:`` link too)."""
    changed = {(t, c) for t, c, change in changes if change is not Change.KEEP}
    by_name = {t.name: t for t in delivered}
    changed_owners = {
        links.owner(config, by_name[t], spec)
        for t, c in changed
        if t in by_name and (spec := by_name[t].credential(c)) is not None
    }
    # credential:NAME inside a unit is what a delivered target with that unit wrote as NAME.
    changed_in_unit = {(by_name[t].unit, c) for t, c in changed if t in by_name}
    changed_targets = {t for t, _ in changed}
    selection = _Selection()
    for target in config.targets.values():
        if target.unit is None:
            continue
        if target.kind != "vm":
            if target.name in by_name and target.name in changed_targets:
                selection.add(target.unit, on_change_for(target, config, restart), target.name)
            continue
        for spec in target.credentials:
            reference = spec.reference
            inside = (target.unit, reference.path) in changed_in_unit
            via_unit = reference.scheme == "credential" and inside
            if via_unit or links.owner(config, target, spec) in changed_owners:
                selection.add(target.unit, on_change_for(target, config, restart), target.name)
                break
    return selection.result()


def inside_a_service() -> bool:
    """Whether this process runs in a systemd service (systemd sets ``$INVOCATION_ID``)."""
    return bool(os.environ.get("INVOCATION_ID"))


def act_on_units(
    actions: Sequence[UnitAction],
    *,
    timeout: float = RESTART_TIMEOUT,
    wait: bool | None = None,
) -> list[UnitAction]:
    """Run ``systemctl`` once per unit, in order; failures are reported, not raised.

    ``wait`` (default: not :func:`inside_a_service`) waits for each job; otherwise the jobs
    are queued with ``--no-block`` and reported ``queued`` (see the module's docstring).
    """
    # Only a delivery that changed something runs systemctl: not loaded at start-up.
    import shutil

    from credbridge.core.process import child_env

    if wait is None:
        wait = not inside_a_service()
    env = child_env()
    binary = shutil.which(SYSTEMCTL, path=env.get("PATH"))
    mode = [] if wait else ["--no-block"]
    results = []
    for action in actions:
        if binary is None:
            results.append(replace(action, status="failed", detail=f"{SYSTEMCTL} not found"))
            continue
        if action.action == "reload" and not _is_active(binary, action.unit, env, timeout):
            results.append(replace(action, status="skipped", detail="not running"))
            continue
        verb = VERBS[action.action]
        log.info("systemctl %s %s", verb, action.unit)
        code, message = _systemctl(binary, [*mode, verb, "--", action.unit], env, timeout)
        if code == 0:
            results.append(replace(action, status="done" if wait else "queued"))
        else:
            results.append(replace(action, status="failed", detail=message))
    return results


def _is_active(binary: str, unit: str, env: dict[str, str], timeout: float) -> bool:
    code, _ = _systemctl(binary, ["is-active", "--quiet", "--", unit], env, timeout)
    return code == 0


def _systemctl(
    binary: str, args: Sequence[str], env: dict[str, str], timeout: float
) -> tuple[int, str]:
    import subprocess

    try:
        result = subprocess.run(
            [binary, "--no-ask-password", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return -1, f"systemctl {args[0]} did not finish within {timeout:g}s"
    except OSError as error:
        return -1, f"cannot run {binary}: {error.strerror or error}"
    lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
    return result.returncode, (lines[0] if lines else f"systemctl exited with {result.returncode}")


# --------------------------------------------------------------------------- pending restarts


def merge_actions(first: Sequence[UnitAction], second: Sequence[UnitAction]) -> list[UnitAction]:
    """Both lists as one, each unit once: ``first``'s order, the strongest action, all targets."""
    selection = _Selection()
    details: dict[str, str] = {}
    for action in [*first, *second]:
        for target in action.targets or ("",):
            selection.add(action.unit, action.action, target)
        details.setdefault(action.unit, action.detail)
    return [
        replace(a, targets=tuple(t for t in a.targets if t), detail=details[a.unit])
        for a in selection.result()
    ]


@record(frozen=True)
class PendingRecord:
    """One :data:`PENDING_NAME` file, in the directory of a sink's lock file (and guarded by it)."""

    lock_file: Path

    @property
    def path(self) -> Path:
        return self.lock_file.parent / PENDING_NAME

    def read(self) -> list[UnitAction]:
        """The units recorded here; an unreadable record is reported and counts as empty."""
        try:
            with opened_dir(self.path.parent) as dir_fd:
                raw = read_file_at(dir_fd, self.path.name, str(self.path))
        except FileNotFoundError:
            return []
        except OSError as error:
            log.warning("cannot read %s: %s", self.path, error.strerror or error)
            return []
        import json  # only when a record exists: an interrupted run left units to restart

        try:
            entries = json.loads(raw)["units"]
            return [
                UnitAction(
                    str(entry["unit"]),
                    str(entry["action"]),
                    tuple(map(str, entry["targets"])),
                    detail=PENDING_DETAIL,
                )
                for entry in entries
                if entry["action"] in VERBS
            ]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring %s: not a record of pending restarts", self.path)
            return []

    def write(self, actions: Sequence[UnitAction]) -> None:
        if not actions:
            with opened_dir(self.path.parent) as dir_fd:
                try:
                    os.unlink(self.path.name, dir_fd=dir_fd)
                except FileNotFoundError:
                    return
                os.fsync(dir_fd)
            return
        import json

        entries = [
            {"unit": a.unit, "action": a.action, "targets": list(a.targets)} for a in actions
        ]
        atomic_write(self.path, json.dumps({"units": entries}).encode(), mode=0o600)

    def strike(self, done: UnitAction, wait: LockWait | None) -> None:
        """Remove ``done`` from the record, under its lock (another run may add to it)."""
        with locked(self.lock_file, wait=wait):
            left = [a for a in self.read() if a.unit != done.unit]
            self.write(left)


def pending_records(lock_files: Iterable[Path]) -> list[PendingRecord]:
    """One record per directory holding a lock file (several sinks may share one)."""
    chosen: dict[Path, PendingRecord] = {}
    for lock_file in sorted(lock_files):
        chosen.setdefault(lock_file.parent, PendingRecord(lock_file))
    return list(chosen.values())
