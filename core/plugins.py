"""Loading plugins from the ``credbridge`` entry-point group and collecting their records.

One policy for broken plugins (docs/plugins.md, "What to do if it breaks"): a plugin that
cannot be imported, fails pluggy's validation (a misspelt hook: the nearest hook name is
suggested), raises in a hook, or returns a record of the wrong type, an invalid or a reserved
name is *skipped with a warning naming it*, and credbridge keeps working. Two plugins claiming
one name are a *conflict*: only the commands that look that name up fail, naming both plugins
and the ``CREDBRIDGE_DISABLE_PLUGINS`` value that disables one. ``credbridge plugins`` never
fails: it lists every plugin with its state, and every conflict.

Hooks are called through pluggy's hook caller (so ``wrapper=True`` hook implementations and
pluggy's tracing work). To know which plugin returned which record, and to keep one plugin's
failure from hiding the others' records, each plugin is registered through a small proxy whose
hook functions tag what they return with the plugin's name and catch what they raise
(core/plugin_calls.py, with the kinds of record and what is known of each plugin).

Finding the entry points is core/discovery.py.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy
from credbridge.core import hookspecs
from credbridge.core.discovery import FoundEntryPoint, find_entry_points, load_object, normalize
from credbridge.core.errors import CredbridgeError, PluginError, PluginFailed
from credbridge.core.plugin_calls import (
    KINDS,
    LAUNCHER,
    SINK,
    SOURCE,
    STORE,
    AttributedPlugin,
    Conflict,
    HookFailed,
    Kind,
    PluginInfo,
    Provided,
    R,
    failure_text,
    suggest_hook,
    undecorated_hooks,
)
from credbridge.core.types import LauncherType, SinkType, SourceType, StoreType

if TYPE_CHECKING:
    import click

log = logging.getLogger(__name__)

DISABLE_VAR = "CREDBRIDGE_DISABLE_PLUGINS"
LOAD_VAR = "CREDBRIDGE_LOAD_PLUGINS"
TRACE_VAR = "CREDBRIDGE_TRACE_PLUGINS"
RESERVED_SCHEMES = frozenset({"target"})
"""Schemes the core resolves itself; no plugin may claim them."""
CORE = "core"
"""The pseudo-plugin ``credbridge plugins`` lists for what the core provides (``target:``)."""


# --------------------------------------------------------------------------- the manager


class PluginManager:
    """A pluggy manager with survivable loading and typed, conflict-checked record lookup."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.problems: list[str] = []
        """Problems with the plugin settings themselves (unknown names in the env vars)."""
        self._records: dict[str, dict[str, list[tuple[Any, str]]]] = {}
        self._hidden: dict[str, object] = {}
        if os.environ.get(TRACE_VAR, "") not in {"", "0"}:
            self.trace()

    # ------------------------------------------------------------------ loading

    def load_entrypoints(self, env: Mapping[str, str] | None = None) -> None:
        """Register every plugin of the entry-point group, honouring the env controls.

        ``CREDBRIDGE_DISABLE_PLUGINS=a,b`` skips plugins by entry-point or distribution name
        (built-ins too). ``CREDBRIDGE_LOAD_PLUGINS=dist1,dist2`` loads only those third-party
        plugins (empty: none); credbridge's own always load unless disabled. Names compare
        like distribution names (``credbridge_dotenv`` is ``credbridge-dotenv``).
        """
        environ = os.environ if env is None else env
        disabled = _name_list(environ.get(DISABLE_VAR))
        allowed = _name_list(environ.get(LOAD_VAR)) if LOAD_VAR in environ else None
        known: set[str] = set()
        for ep in find_entry_points():
            keys = {normalize(ep.name), normalize(ep.distribution)}
            known |= keys
            if ep.name in self.infos or self.pm.has_plugin(ep.name):
                continue
            info = PluginInfo(ep.name, ep.value, ep.distribution, ep.version, ep.builtin)
            self.infos[ep.name] = info
            if keys & disabled:
                info.state = "disabled"
                log.debug("plugin %s disabled by %s", ep.name, DISABLE_VAR)
            elif allowed is not None and not ep.builtin and not keys & allowed:
                info.state = "not loaded"
                log.debug("plugin %s (%s) not in %s", ep.name, ep.distribution, LOAD_VAR)
            else:
                self._load_one(ep, info)
        self._report_unknown(DISABLE_VAR, disabled - known)
        self._report_unknown(LOAD_VAR, (allowed or set()) - known)
        self._check_pending()

    def _report_unknown(self, variable: str, names: set[str]) -> None:
        if not names:
            return
        known = sorted({normalize(i.name) for i in self.infos.values()})
        problem = (
            f"{variable} names no installed plugin: {', '.join(sorted(names))} "
            f"(installed: {', '.join(known) or 'none'})"
        )
        self.problems.append(problem)
        log.warning("%s", problem)

    def _load_one(self, ep: FoundEntryPoint, info: PluginInfo) -> None:
        try:
            plugin = load_object(ep.value)
        except Exception as error:  # noqa: BLE001 - a broken plugin must never break credbridge
            self._fail(info, f"cannot be imported: {failure_text(error)}")
            return
        self._register(plugin, info)

    def _register(self, plugin: object, info: PluginInfo) -> bool:
        for function in undecorated_hooks(plugin):
            self._warn(
                info,
                f"{function} has no @hookimpl and is ignored "
                "(decorate it with @credbridge.core.hookimpl)",
            )
        try:
            self.pm.register(AttributedPlugin(plugin, info.name, self.pm), name=info.name)
        except (pluggy.PluginValidationError, ValueError) as error:
            reason = str(error).replace("\n", " ")
            self._fail(info, f"is not a valid plugin: {reason}")
            return False
        self._records.clear()
        return True

    def _fail(self, info: PluginInfo, reason: str) -> None:
        info.state = "failed"
        info.error = reason
        log.warning("%s %s; skipped", info.describe(), reason)

    def _warn(self, info: PluginInfo, message: str) -> None:
        info.warnings.append(message)
        log.warning("%s: %s", info.describe(), message)

    def register(self, plugin: object, name: str, *, distribution: str = "") -> None:
        """Register a plugin object in this process (tests, embedding tools).

        Raises :class:`PluginError` when it is not a valid plugin.
        """
        if self.pm.has_plugin(name):
            raise PluginError(f"a plugin named {name!r} is already registered")
        info = PluginInfo(name, repr(plugin), distribution, "", False, state="registered")
        self.infos[name] = info
        if not self._register(plugin, info):
            del self.infos[name]
            raise PluginError(f"{info.describe()} {info.error}")
        self._check_pending()
        if info.state == "failed":
            del self.infos[name]
            raise PluginError(f"{info.describe()} {info.error}")

    def unregister(self, name: str) -> object | None:
        """Unregister a plugin by name; returns the plugin object (``None`` if not there)."""
        proxy = self.pm.unregister(name=name) if self.pm.has_plugin(name) else None
        self.infos.pop(name, None)
        self._records.clear()
        return getattr(proxy, "_plugin", None)

    def plugin(self, name: str) -> object | None:
        """The plugin object registered as ``name`` (the module, for entry points)."""
        return getattr(self.pm.get_plugin(name), "_plugin", None)

    def _check_pending(self) -> None:
        while True:
            try:
                self.pm.check_pending()
            except pluggy.PluginValidationError as error:
                name = self.pm.get_name(error.plugin) or "?"
                self.pm.unregister(name=name)
                self._records.clear()
                hook = re.search(r"unknown hook '([^']+)'", str(error))
                reason = (
                    f"implements an unknown hook {hook.group(1)!r}{suggest_hook(hook.group(1))}"
                    if hook
                    else str(error).replace("\n", " ")
                )
                info = self.infos.setdefault(name, PluginInfo(name, "?", "", "", False))
                self._fail(info, reason)
            else:
                return

    def trace(self, write: Callable[[str], object] | None = None) -> None:
        """Print every hook call, who answered and with which names (never a value)."""
        out = write or (lambda line: sys.stderr.write(line + "\n"))

        def before(hook: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
            names = ", ".join(impl.plugin_name for impl in impls)
            out(f"credbridge: trace: {hook}() -> plugins: {names or 'none'}")

        def after(
            outcome: pluggy.Result[Any],
            hook: str,
            impls: Sequence[pluggy.HookImpl],
            kwargs: Mapping[str, Any],
        ) -> None:
            if outcome.exception is not None:
                out(f"credbridge: trace: {hook} raised {type(outcome.exception).__name__}")
                return
            for item in outcome.get_result() or ():
                if isinstance(item, HookFailed):
                    out(f"credbridge: trace: {hook} {item.plugin}: {failure_text(item.error)}")
                else:
                    who = getattr(item, "plugin", "a hook wrapper")
                    names = ", ".join(_record_name(r) for r in item)
                    out(f"credbridge: trace: {hook} {who}: {names or 'nothing'}")

        self.pm.add_hookcall_monitoring(before, after)

    # ------------------------------------------------------------------ records

    def _collect(self, kind: Kind[R]) -> dict[str, list[tuple[R, str]]]:
        if kind.key in self._records:
            return self._records[kind.key]
        found: dict[str, list[tuple[R, str]]] = {}
        for info in self.infos.values():
            getattr(info, kind.key).clear()
        for provider, records in self._call(kind.hook):
            info = self._info(provider)
            accepted: list[tuple[R, str]] = []
            for record in records:
                if not isinstance(record, kind.record_type):
                    self._warn(
                        info,
                        f"{kind.hook} returned {type(record).__name__}, not "
                        f"{kind.record_type.__name__}; its {kind.key} are skipped",
                    )
                    accepted = []
                    break
                name = kind.name_of(record)
                if kind is SOURCE and name in RESERVED_SCHEMES:
                    self._warn(info, f"claims the reserved scheme {name!r}; skipped")
                    continue
                accepted.append((record, provider))
            for record, _ in accepted:
                name = kind.name_of(record)
                found.setdefault(name, []).append((record, provider))
                getattr(info, kind.key).append(name)
        self._records[kind.key] = found
        return found

    def _call(self, hook: str, **kwargs: Any) -> list[tuple[str, list[Any]]]:
        """Call a hook through pluggy; each answer with the plugin that gave it."""
        caller = getattr(self.pm.hook, hook)
        try:
            results = caller(**kwargs)
        except Exception as error:  # noqa: BLE001 - only a hook wrapper can raise here
            wrappers = [i.plugin_name for i in caller.get_hookimpls() if i.wrapper or i.hookwrapper]
            for name in wrappers:
                self.pm.unregister(name=name)
                self._fail(self._info(name), f"failed in its {hook} wrapper: {failure_text(error)}")
            return self._call(hook, **kwargs) if wrappers else []
        answers: list[tuple[str, list[Any]]] = []
        for item in results or ():
            if isinstance(item, HookFailed):
                self._warn(
                    self._info(item.plugin),
                    f"{hook} raised {failure_text(item.error)}; what it provides is skipped",
                )
                continue
            provider = getattr(item, "plugin", None)
            if provider is None:
                wrappers = [
                    i.plugin_name for i in caller.get_hookimpls() if i.wrapper or i.hookwrapper
                ]
                provider = wrappers[0] if len(wrappers) == 1 else "hook wrappers"
            try:
                answers.append((provider, list(item)))
            except Exception as error:  # noqa: BLE001 - a generator that fails half-way
                self._warn(self._info(provider), f"{hook} raised {failure_text(error)}")
        return answers

    def _info(self, name: str) -> PluginInfo:
        return self.infos.setdefault(name, PluginInfo(name, "?", "", "", False))

    def records(self, kind: Kind[R]) -> dict[str, tuple[R, str]]:
        """Every record of a kind that exactly one plugin provides: name -> (record, plugin)."""
        return {n: found[0] for n, found in self._collect(kind).items() if len(found) == 1}

    def names(self, kind: Kind[R]) -> list[str]:
        """Every name of a kind, conflicting ones included (for "known: ..." messages)."""
        names = set(self._collect(kind))
        if kind is SOURCE:
            names |= RESERVED_SCHEMES
        return sorted(names)

    def lookup(self, kind: Kind[R], name: str) -> tuple[R, str] | None:
        """The record named ``name`` and its plugin; ``None`` if no plugin provides it.

        Raises :class:`PluginError` when several plugins claim the name.
        """
        found = self._collect(kind).get(name)
        if not found:
            return None
        if len(found) > 1:
            raise PluginError(self._conflict_message(kind.label, name, [p for _, p in found]))
        return found[0]

    def _conflict_message(self, label: str, name: str, providers: list[str]) -> str:
        described = " and ".join(self._info(p).describe() for p in providers)
        third_party = [p for p in providers if not self._info(p).builtin] or providers[1:]
        setting = f"{DISABLE_VAR}={','.join(normalize(p) for p in third_party)}"
        return (
            f"{label} {name!r} is provided by two plugins: {described}; "
            f"disable one with {setting} (or uninstall it)"
        )

    def conflicts(self) -> list[Conflict]:
        """Every name claimed by several plugins (calls every hook)."""
        found = []
        for kind in KINDS:
            for name, providers in sorted(self._collect(kind).items()):
                if len(providers) > 1:
                    found.append(Conflict(kind.label, name, tuple(p for _, p in providers)))
        return found

    def conflict_message(self, conflict: Conflict) -> str:
        return self._conflict_message(conflict.kind, conflict.name, list(conflict.providers))

    def sources(self) -> dict[str, tuple[SourceType, str]]:
        return self.records(SOURCE)

    def sinks(self) -> dict[str, tuple[SinkType, str]]:
        return self.records(SINK)

    def launchers(self) -> dict[str, tuple[LauncherType, str]]:
        return self.records(LAUNCHER)

    def stores(self) -> dict[str, tuple[StoreType, str]]:
        return self.records(STORE)

    def collect_all(self) -> None:
        """Call every record hook once (fills what ``credbridge plugins`` lists)."""
        for kind in KINDS:
            self._collect(kind)

    # ------------------------------------------------------------------ commands

    def add_commands(self, group: click.Group) -> dict[str, str]:
        """Add the plugins' commands (``credbridge_commands``) to ``group``.

        Plugins get a group of their own to add to, so a plugin can never replace a built-in
        command; a clash is skipped with a warning. Returns command name -> plugin.
        """
        import click

        collector = click.Group(name=group.name)
        added: dict[str, str] = {}
        for provider, names in self._call("credbridge_commands", cli=collector):
            info = self._info(provider)
            info.commands.clear()
            for name in names:
                if name in group.commands or name in added:
                    other = added.get(name, CORE)
                    self._warn(info, f"command {name!r} clashes with {other!r}'s; skipped")
                    continue
                command = collector.commands[name]
                self._guard_command(command, provider, name)
                group.add_command(command, name)
                added[name] = provider
                info.commands.append(name)
        return added

    def _guard_command(self, command: click.Command, provider: str, path: str) -> None:
        """Guard a plugin's command (a group's subcommands too) like every other plugin call:
        anything but a :class:`CredbridgeError` or click's own exits is that plugin's bug."""
        import click

        callback = command.callback
        if callback is not None:
            passthrough = (
                CredbridgeError,
                click.exceptions.Exit,
                click.ClickException,
                click.exceptions.Abort,
            )

            @functools.wraps(callback)
            def guarded(*args: Any, **kwargs: Any) -> Any:
                try:
                    return callback(*args, **kwargs)
                except passthrough:
                    raise
                except Exception as error:
                    what = f"command {path!r}"
                    raise self._info(provider).bug(what, error) from error

            command.callback = guarded
        if isinstance(command, click.Group):
            for name, subcommand in command.commands.items():
                self._guard_command(subcommand, provider, f"{path} {name}")

    # ------------------------------------------------------------------ guarded calls

    @contextlib.contextmanager
    def guard(
        self,
        kind: Kind[Any],
        name: str,
        action: str,
        *,
        passthrough: tuple[type[Exception], ...] = (),
    ) -> Iterator[None]:
        """Turn anything but a :class:`CredbridgeError` raised inside into one attributed line.

        Wrap every call into a plugin's objects; ``passthrough`` are exceptions the contract
        of that call allows (e.g. ``OSError`` from a store)::

            with plugins.guard(SINK, target.sink, "stage()"):
                staged = sink.stage(deliveries)
        """
        try:
            yield
        except CredbridgeError:
            raise
        except passthrough:
            raise
        except Exception as error:
            raise self.failure(kind, name, action, error) from error

    def failure(
        self, kind: Kind[Any], name: str, action: str, error: BaseException
    ) -> PluginFailed:
        """The :class:`PluginFailed` for ``error`` raised by ``kind`` ``name``'s ``action``."""
        found = self._collect(kind).get(name) or []
        info = self._info(found[0][1]) if found else PluginInfo("?", "?", "", "", False)
        return info.bug(f"{kind.label} {name!r} {action}", error)

    # ------------------------------------------------------------------ test support

    def collect(self, kind: Kind[Any]) -> dict[str, list[str]]:
        """Every name of a kind and the plugins that provide it (several: a conflict)."""
        return {n: [p for _, p in found] for n, found in self._collect(kind).items()}

    def hide_plugin(self, name: str) -> list[str]:
        """Unregister a plugin until :meth:`unhide` (``credbridge.testing``)."""
        if not self.pm.has_plugin(name):
            return []
        self._hidden[name] = self.pm.unregister(name=name)
        self._records.clear()
        return [name]

    def hide(self, kind: Kind[Any], names: Iterable[str], keep: str) -> list[str]:
        """Hide every plugin but ``keep`` that provides one of ``names``; returns them."""
        hidden = []
        for name in names:
            for provider in self.collect(kind).get(name, []):
                if provider != keep:
                    hidden += self.hide_plugin(provider)
        return hidden

    def unhide(self, names: Iterable[str]) -> None:
        for name in names:
            proxy = self._hidden.pop(name, None)
            if proxy is not None and not self.pm.has_plugin(name):
                self.pm.register(proxy, name=name)
        self._records.clear()


def _record_name(record: object) -> str:
    return str(getattr(record, "name", record))


def _name_list(value: str | None) -> set[str]:
    if not value:
        return set()
    return {normalize(part.strip()) for part in value.split(",") if part.strip()}


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


__all__ = [
    "CORE",
    "DISABLE_VAR",
    "KINDS",
    "LAUNCHER",
    "LOAD_VAR",
    "RESERVED_SCHEMES",
    "SINK",
    "SOURCE",
    "STORE",
    "TRACE_VAR",
    "Conflict",
    "Kind",
    "PluginInfo",
    "PluginManager",
    "Provided",
    "find_entry_points",
    "get_plugin_manager",
    "normalize",
    "reset_plugin_manager",
    "undecorated_hooks",
]
