"""Resolution and delivery: the part of credbridge that wires sources to sinks.

A :class:`Session` holds one loaded config and the plugin manager, opens sources, the store,
sinks and launchers lazily, and runs the two-phase delivery: resolve everything first, then
stage every target, commit all or roll all back.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credbridge.core.config import Config, CredentialSpec, Target, keypath
from credbridge.core.errors import (
    BadReference,
    ConfigError,
    CredbridgeError,
    DeliveryError,
    NotFound,
    PluginError,
    ResolutionFailed,
    SourceError,
)
from credbridge.core.plugins import PluginManager, get_plugin_manager
from credbridge.core.reference import Reference, parse_reference
from credbridge.core.secret import Secret
from credbridge.core.types import (
    Change,
    Delivery,
    Launcher,
    LauncherContext,
    Mode,
    Outcome,
    Pending,
    PlanEntry,
    Request,
    Sink,
    SinkContext,
    Source,
    SourceContext,
    Staged,
    Store,
    StoreContext,
)
from credbridge.core.units import UnitAction, act_on_units, select_units

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DeliveryEntry:
    """One line of a delivery report or dry-run plan (no values)."""

    target: str
    credential: str
    reference: str
    sink: str
    change: Change
    detail: str = ""

    def as_json(self) -> dict[str, str]:
        return {
            "target": self.target,
            "credential": self.credential,
            "reference": self.reference,
            "sink": self.sink,
            "change": self.change.value,
            "detail": self.detail,
        }


@dataclass
class DeliveryReport:
    dry_run: bool
    entries: list[DeliveryEntry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Optional credentials left out because their source had no value."""
    units: list[UnitAction] = field(default_factory=list)
    """Units to restart or reload because their credentials changed (see
    :meth:`Session.restart_changed`)."""
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "entries": [e.as_json() for e in self.entries],
            "skipped": self.skipped,
            "units": [u.as_json() for u in self.units],
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class CheckResult:
    target: str
    credential: str
    reference: str
    ok: bool
    detail: str
    exit_code: int = 0
    """The exit code of the failure (0 when ok)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "credential": self.credential,
            "reference": self.reference,
            "ok": self.ok,
            "detail": self.detail,
        }


def _empty_config() -> Config:
    return Config(path=None, directory=Path.cwd(), targets={})


class Session:
    """One run of credbridge against one config. Close it (or use ``with``) when done."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        plugins: PluginManager | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.config = config or _empty_config()
        self.plugins = plugins or get_plugin_manager()
        self.progress = progress
        self._sources: dict[str, Source] = {}
        self._store: Store | None = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for source in self._sources.values():
            try:
                source.close()
            except Exception:
                log.debug("closing a source failed", exc_info=True)
        self._sources.clear()

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Check that every scheme, option, sink and launcher named in the config exists."""
        sources = self.plugins.sources()
        sinks = self.plugins.sinks()
        launchers = self.plugins.launchers()
        label = self.config.label
        for target in self.config.targets.values():
            if target.sink not in sinks:
                raise ConfigError(
                    f"unknown sink {target.sink!r} (known: {', '.join(sorted(sinks)) or 'none'})",
                    file=label,
                    key=f"{target.where}.sink",
                )
            sink_type = sinks[target.sink][0]
            if target.kind not in sink_type.target_kinds:
                raise ConfigError(
                    f"sink {target.sink!r} cannot serve a {target.kind} target "
                    f"(it serves: {', '.join(sorted(sink_type.target_kinds))})",
                    file=label,
                    key=f"{target.where}.sink",
                )
            if target.launcher is not None and target.launcher not in launchers:
                known = ", ".join(sorted(launchers)) or "none"
                raise ConfigError(
                    f"unknown launcher {target.launcher!r} (known: {known})",
                    file=label,
                    key=f"{target.where}.launcher",
                )
            for spec in target.credentials:
                if spec.reference.scheme == "target":
                    continue
                try:
                    self.check_reference(spec.reference, sources)
                except BadReference as error:
                    raise ConfigError(str(error), file=label, key=spec.where) from None
        if self.config.store_type not in self.plugins.stores():
            raise ConfigError(
                f"unknown store type {self.config.store_type!r}", file=label, key="store.type"
            )

    def check_reference(
        self, reference: Reference, sources: Mapping[str, Any] | None = None
    ) -> None:
        """Syntax check of a reference against the source that owns its scheme (no I/O)."""
        sources = sources if sources is not None else self.plugins.sources()
        text = str(reference)
        if reference.scheme not in sources:
            known = ", ".join(sorted([*sources, "target"]))
            raise BadReference(text, f"unknown scheme {reference.scheme!r} (known: {known})")
        source_type = sources[reference.scheme][0]
        if source_type.options is not None:
            for key in reference.options:
                if key not in source_type.options:
                    allowed = ", ".join(sorted(source_type.options)) or "none"
                    raise BadReference(
                        text, f"unknown option {key!r} for {reference.scheme}: (allowed: {allowed})"
                    )
        if reference.selector is not None and not source_type.selectors:
            raise BadReference(text, f"{reference.scheme}: references take no '#selector'")
        if source_type.validate is not None:
            source_type.validate(reference)

    # ------------------------------------------------------------------ opening plugins

    def store(self) -> Store:
        if self._store is None:
            stores = self.plugins.stores()
            kind = self.config.store_type
            if kind not in stores:
                raise ConfigError(
                    f"unknown store type {kind!r}", file=self.config.label, key="store.type"
                )
            context = StoreContext(self.config.store_settings, self.config.directory, "store")
            self._store = stores[kind][0].open(context)
        return self._store

    def source(self, scheme: str) -> Source:
        if scheme not in self._sources:
            sources = self.plugins.sources()
            if scheme not in sources:
                raise BadReference(f"{scheme}:", f"unknown scheme {scheme!r}")
            context = SourceContext(
                scheme=scheme,
                settings=self.config.sources.get(scheme, {}),
                config_dir=self.config.directory,
                concurrency=self.config.concurrency,
                resolve=self.resolve_one,
                store=self.store,
                where=keypath("sources", scheme),
                config_file=self.config.label,
            )
            self._sources[scheme] = sources[scheme][0].open(context)
        return self._sources[scheme]

    def sink(self, target: Target) -> Sink:
        sinks = self.plugins.sinks()
        if target.sink not in sinks:
            raise ConfigError(
                f"unknown sink {target.sink!r}", file=self.config.label, key=f"{target.where}.sink"
            )
        context = SinkContext(
            target, self.config.sink_settings(target), self.config, f"{target.where}.sink"
        )
        return sinks[target.sink][0].open(context)

    def launcher(self, target: Target) -> Launcher:
        if target.kind != "vm" or target.launcher is None:
            raise ConfigError(
                f'target {target.name!r} is not a VM (kind = "vm")',
                file=self.config.label,
                key=target.where,
            )
        launchers = self.plugins.launchers()
        if target.launcher not in launchers:
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
        return launchers[target.launcher][0].open(context)

    # ------------------------------------------------------------------ resolution

    def _follow_links(self, spec: CredentialSpec, target: Target) -> Request:
        """``target:T/C`` resolves to C's own reference, owned by C (same generated value)."""
        owner, reference = f"{target.name}/{spec.name}", spec.reference
        while reference.scheme == "target":
            t_name, _, c_name = reference.path.rpartition("/")
            linked = self.config.target(t_name).credential(c_name)
            if linked is None:
                raise ConfigError(
                    f"{reference} names no credential", file=self.config.label, key=spec.where
                )
            owner, reference = f"{t_name}/{c_name}", linked.reference
        return Request(reference, owner)

    def resolve(
        self, requests: Iterable[Request], mode: Mode = Mode.DELIVER
    ) -> dict[Request, Outcome]:
        """Resolve requests, all schemes concurrently; failures are returned, not raised."""
        by_scheme: dict[str, list[Request]] = defaultdict(list)
        for request in dict.fromkeys(requests):
            by_scheme[request.reference.scheme].append(request)
        total = sum(len(v) for v in by_scheme.values())
        done = 0
        results: dict[Request, Outcome] = {}

        def run(scheme: str) -> dict[Request, Outcome]:
            batch = by_scheme[scheme]
            log.debug(
                "resolving %d reference(s) with scheme %s (%s)", len(batch), scheme, mode.value
            )
            try:
                source = self.source(scheme)
                outcome = source.fetch(batch, mode)
            except SourceError as error:
                return {r: _rebind(error, r.reference) for r in batch}
            missing = [r for r in batch if r not in outcome]
            if missing:
                raise PluginError(
                    f"source {scheme!r} returned no result for {missing[0].reference}"
                )
            return outcome

        if self.progress:
            self.progress("resolving", 0, total)
        schemes = list(by_scheme)
        if len(schemes) == 1:
            results.update(run(schemes[0]))
        else:
            with ThreadPoolExecutor(len(schemes), thread_name_prefix="credbridge-scheme") as pool:
                for partial in pool.map(run, schemes):
                    results.update(partial)
                    done += len(partial)
                    if self.progress:
                        self.progress("resolving", done, total)
        if self.progress:
            self.progress("resolving", total, total)
        return results

    def resolve_one(self, text: str | Reference, mode: Mode = Mode.DELIVER) -> Secret:
        """Resolve one reference or raise its :class:`SourceError` (``credbridge get``)."""
        reference = parse_reference(text) if isinstance(text, str) else text
        if reference.scheme == "target":
            t_name, _, c_name = reference.path.rpartition("/")
            spec = self.config.target(t_name).credential(c_name)
            if spec is None:
                raise BadReference(str(reference), "names no credential of this config")
            request = self._follow_links(spec, self.config.target(t_name))
        else:
            self.check_reference(reference)
            request = Request(reference)
        outcome = self.resolve([request], mode)[request]
        if isinstance(outcome, SourceError):
            raise outcome
        if isinstance(outcome, Pending):
            raise NotFound(str(reference), outcome.reason)
        return outcome

    def resolve_targets(
        self, targets: Sequence[Target], mode: Mode, *, tolerate: bool = False
    ) -> tuple[dict[str, dict[str, Secret | Pending]], list[str]]:
        """Resolve every credential of every target; all-or-nothing.

        Returns values per target and the optional credentials skipped because not found.
        Raises :class:`ResolutionFailed` naming each failed credential and its reference;
        with ``tolerate`` (plans only) failures are logged and become :class:`Pending`.
        """
        wanted: list[tuple[Target, CredentialSpec, Request]] = []
        for target in targets:
            for spec in target.credentials:
                wanted.append((target, spec, self._follow_links(spec, target)))
        outcomes = self.resolve([w[2] for w in wanted], mode)
        values: dict[str, dict[str, Secret | Pending]] = {t.name: {} for t in targets}
        failures: list[SourceError] = []
        skipped: list[str] = []
        for target, spec, request in wanted:
            outcome = outcomes[request]
            if isinstance(outcome, SourceError):
                if spec.optional and isinstance(outcome, NotFound):
                    skipped.append(f"{target.name}/{spec.name}")
                    continue
                if tolerate:
                    # A plan made outside the unit cannot read credential: inputs; show the gap.
                    log.warning("%s", outcome.for_credential(target.name, spec.name))
                    values[target.name][spec.name] = Pending(f"unresolved here: {outcome.kind}")
                    continue
                failures.append(outcome.for_credential(target.name, spec.name))
            else:
                values[target.name][spec.name] = outcome
        if failures:
            for target_values in values.values():
                _wipe(target_values.values())
            raise ResolutionFailed(failures)
        return values, skipped

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
        self, names: Sequence[str] = (), *, dry_run: bool = False, restart: bool | None = None
    ) -> DeliveryReport:
        """Resolve and deliver the named unit targets (all when none are named).

        With ``dry_run`` nothing is written or generated; the report says what would change.
        ``report.units`` lists the units whose credentials changed and what ``on_change`` asks
        for (``restart``: True for ``--restart``, False for ``--no-restart``); nothing acts on
        them here -- call :meth:`restart_changed` once the delivery is committed.
        """
        self.validate()
        targets = self.select_targets(names)
        mode = Mode.DRY_RUN if dry_run else Mode.DELIVER
        sinks = {t.name: self.sink(t) for t in targets}  # sink settings fail before any fetch
        values, skipped = self.resolve_targets(targets, mode)
        report = DeliveryReport(dry_run=dry_run, skipped=skipped)
        try:
            for target in targets:
                plan = sinks[target.name].plan(values[target.name])
                report.entries.extend(self._entries(target, plan))
            report.units = select_units(
                self.config,
                targets,
                [(e.target, e.credential, e.change) for e in report.entries],
                self._owner,
                restart,
            )
            if names:
                report.warnings = self._link_warnings(targets, values)
            if dry_run:
                return report
            self._commit(targets, sinks, values)
            return report
        finally:
            for target_values in values.values():
                _wipe(target_values.values())

    def restart_changed(self, report: DeliveryReport) -> list[UnitAction]:
        """Restart or reload the units of a committed delivery (``report.units``), once each,
        in order; failures are returned per unit (the delivery stays committed)."""
        if report.dry_run:
            return report.units
        report.units = act_on_units(report.units)
        return report.units

    def _owner(self, target: Target, spec: CredentialSpec) -> str:
        return self._follow_links(spec, target).owner or f"{target.name}/{spec.name}"

    def _link_warnings(
        self, delivered: Sequence[Target], values: Mapping[str, Mapping[str, Secret | Pending]]
    ) -> list[str]:
        """Targets left out of this delivery that share a secret (``target:`` links) with a
        delivered one and would keep a different value of it."""
        holders: dict[str, tuple[str, str]] = {}
        for target in delivered:
            for spec in target.credentials:
                holders.setdefault(self._owner(target, spec), (target.name, spec.name))
        chosen = {t.name for t in delivered}
        warnings = []
        for other in self.config.targets.values():
            if other.name in chosen or other.kind != "unit":
                continue
            shared = {}
            for spec in other.credentials:
                holder = holders.get(self._owner(other, spec))
                if holder is not None:
                    shared[spec.name] = holder
            if not shared:
                continue
            subset: dict[str, Secret | Pending] = {
                name: value
                for name, (t, c) in shared.items()
                if isinstance(value := values[t].get(c), Secret)
            }
            if not subset:
                continue
            try:
                plan = self.sink(other).plan(subset)
            except CredbridgeError as error:
                log.debug("cannot compare %s with the delivered values: %s", other.name, error)
                continue
            for entry in plan:
                if entry.credential in subset and entry.change is Change.CHANGE:
                    t, c = shared[entry.credential]
                    warnings.append(
                        f"{other.name}/{entry.credential} shares its value with {t}/{c} through "
                        f"a target: link but was not delivered; the two now differ: run "
                        f"'credbridge deliver {other.name}'"
                    )
        return warnings

    def affected_by(self, target_name: str, credential: str) -> tuple[list[str], list[Target]]:
        """Targets holding the value of ``target_name/credential`` (``target:`` links and
        ``credential:`` inputs of a VM's unit followed): unit targets to deliver, VM targets
        that read it at launch."""
        target = self.config.target(target_name)
        spec = target.credential(credential)
        if spec is None:
            raise ConfigError(
                f"target {target_name!r} has no credential {credential!r}",
                file=self.config.label,
                key=target.where,
            )
        owner = self._owner(target, spec)
        units: list[str] = []
        names_in_unit: set[tuple[str | None, str]] = set()
        for other in self.config.targets.values():
            if other.kind != "unit":
                continue
            for other_spec in other.credentials:
                if self._owner(other, other_spec) == owner:
                    if other.name not in units:
                        units.append(other.name)
                    names_in_unit.add((other.unit, other_spec.name))
        vms = []
        for other in self.config.targets.values():
            if other.kind != "vm":
                continue
            for other_spec in other.credentials:
                reference = other_spec.reference
                inside = (
                    reference.scheme == "credential"
                    and (other.unit, reference.path) in names_in_unit
                )
                if inside or self._owner(other, other_spec) == owner:
                    vms.append(other)
                    break
        return units, vms

    def _entries(self, target: Target, plan: Sequence[PlanEntry]) -> list[DeliveryEntry]:
        refs = {spec.name: spec.text for spec in target.credentials}
        return [
            DeliveryEntry(
                target.name,
                e.credential,
                refs.get(e.credential, "-"),
                target.sink,
                e.change,
                e.detail,
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
    ) -> None:
        staged: list[tuple[str, Staged]] = []
        committed: list[tuple[str, Staged]] = []
        try:
            for index, target in enumerate(targets):
                if self.progress:
                    self.progress("staging", index, len(targets))
                staged.append(
                    (
                        target.name,
                        sinks[target.name].stage(self.deliveries(target, values[target.name])),
                    )
                )
            with _signals_deferred():
                for name, item in staged:
                    item.commit()
                    committed.append((name, item))
                    log.info("delivered %s", name)
        except BaseException as error:
            for name, item in reversed(staged):
                try:
                    item.rollback()
                    log.info("rolled back %s", name)
                except Exception:
                    log.error("rollback of target %s failed", name, exc_info=True)
            if isinstance(error, CredbridgeError):
                raise
            if isinstance(error, OSError):
                raise DeliveryError(
                    f"delivery failed, nothing changed: {error.strerror or error}"
                ) from None
            raise
        for name, item in committed:
            try:
                item.finalize()
            except Exception:
                log.warning("cleaning up the previous set of %s failed", name, exc_info=True)

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
        lines = self.sink(target).unit_settings()
        header = [
            f"# Generated by credbridge for {target.unit} from {self.config.label}.",
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
        request = self._follow_links(spec, target)
        source = self.source(request.reference.scheme)
        rotate = getattr(source, "rotate", None)
        if rotate is None:
            raise ConfigError(
                f"{spec.text} is not generated by credbridge; rotate it where it is kept",
                file=self.config.label,
                key=spec.where,
            )
        location: str = rotate(request)
        return location

    def check(self, names: Sequence[str] = ()) -> list[CheckResult]:
        """Validate the config, then resolve every credential without side effects."""
        self.validate()
        targets = self.select_targets(names, kind=None)
        wanted = [(t, spec, self._follow_links(spec, t)) for t in targets for spec in t.credentials]
        outcomes = self.resolve([w[2] for w in wanted], Mode.DRY_RUN)
        results = []
        for target, spec, request in wanted:
            outcome = outcomes[request]
            if isinstance(outcome, SourceError):
                ok = spec.optional and isinstance(outcome, NotFound)
                detail = f"{outcome.kind}: {outcome.problem}" + (" (optional)" if ok else "")
            elif isinstance(outcome, Pending):
                ok, detail = True, outcome.reason
            else:
                ok, detail = True, "readable"
                outcome.wipe()
            code = 0 if ok or not isinstance(outcome, SourceError) else int(outcome.exit_code)
            results.append(CheckResult(target.name, spec.name, spec.text, ok, detail, code))
        return results

    def launch(self, name: str, *, dry_run: bool = False) -> int | Mapping[str, Any]:
        """Resolve a VM target's credentials and run its launcher in the foreground."""
        self.validate()
        target = self.select_targets([name], kind="vm")[0]
        launcher = self.launcher(target)
        mode = Mode.DRY_RUN if dry_run else Mode.DELIVER
        values, _skipped = self.resolve_targets([target], mode, tolerate=dry_run)
        try:
            if dry_run:
                return launcher.plan(values[target.name])
            return launcher.launch(self.deliveries(target, values[target.name]))
        finally:
            _wipe(values[target.name].values())


_TERMINATING = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold termination signals while targets are swapped, so a stop between two commits
    cannot leave one target new and another old; they are delivered right after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _TERMINATING)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _wipe(values: Iterable[Secret | Pending]) -> None:
    for value in values:
        if isinstance(value, Secret):
            value.wipe()


def _rebind(error: SourceError, reference: Reference) -> SourceError:
    if error.reference == str(reference):
        return error
    return type(error)(str(reference), error.problem)
