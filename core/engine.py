"""Delivery: the part of credbridge that wires resolved values to sinks.

A :class:`Session` is a :class:`~credbridge.core.resolution.Resolver` (one loaded config, its
sources and store, resolution) that also opens sinks and launchers and runs the two-phase
delivery: resolve everything first, then stage every target, commit all or roll all back;
``rotate``, ``check`` and ``launch`` are built on the same state and run locks.

Longer than most modules because :class:`Session` is one object: the commit and the commands
built on it share its state (the run locks, the values resolved so far). What needs none of it
lives apart: resolution (resolution.py), the report types (report.py), ``target:`` links
(links.py), unit restarts (units.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from credbridge.core import links
from credbridge.core.config import Config, CredentialSpec, Target, keypath
from credbridge.core.errors import (
    ConfigError,
    CredbridgeError,
    DeliveryError,
    LaunchError,
    NotFound,
    PluginError,
    ResolutionFailed,
    SourceError,
    printable,
)
from credbridge.core.faults import point
from credbridge.core.fsutil import LockWait, locked
from credbridge.core.plugins import (
    LAUNCHER,
    SINK,
    SOURCE,
    PluginManager,
)
from credbridge.core.report import CheckResult, DeliveryEntry, DeliveryReport
from credbridge.core.resolution import GuardedStore, Progress, Resolver, _wipe
from credbridge.core.secret import Secret
from credbridge.core.types import (
    PLAN_KEYS,
    Change,
    Delivery,
    Launcher,
    LauncherContext,
    Mode,
    Pending,
    PlanEntry,
    RotatableSource,
    Sink,
    SinkContext,
    Staged,
)
from credbridge.core.units import (
    UnitAction,
    act_on_units,
    merge_actions,
    pending_records,
    select_units,
)
from credbridge.core.validation import validate_config

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


class Session(Resolver):
    """One run of credbridge against one config: resolution (:class:`Resolver`), delivery,
    rotation, checks and launches. Close it (or use ``with``) when done."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        plugins: PluginManager | None = None,
        progress: Progress | None = None,
        lock_wait: LockWait | None = None,
    ) -> None:
        super().__init__(config, plugins=plugins, progress=progress)
        self.lock_wait = lock_wait or LockWait()
        """How long ``deliver``, ``rotate`` and ``launch`` wait for locks other runs hold."""
        self._run_locks: contextlib.ExitStack | None = None
        self._store_locked = False
        self._lock_files: list[Path] = []

    def __enter__(self) -> Session:
        return self

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Check every plugin name, declared setting and reference of the config (no I/O)."""
        validate_config(self.config, self.plugins)

    # ------------------------------------------------------------------ run locks

    def _store_used(self, store: GuardedStore) -> None:
        if self._run_locks is not None and not self._store_locked:
            self._lock_store(store, self._run_locks)

    @contextlib.contextmanager
    def _locked_run(self, sinks: Iterable[Sink] = ()) -> Iterator[None]:
        """Hold what concurrent runs share: the sinks' lock files now, in one global order
        (sorted paths), and the store's run lock from its first use on (always last)."""
        paths = sorted({os.path.abspath(path) for sink in sinks for path in sink.lock_files()})
        self._lock_files = [Path(path) for path in paths]
        with contextlib.ExitStack() as stack:
            for path in paths:
                stack.enter_context(locked(Path(path), wait=self.lock_wait))
            with self._store_guard:
                self._run_locks = stack
                if self._store is not None:
                    self._lock_store(self._store, stack)
            try:
                yield
            finally:
                with self._store_guard:
                    self._run_locks = None
                    self._store_locked = False

    def _lock_store(self, store: GuardedStore, stack: contextlib.ExitStack) -> None:
        stack.enter_context(locked(store.lock_file(), wait=self.lock_wait))
        self._store_locked = True
        stack.enter_context(store.held_for_run())
        store.recover()

    def sink(self, target: Target) -> Sink:
        found = self.plugins.lookup(SINK, target.sink)
        if found is None:
            raise ConfigError(
                f"unknown sink {target.sink!r}", file=self.config.label, key=f"{target.where}.sink"
            )
        # Errors name the table the settings came from: the target's own sink table, or the
        # global [sinks.NAME] when the target has none.
        where = f"{target.where}.sink" if target.sink_settings else keypath("sinks", target.sink)
        context = SinkContext(target, self.config.sink_settings(target), self.config, where)
        with self.plugins.guard(SINK, target.sink, "open()"):
            return found[0].open(context)

    def launcher(self, target: Target) -> Launcher:
        if target.kind != "vm" or target.launcher is None:
            raise ConfigError(
                f'target {target.name!r} is not a VM (kind = "vm")',
                file=self.config.label,
                key=target.where,
            )
        found = self.plugins.lookup(LAUNCHER, target.launcher)
        if found is None:
            raise ConfigError(
                f"unknown launcher {target.launcher!r}",
                file=self.config.label,
                key=f"{target.where}.launcher",
            )
        context = LauncherContext(
            target,
            target.launcher_settings,
            self.config,
            f"{target.where}.launcher",
            self.sink(target),
        )
        with self.plugins.guard(LAUNCHER, target.launcher, "open()"):
            return found[0].open(context)

    # ------------------------------------------------------------------ delivery

    def select_targets(self, names: Sequence[str], *, kind: str | None = "unit") -> list[Target]:
        if not names:
            chosen = [t for t in self.config.targets.values() if kind is None or t.kind == kind]
            if not chosen:
                raise ConfigError(
                    f"no {kind or ''} targets to deliver".replace("  ", " "),
                    file=self.config.label,
                    key="targets",
                )
            return chosen
        chosen = [self.config.target(name) for name in names]
        if kind is not None:
            for target in chosen:
                if target.kind != kind:
                    raise ConfigError(
                        f"target {target.name!r} is a {target.kind}; "
                        + (
                            "use 'credbridge launch'"
                            if target.kind == "vm"
                            else "use 'credbridge deliver'"
                        ),
                        file=self.config.label,
                        key=target.where,
                    )
        return chosen

    def deliver(
        self,
        names: Sequence[str] = (),
        *,
        dry_run: bool = False,
        restart: bool | None = None,
        changed_only: bool = False,
    ) -> DeliveryReport:
        """Resolve and deliver the named unit targets (all when none are named).

        With ``dry_run`` nothing is written or generated; the report says what would change.
        ``report.units`` lists the units whose credentials changed and what ``on_change`` asks
        for (``restart``: True for ``--restart``, False for ``--no-restart``); nothing acts on
        them here -- call :meth:`restart_changed` once the delivery is committed.
        ``changed_only`` (``credbridge agent``) commits only the targets with a change: the
        others are left as they are instead of being written again.
        """
        self.validate()
        targets = self.select_targets(names)
        mode = Mode.DRY_RUN if dry_run else Mode.DELIVER
        sinks = {t.name: self.sink(t) for t in targets}  # sink settings fail before any fetch
        for target in targets:
            with self.plugins.guard(SINK, target.sink, "check()"):
                sinks[target.name].check()  # before anything is generated or written
        # A dry run writes nothing and takes no lock; it may see a set being replaced.
        with contextlib.nullcontext() if dry_run else self._locked_run(sinks.values()):
            # Resolved as for a plan first: values still to be made (generated) are Pending,
            # with their size when known, so a set the sinks refuse (over a size limit) is
            # refused before anything is generated and persisted; then they are made.
            values, skipped = self.resolve_targets(targets, Mode.DRY_RUN)
            if mode is Mode.DELIVER:
                self._make_pending(targets, sinks, values)
            point("engine.resolved")
            report = DeliveryReport(dry_run=dry_run, skipped=skipped)
            try:
                for target in targets:
                    with self.plugins.guard(SINK, target.sink, "plan()"):
                        plan = sinks[target.name].plan(values[target.name])
                        report.locations[target.name] = sinks[target.name].location()
                    report.entries.extend(self._entries(target, plan, values[target.name]))
                if self._store is not None:
                    report.store = self._store.location()
                changes = [(e.target, e.credential, e.change) for e in report.entries]
                report.units = self.units_to_act_on(targets, changes, restart)
                if names:
                    report.warnings = links.left_behind(self.config, targets, changes)
                if dry_run:
                    return report
                report.records = pending_records(self._lock_files)
                pending = [a for record in report.records for a in record.read()]
                if restart is False and pending:
                    report.warnings.append(
                        "still to restart after an interrupted delivery: "
                        + ", ".join(dict.fromkeys(a.unit for a in pending))
                        + " ('credbridge deliver' without --no-restart does it)"
                    )
                    report.records = []
                else:
                    report.units = merge_actions(report.units, pending)
                if changed_only:
                    changed = {e.target for e in report.entries if e.change is not Change.KEEP}
                    targets = [t for t in targets if t.name in changed]
                self._commit(targets, sinks, values, on_committed=lambda: _record(report))
                return report
            finally:
                for target_values in values.values():
                    _wipe(target_values.values())

    def _make_pending(
        self,
        targets: Sequence[Target],
        sinks: Mapping[str, Sink],
        values: dict[str, dict[str, Secret | Pending]],
    ) -> None:
        """Replace the Pending values of a plan-mode resolution by real ones (generating and
        persisting them), once every sink has accepted the set with their known sizes."""
        wanted = [
            (target, spec)
            for target in targets
            for spec in target.credentials
            if isinstance(values[target.name].get(spec.name), Pending)
        ]
        if not wanted:
            return
        try:
            for target in [t for t in targets if any(w is t for w, _spec in wanted)]:
                with self.plugins.guard(SINK, target.sink, "plan()"):
                    sinks[target.name].plan(values[target.name])
            self._make(wanted, values)
        except BaseException:
            for target_values in values.values():
                _wipe(target_values.values())
            raise

    def _make(
        self,
        wanted: Sequence[tuple[Target, CredentialSpec]],
        values: dict[str, dict[str, Secret | Pending]],
    ) -> None:
        requests = [(t, spec, links.follow(self.config, t, spec)) for t, spec in wanted]
        outcomes = self.resolve([request for _t, _s, request in requests], Mode.DELIVER)
        failures: list[SourceError] = []
        for target, spec, request in requests:
            outcome = outcomes[request]
            if isinstance(outcome, SourceError):
                failures.append(outcome.for_credential(target.name, spec.name))
            elif isinstance(outcome, Pending):
                raise PluginError(
                    f"source {request.reference.scheme!r} returned no value for "
                    f"{request.reference} in a real run ({outcome.reason})"
                )
            else:
                values[target.name][spec.name] = outcome
        if failures:
            raise ResolutionFailed(failures)

    def units_to_act_on(
        self,
        targets: Sequence[Target],
        changes: Sequence[tuple[str, str, Change]],
        restart: bool | None,
    ) -> list[UnitAction]:
        """The units a delivery of ``targets`` with these changes restarts or reloads
        (:func:`~credbridge.core.units.select_units`; the agent leaves out VMs it updates)."""
        return select_units(self.config, targets, changes, restart)

    def restart_changed(self, report: DeliveryReport) -> list[UnitAction]:
        """Restart or reload the units of a committed delivery (``report.units``), once each,
        in order; failures are returned per unit (the delivery stays committed)."""
        if report.dry_run:
            return report.units
        # One at a time, each struck off the record once done: a stop in between leaves the
        # rest recorded for the next run (and report.units says which ones, status planned).
        for index, action in enumerate(report.units):
            report.units[index] = act_on_units([action])[0]
            for record in report.records:
                try:
                    record.strike(action, self.lock_wait)
                except (CredbridgeError, OSError) as error:
                    log.warning("cannot update %s: %s", record.path, _describe(error))
        return report.units

    def affected_by(self, target_name: str, credential: str) -> tuple[list[str], list[Target]]:
        """Targets holding the value of ``target_name/credential`` (``target:`` links and
        ``credential:`` inputs of a VM's unit followed): unit targets to deliver, VM targets
        that read it at launch."""
        return links.affected_by(self.config, target_name, credential)

    def _entries(
        self,
        target: Target,
        plan: Sequence[PlanEntry],
        values: Mapping[str, Secret | Pending] | None = None,
    ) -> list[DeliveryEntry]:
        specs = {spec.name: spec for spec in target.credentials}
        public = {
            name: _public_text(value)
            for name, value in (values or {}).items()
            if isinstance(value, Secret) and name in specs and self.is_public(specs[name].reference)
        }
        return [
            DeliveryEntry(
                target.name,
                e.credential,
                specs[e.credential].text if e.credential in specs else "-",
                target.sink,
                e.change,
                e.detail,
                public.get(e.credential),
            )
            for e in plan
        ]

    def deliveries(self, target: Target, values: Mapping[str, Secret | Pending]) -> list[Delivery]:
        out = []
        for spec in target.credentials:
            value = values.get(spec.name)
            if isinstance(value, Secret):
                out.append(Delivery(spec.name, value, spec.mode, spec.owner, spec.group))
        return out

    def _commit(
        self,
        targets: Sequence[Target],
        sinks: Mapping[str, Sink],
        values: Mapping[str, Mapping[str, Secret | Pending]],
        *,
        on_committed: Callable[[], None] | None = None,
    ) -> None:
        staged: list[tuple[str, Staged]] = []
        committed: list[tuple[str, Staged]] = []
        try:
            for index, target in enumerate(targets):
                if self.progress:
                    self.progress("staging", index, len(targets))
                with self._sink_call(target.name, "stage()"):
                    item = sinks[target.name].stage(self.deliveries(target, values[target.name]))
                staged.append((target.name, item))
            # A stop (SIGTERM, SIGINT, SIGHUP) waits until every target is swapped and the old
            # sets are gone: it can split neither the commit nor leave old sets behind.
            with _signals_deferred():
                for name, item in staged:
                    point("engine.commit")
                    with self._sink_call(name, "commit()"):
                        item.commit()
                    committed.append((name, item))
                    log.info("delivered %s", name)
                for name, item in committed:
                    try:
                        with self._sink_call(name, "finalize()"):
                            item.finalize()
                    except (CredbridgeError, OSError) as failure:
                        log.warning(
                            "cleaning up the previous set of %s failed: %s",
                            name,
                            _describe(failure),
                        )
                if on_committed is not None:
                    on_committed()
        except BaseException as error:
            if committed and len(committed) == len(staged):
                raise  # the deferred stop, delivered after a complete commit: nothing to undo
            with _signals_deferred():
                for name, item in reversed(staged):
                    try:
                        with self._sink_call(name, "rollback()"):
                            item.rollback()
                        log.info("rolled back %s", name)
                    except (CredbridgeError, OSError) as failure:
                        # No traceback: it could carry what the sink was writing.
                        log.error("rollback of target %s failed: %s", name, _describe(failure))  # noqa: TRY400
            if isinstance(error, CredbridgeError):
                raise
            if isinstance(error, OSError):
                raise DeliveryError(
                    f"delivery failed, nothing changed: {error.strerror or error}"
                ) from None
            raise

    def _sink_call(self, target: str, action: str) -> contextlib.AbstractContextManager[None]:
        """Guard a call into a target's sink; ``OSError`` stays a delivery failure."""
        sink = self.config.target(target).sink
        return self.plugins.guard(SINK, sink, action, passthrough=(OSError,))

    # ------------------------------------------------------------------ other commands

    def unit_dropin(self, name: str) -> tuple[Target, str]:
        """The ``[Service]`` drop-in that makes a target's unit load its credentials."""
        self.validate()
        target = self.config.target(name)
        if target.kind != "unit":
            raise ConfigError(
                f"target {name!r} is a VM; its host unit is a separate 'unit' target",
                file=self.config.label,
                key=target.where,
            )
        with self.plugins.guard(SINK, target.sink, "unit_settings()"):
            lines = self.sink(target).unit_settings()
        header = [
            # The label is a path: escaped, so a newline in it cannot start a directive.
            f"# Generated by credbridge for {target.unit} from {printable(self.config.label)}.",
            "# Re-run 'credbridge unit --install' after changing the config.",
            "[Service]",
        ]
        return target, "\n".join([*header, *lines]) + "\n"

    def rotate(self, target_name: str, credential: str) -> str:
        """Replace a generated credential's value, keeping the old one as previous."""
        target = self.config.target(target_name)
        spec = target.credential(credential)
        if spec is None:
            raise ConfigError(
                f"target {target_name!r} has no credential {credential!r}",
                file=self.config.label,
                key=target.where,
            )
        request = links.follow(self.config, target, spec)
        scheme = request.reference.scheme
        source = self.source(scheme)
        if not isinstance(source, RotatableSource):
            raise ConfigError(
                f"{spec.text} is not generated by credbridge; rotate it where it is kept",
                file=self.config.label,
                key=spec.where,
            )
        with self._locked_run(), self.plugins.guard(SOURCE, scheme, "rotate()"):
            return source.rotate(request)

    def check(self, names: Sequence[str] = ()) -> list[CheckResult]:
        """Validate the config, resolve every credential without side effects, then ask each
        target's sink (and a VM's launcher) whether it would take them, as deliver/launch do."""
        self.validate()
        targets = self.select_targets(names, kind=None)
        wanted = [
            (t, spec, links.follow(self.config, t, spec)) for t in targets for spec in t.credentials
        ]
        outcomes = self.resolve([w[2] for w in wanted], Mode.DRY_RUN)
        results = []
        values: dict[str, dict[str, Secret | Pending]] = {t.name: {} for t in targets}
        try:
            for target, spec, request in wanted:
                outcome = outcomes[request]
                public: str | None = None
                if isinstance(outcome, SourceError):
                    ok = spec.optional and isinstance(outcome, NotFound)
                    detail = f"{outcome.kind}: {outcome.problem}" + (" (optional)" if ok else "")
                    if not ok:
                        values[target.name][spec.name] = Pending(f"unresolved: {outcome.kind}")
                elif isinstance(outcome, Pending):
                    ok, detail = True, outcome.reason
                    values[target.name][spec.name] = outcome
                else:
                    ok, detail = True, "readable"
                    if self.is_public(request.reference):
                        public = _public_text(outcome)
                        lines = public.count("\n") + (not public.endswith("\n"))
                        shown = public.strip() if lines == 1 else f"{lines} lines"
                        detail = f"readable, public: {shown}"
                    values[target.name][spec.name] = outcome
                code = 0 if ok or not isinstance(outcome, SourceError) else int(outcome.exit_code)
                results.append(
                    CheckResult(target.name, spec.name, spec.text, ok, detail, code, public)
                )
            for target in targets:
                results.append(self._check_target(target, values[target.name]))
        finally:
            _wipe(v for target_values in values.values() for v in target_values.values())
        return results

    def _check_target(self, target: Target, values: Mapping[str, Secret | Pending]) -> CheckResult:
        """What deliver/launch would refuse for this target: one result naming the target."""
        vm = target.kind == "vm"
        what = f"launcher {target.launcher}" if vm else f"sink {target.sink}"
        try:
            sink = self.sink(target)
            with self.plugins.guard(SINK, target.sink, "plan()"):
                sink.plan(values)
            if vm:
                _check_vm_files(target, self.config)
                launcher = self.launcher(target)
                with self.plugins.guard(LAUNCHER, target.launcher or "", "plan()"):
                    launcher.plan(values)
        except CredbridgeError as error:
            return CheckResult(target.name, "", what, False, str(error), int(error.exit_code))
        ready = "ready to launch" if vm else "ready to deliver"
        return CheckResult(target.name, "", what, True, ready)

    def launch(self, name: str, *, dry_run: bool = False) -> int | Mapping[str, Any]:
        """Resolve a VM target's credentials and run its launcher in the foreground."""
        self.validate()
        target = self.select_targets([name], kind="vm")[0]
        launcher = self.launcher(target)
        if not dry_run:
            launcher.check()  # before anything is generated or written
        mode = Mode.DRY_RUN if dry_run else Mode.DELIVER
        # The store's run lock is held while resolving only, not for the VM's lifetime.
        with contextlib.nullcontext() if dry_run else self._locked_run():
            values, _skipped = self.resolve_targets([target], mode, tolerate=dry_run)
        try:
            if dry_run:
                with self.plugins.guard(LAUNCHER, target.launcher or "", "plan()"):
                    return launch_plan(launcher.plan(values[target.name]))
            with self.plugins.guard(LAUNCHER, target.launcher or "", "launch()"):
                return launcher.launch(self.deliveries(target, values[target.name]))
        finally:
            _wipe(values[target.name].values())


