"""Resolution: a :class:`Resolver` opens sources and the store of one config and turns
references into values, every scheme concurrently, each source asked once per batch.

It is what ``credbridge get`` and ``export`` need, and all they load: delivery, its run locks,
plans, commits and unit restarts build on it in :mod:`credbridge.core.engine`
(:class:`~credbridge.core.engine.Session`), which a command that only reads values never imports.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from credbridge.core import links
from credbridge.core.config import Config, CredentialSpec, Target, keypath
from credbridge.core.errors import (
    BadReference,
    ConfigError,
    CredbridgeError,
    NotFound,
    PluginError,
    ResolutionFailed,
    SourceError,
    renamed,
)
from credbridge.core.plugins import SOURCE, STORE, PluginManager, get_plugin_manager
from credbridge.core.reference import Reference, parse_reference
from credbridge.core.secret import Secret
from credbridge.core.threads import map_in_threads
from credbridge.core.types import (
    Mode,
    Outcome,
    Pending,
    Request,
    Source,
    SourceContext,
    Store,
    StoreContext,
)
from credbridge.core.validation import check_reference

if TYPE_CHECKING:
    from credbridge.core.remote import Redactor

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)`` while a run goes on (a terminal's counter)."""


def _empty_config() -> Config:
    return Config(path=None, directory=Path.cwd(), targets={})


class Resolver:
    """Values of one config's references. Close it (or use ``with``) when done."""

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
        self._store: GuardedStore | None = None
        self._store_guard = threading.Lock()
        # Server texts in errors are checked against every value this session resolved, once
        # the outermost resolve() has every outcome (a source resolves its login material
        # through a nested call). Nested calls' values (tokens, soon wiped) are indexed at
        # once; the outermost calls' values only when an error needs them.
        self._resolved: list[Secret] = []
        self._nested_values: Redactor | None = None
        self._resolving = 0
        self._resolving_guard = threading.Lock()

    def __enter__(self) -> Resolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for scheme, source in self._sources.items():
            try:
                with self.plugins.guard(SOURCE, scheme, "close()"):
                    source.close()
            except CredbridgeError as error:
                log.warning("%s", error)
        self._sources.clear()

    # ------------------------------------------------------------------ references

    def check_reference(self, reference: Reference) -> None:
        """Syntax check of a reference against the source that owns its scheme (no I/O)."""
        check_reference(reference, self.plugins)

    def is_public(self, reference: str | Reference) -> bool:
        """Whether a reference selects a public value (its source's ``SourceType.public``),
        ``target:`` links followed. Only public values may be printed to a terminal without
        ``--reveal``, exported, shown by ``check``/``--dry-run`` or delivered world-readable."""
        parsed = parse_reference(reference) if isinstance(reference, str) else reference
        parsed = links.linked_reference(self.config, parsed)
        found = self.plugins.lookup(SOURCE, parsed.scheme)
        return found is not None and found[0].selects_public(parsed)

    # ------------------------------------------------------------------ opening plugins

    def store(self) -> Store:
        with self._store_guard:
            if self._store is None:
                kind = self.config.store_type
                found = self.plugins.lookup(STORE, kind)
                if found is None:
                    raise ConfigError(
                        f"unknown store type {kind!r}", file=self.config.label, key="store.type"
                    )
                context = StoreContext(
                    self.config.store_settings,
                    self.config.directory,
                    "store",
                    self.config.label,
                    resolve=self.resolve_one,
                )
                with self.plugins.guard(STORE, kind, "open()"):
                    self._store = GuardedStore(found[0].open(context), self.plugins, kind)
            self._store_used(self._store)
            return self._store

    def _store_used(self, store: GuardedStore) -> None:
        """Called (under the store's guard) each time a source asks for the store: a
        delivery locks it here on first use."""

    def source(self, scheme: str) -> Source:
        if scheme not in self._sources:
            found = self.plugins.lookup(SOURCE, scheme)
            if found is None:
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
            with self.plugins.guard(SOURCE, scheme, "open()"):
                self._sources[scheme] = found[0].open(context)
        return self._sources[scheme]

    # ------------------------------------------------------------------ resolution

    def resolve(
        self, requests: Iterable[Request], mode: Mode = Mode.DELIVER
    ) -> dict[Request, Outcome]:
        """Resolve requests, all schemes concurrently; failures are returned, not raised.

        A failure's server text (what a Vault or AWS error answer said) is shown only when
        this is the outermost call and every outcome is in: then no value of the run can
        arrive any more, and the text is withheld if it quotes any of them (docs/security.md).
        """
        with self._resolving_guard:
            self._resolving += 1
        outermost = False
        try:
            results = self._resolve(requests, mode)
        finally:
            with self._resolving_guard:
                self._resolving -= 1
                outermost = self._resolving == 0
        values = [v for v in results.values() if isinstance(v, Secret)]
        if not outermost:
            if values:
                with self._resolving_guard:
                    if self._nested_values is None:
                        self._nested_values = _redactor()
                    for value in values:
                        self._nested_values.add(value)
            return results
        with self._resolving_guard:
            self._resolved += values
            known, nested = list(self._resolved), self._nested_values
        pending = [e for e in results.values() if isinstance(e, SourceError) and e.server_text]
        if pending:
            _disclose(pending, known, nested)
        return results

    def _resolve(
        self, requests: Iterable[Request], mode: Mode = Mode.DELIVER
    ) -> dict[Request, Outcome]:
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
                with self.plugins.guard(SOURCE, scheme, "fetch()"):
                    outcome = source.fetch(batch, mode)
            except SourceError as error:
                return {r: renamed(error, str(r.reference)) for r in batch}
            missing = [r for r in batch if r not in outcome]
            if missing:
                raise PluginError(
                    f"source {scheme!r} returned no result for {missing[0].reference}"
                )
            return outcome

        if self.progress:
            self.progress("resolving", 0, total)
        schemes = list(by_scheme)
        for partial in map_in_threads(run, schemes, workers=len(schemes), name="credbridge-scheme"):
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
        if links.is_link(reference):
            request = links.follow_reference(self.config, reference)
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
                wanted.append((target, spec, links.follow(self.config, target, spec)))
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


