"""Loading plugins from the ``credbridge`` entry-point group and collecting their records."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

import pluggy
from credbridge.core import hookspecs
from credbridge.core.errors import PluginError
from credbridge.core.types import LauncherType, SinkType, SourceType, StoreType

log = logging.getLogger(__name__)

GROUP = "credbridge"
OWN_DISTRIBUTION = "credbridge"
DISABLE_VAR = "CREDBRIDGE_DISABLE_PLUGINS"
LOAD_VAR = "CREDBRIDGE_LOAD_PLUGINS"
RESERVED_SCHEMES = frozenset({"target"})
"""Schemes the core resolves itself; no plugin may claim them."""

R = TypeVar("R", SourceType, SinkType, LauncherType, StoreType)


@dataclass
class PluginInfo:
    """One loaded (or skipped) plugin, as ``credbridge plugins`` shows it."""

    name: str
    module: str
    distribution: str
    version: str
    builtin: bool
    sources: list[str] = field(default_factory=list)
    sinks: list[str] = field(default_factory=list)
    launchers: list[str] = field(default_factory=list)
    stores: list[str] = field(default_factory=list)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "sources": self.sources,
            "sinks": self.sinks,
            "launchers": self.launchers,
            "stores": self.stores,
            "error": self.error,
        }


def _csv(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


class PluginManager:
    """A pluggy manager with survivable loading and typed, conflict-checked record lookup."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._cache: dict[str, dict[str, tuple[Any, str]]] = {}

    # ------------------------------------------------------------------ loading

    def load_entrypoints(self, env: os._Environ[str] | dict[str, str] | None = None) -> None:
        """Register every plugin of the entry-point group, honouring the env controls.

        ``CREDBRIDGE_DISABLE_PLUGINS=a,b`` blocks plugins by entry-point name (built-ins too).
        ``CREDBRIDGE_LOAD_PLUGINS=dist1,dist2`` loads only those third-party distributions
        (empty: none); credbridge's own plugins always load unless disabled by name.
        A plugin that fails to import or validate is reported and skipped.
        """
        environ = os.environ if env is None else env
        disabled = _csv(environ.get(DISABLE_VAR)) or set()
        allowed = _csv(environ.get(LOAD_VAR))
        for name in disabled:
            self.pm.set_blocked(name)
        for ep in sorted(entry_points(group=GROUP), key=lambda e: (e.dist is None, e.name)):
            dist = ep.dist.metadata["Name"] if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else "unknown"
            builtin = dist == OWN_DISTRIBUTION
            if ep.name in disabled:
                log.debug("plugin %s disabled by %s", ep.name, DISABLE_VAR)
                continue
            if (
                not builtin
                and allowed is not None
                and dist not in allowed
                and ep.name not in allowed
            ):
                log.debug("plugin %s (%s) not in %s", ep.name, dist, LOAD_VAR)
                continue
            if self.pm.has_plugin(ep.name):
                continue
            self._load_one(ep, dist, version, builtin)
        self._check_pending()

    def _load_one(self, ep: EntryPoint, dist: str, version: str, builtin: bool) -> None:
        info = PluginInfo(ep.name, ep.value, dist, version, builtin)
        self.infos[ep.name] = info
        try:
            plugin = ep.load()
            self.pm.register(plugin, name=ep.name)
        except Exception as error:  # noqa: BLE001 - a broken plugin must never break credbridge
            info.error = f"{type(error).__name__}: {error}"
            log.warning("plugin %s from %s %s skipped: %s", ep.name, dist, version, info.error)

    def register(self, plugin: object, name: str, *, distribution: str = "(registered)") -> None:
        """Register an in-process plugin (tests, embedding tools)."""
        self.pm.register(plugin, name=name)
        self.infos[name] = PluginInfo(name, repr(plugin), distribution, "", builtin=False)
        self._cache.clear()
        self._check_pending()

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.infos.pop(name, None)
        self._cache.clear()

    def _check_pending(self) -> None:
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as error:
            name = self.pm.get_name(error.plugin) or "?"
            self.pm.unregister(error.plugin)
            info = self.infos.get(name)
            if info is not None:
                info.error = str(error)
            log.warning("plugin %s skipped: %s", name, error)
            self._check_pending()

    # ------------------------------------------------------------------ records

    def _collect(
        self, hook: str, kind: str, record_type: type[R], key: Callable[[R], str]
    ) -> dict[str, tuple[R, str]]:
        if hook in self._cache:
            return self._cache[hook]
        caller = getattr(self.pm.hook, hook)
        found: dict[str, tuple[R, str]] = {}
        for impl in reversed(caller.get_hookimpls()):
            provider = impl.plugin_name
            try:
                records: Iterable[Any] = impl.function() or ()
                records = list(records)
            except Exception as error:  # noqa: BLE001 - report which plugin broke, keep going
                log.warning(
                    "plugin %s failed in %s: %s: %s", provider, hook, type(error).__name__, error
                )
                if provider in self.infos:
                    self.infos[provider].error = f"{hook}: {type(error).__name__}: {error}"
                continue
            for record in records:
                if not isinstance(record, record_type):
                    raise PluginError(
                        f"plugin {provider!r} returned {type(record).__name__} from {hook}, "
                        f"expected {record_type.__name__}"
                    )
                name = key(record)
                if kind == "source scheme" and name in RESERVED_SCHEMES:
                    raise PluginError(f"plugin {provider!r} claims the reserved scheme {name!r}")
                if name in found:
                    other = found[name][1]
                    raise PluginError(
                        f"{kind} {name!r} is provided by two plugins: {self._describe(other)} and "
                        f"{self._describe(provider)}; uninstall or disable one "
                        f"({DISABLE_VAR}=NAME)"
                    )
                found[name] = (record, provider)
                info = self.infos.get(provider)
                if info is not None:
                    getattr(
                        info,
                        {
                            "source scheme": "sources",
                            "sink": "sinks",
                            "launcher": "launchers",
                            "store": "stores",
                        }[kind],
                    ).append(name)
        self._cache[hook] = found
        return found

    def _describe(self, provider: str) -> str:
        info = self.infos.get(provider)
        if info is None:
            return repr(provider)
        return f"{provider!r} (from {info.distribution} {info.version})".rstrip()

    def sources(self) -> dict[str, tuple[SourceType, str]]:
        return self._collect("credbridge_sources", "source scheme", SourceType, lambda r: r.scheme)

    def sinks(self) -> dict[str, tuple[SinkType, str]]:
        return self._collect("credbridge_sinks", "sink", SinkType, lambda r: r.name)

    def launchers(self) -> dict[str, tuple[LauncherType, str]]:
        return self._collect("credbridge_launchers", "launcher", LauncherType, lambda r: r.name)

    def stores(self) -> dict[str, tuple[StoreType, str]]:
        return self._collect("credbridge_stores", "store", StoreType, lambda r: r.name)

    def collect_all(self) -> None:
        """Call every hook once (fills the per-plugin lists for ``credbridge plugins``)."""
        self.sources()
        self.sinks()
        self.launchers()
        self.stores()


_default: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide manager, loaded from entry points on first use."""
    global _default
    if _default is None:
        manager = PluginManager()
        manager.load_entrypoints()
        _default = manager
    return _default


def reset_plugin_manager() -> None:
    """Forget the process-wide manager (tests; after installing a plugin in-process)."""
    global _default
    _default = None