VM_FILES = ("kernel", "initramfs", "firmware")
"""Keys of the VM description (docs/vm.md) that name files the hypervisor must find."""


def _check_vm_files(target: Target, config: Config) -> None:
    for key in VM_FILES:
        value = target.launcher_settings.get(key)
        if isinstance(value, str) and not config.resolve_path(value).exists():
            raise LaunchError(
                f"{config.label}: {target.where}.launcher.{key}: "
                f"no file {config.resolve_path(value)}"
            )


def launch_plan(plan: Mapping[str, Any]) -> dict[str, Any]:
    """A launcher's plan with every key of :data:`PLAN_KEYS`, in that order, then its own."""
    lists = {"argv", "helpers", "requests", "credentials", "warnings"}
    shaped = {key: plan.get(key, [] if key in lists else None) for key in PLAN_KEYS}
    shaped.update((key, value) for key, value in plan.items() if key not in shaped)
    return shaped


_TERMINATING = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold termination signals while targets are swapped, so a stop between two commits
    cannot leave one target new and another old; they are delivered right after.

    The handlers are swapped (not only the main thread's signal mask), so a signal that the
    kernel hands to another thread is held too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {
        signum: signal.signal(signum, lambda signum, _frame: received.append(signum))
        for signum in _TERMINATING
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for held in dict.fromkeys(received):
            signal.raise_signal(held)


def _record(report: DeliveryReport) -> None:
    """Record the units a committed delivery still has to act on (before the first one)."""
    if not report.units:
        return
    for record in report.records:
        try:
            record.write(report.units)
        except (CredbridgeError, OSError) as error:
            why = _describe(error)  # no traceback: the path and the reason are the whole story
            log.error("cannot record the restarts still to do in %s: %s", record.path, why)  # noqa: TRY400


def _public_text(value: Secret) -> str:
    """A public value as text for plans and checks (only ever called for public values)."""
    return value.reveal().decode("utf-8", errors="replace")


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    return str(error)