class GuardedStore(Store):
    """The store as sources see it: every call attributed to the store's plugin on failure."""

    def __init__(self, store: Store, plugins: PluginManager, name: str) -> None:
        self._inner = store
        self._name = name
        # OSError and ValueError are part of the Store contract (sources turn them into
        # typed errors naming the key); anything else is a bug in the store's plugin.
        self._guard = functools.partial(
            plugins.guard, STORE, name, passthrough=(OSError, ValueError)
        )

    def read(self, key: str, *, previous: bool = False) -> Secret | None:
        with self._guard("read()"):
            return self._inner.read(key, previous=previous)

    def create(self, key: str, value: Secret) -> Secret:
        with self._guard("create()"):
            return self._inner.create(key, value)

    def rotate(self, key: str, value: Secret) -> None:
        with self._guard("rotate()"):
            self._inner.rotate(key, value)

    def keys(self) -> list[str]:
        with self._guard("keys()"):
            return self._inner.keys()

    def location(self) -> str:
        with self._guard("location()"):
            return self._inner.location()

    def lock_file(self) -> Path:
        with self._guard("lock_file()"):
            path: object = self._inner.lock_file()
        if not isinstance(path, Path):
            # Plugins written for the API before lock_file() was required returned None.
            raise PluginError(
                f"store {self._name!r}: lock_file() returned no lock file; every store must "
                "serialise rotate with deliver (docs/plugins.md, Store)"
            )
        return path

    def recover(self) -> None:
        with self._guard("recover()"):
            self._inner.recover()

    @contextlib.contextmanager
    def held_for_run(self) -> Iterator[None]:
        """The store's optional ``held_for_run()``: what it holds from its run lock to the end
        of the run (the file store: its write lock, taken once instead of once per value)."""
        # a duck-typed store (not a Store subclass) may lack the optional method
        hold: Callable[[], contextlib.AbstractContextManager[None]] | None = getattr(
            self._inner, "held_for_run", None
        )
        if hold is None:
            yield
            return
        with self._guard("held_for_run()"):
            entered = hold()
            entered.__enter__()
        try:
            yield
        finally:
            with self._guard("held_for_run()"):
                entered.__exit__(None, None, None)


def _wipe(values: Iterable[Secret | Pending]) -> None:
    for value in values:
        if isinstance(value, Secret):
            value.wipe()


def _redactor() -> Redactor:
    from credbridge.core.remote import Redactor

    return Redactor()


def _disclose(
    errors: Sequence[SourceError], values: Sequence[Secret], nested: Redactor | None
) -> None:
    from credbridge.core.remote import WITHHELD, disclose

    redactor = _redactor()
    for value in values:
        if value.wiped:
            # A value no longer readable cannot be looked for: show no server text at all.
            for error in errors:
                error.disclose(WITHHELD)
            return
        redactor.add(value)
    disclose(errors, redactor, *([nested] if nested is not None else []))
