"""How the plugin manager calls a plugin and names it in what it reports.

The kinds of record (:data:`SOURCE`, :data:`SINK`, :data:`LAUNCHER`, :data:`STORE`), what is
known of each plugin (:class:`PluginInfo`: where it came from, what it provides, why it failed),
and the proxy that is registered with pluggy in a plugin's place (:class:`AttributedPlugin`):
its hook functions tag what they return with the plugin's name (:class:`Provided`) and return
what they raise (:class:`HookFailed`), so one broken plugin never hides the others' records.
:mod:`credbridge.core.plugins` is the manager that applies this to every plugin.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterable
from typing import Any, Generic, NamedTuple, TypeVar

import pluggy
from credbridge.core import hookspecs
from credbridge.core.errors import CredbridgeError, PluginFailed
from credbridge.core.records import field, fields, record
from credbridge.core.types import LauncherType, SinkType, SourceType, StoreType

MARKER = f"{hookspecs.PROJECT}_impl"
"""The attribute ``@hookimpl`` puts on a hook implementation."""
HOOKS = frozenset(
    name
    for name, value in vars(hookspecs).items()
    if name.startswith("credbridge_") and hasattr(value, f"{hookspecs.PROJECT}_spec")
)

R = TypeVar("R", SourceType, SinkType, LauncherType, StoreType)


class Kind(Generic[R]):
    """One kind of record: the hook that provides it and how it is named."""

    __slots__ = ("hook", "key", "label", "record_type")
    record_type: type[R]

    def __init__(self, key: str, hook: str, label: str, record_type: type[R]) -> None:
        self.key = key
        self.hook = hook
        self.label = label
        self.record_type = record_type

    def name_of(self, record: R) -> str:
        return record.name

    def __repr__(self) -> str:
        return f"Kind({self.key!r})"


SOURCE: Kind[SourceType] = Kind("sources", "credbridge_sources", "source scheme", SourceType)
SINK: Kind[SinkType] = Kind("sinks", "credbridge_sinks", "sink", SinkType)
LAUNCHER: Kind[LauncherType] = Kind("launchers", "credbridge_launchers", "launcher", LauncherType)
STORE: Kind[StoreType] = Kind("stores", "credbridge_stores", "store", StoreType)
KINDS: tuple[Kind[Any], ...] = (SOURCE, SINK, LAUNCHER, STORE)


@record
class PluginInfo:
    """One plugin as ``credbridge plugins`` shows it, loaded or not."""

    name: str
    module: str
    distribution: str
    version: str
    builtin: bool
    state: str = "loaded"
    """``loaded``, ``failed``, ``disabled`` (by ``CREDBRIDGE_DISABLE_PLUGINS``),
    ``not loaded`` (not in ``CREDBRIDGE_LOAD_PLUGINS``) or ``registered`` (in process)."""
    sources: list[str] = field(default_factory=list)
    sinks: list[str] = field(default_factory=list)
    launchers: list[str] = field(default_factory=list)
    stores: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    error: str | None = None
    """Why it failed to load (``state == "failed"``)."""
    warnings: list[str] = field(default_factory=list)
    """What was skipped from it, and why."""

    @property
    def origin(self) -> str:
        """``credbridge-dotenv 0.1.0``: where it came from, for messages."""
        return f"{self.distribution} {self.version}".strip()

    def describe(self) -> str:
        return f"plugin {self.name!r} ({self.origin})" if self.origin else f"plugin {self.name!r}"

    def bug(self, what: str, error: BaseException) -> PluginFailed:
        """The attributed :class:`PluginFailed` for ``error``, raised by this plugin in ``what``
        (anything but a :class:`CredbridgeError` escaping a plugin is its bug)."""
        whose = "credbridge: please report it" if self.builtin else "that plugin: report it"
        return PluginFailed(
            f"{self.describe()} failed in {what}: {failure_text(error)} "
            f"(a bug in {whose} with the output of -vv)",
            error,
        )

    def as_json(self) -> dict[str, Any]:
        data = {spec.name: getattr(self, spec.name) for spec in fields(self)}
        for names in ("sources", "sinks", "launchers", "stores", "commands"):
            data[names] = sorted(data[names])
        return data


class Conflict(NamedTuple):
    """Several plugins claim one name: the commands that use the name fail until one goes."""

    kind: str
    name: str
    providers: tuple[str, ...]


# --------------------------------------------------------------------------- attribution


class Provided(list[Any]):
    """The records one plugin's hook implementation returned, tagged with the plugin's name.

    A ``wrapper=True`` hook implementation sees a list of these as the hook's result; it may
    change them, drop some, or add plain iterables of records of its own.
    """

    def __init__(self, plugin: str, records: Iterable[Any]) -> None:
        super().__init__(records)
        self.plugin = plugin


class HookFailed(NamedTuple):
    """A hook implementation raised instead of returning records."""

    plugin: str
    error: BaseException


def failure_text(error: BaseException) -> str:
    """How a plugin's exception is named in messages: its type, and a message only for the
    kinds whose message names code or files (import errors, OS errors), never a value."""
    name = type(error).__name__
    if isinstance(error, ImportError | SyntaxError):
        return f"{name}: {error}"
    if isinstance(error, OSError) and error.strerror:
        return f"{name}: {error.strerror}"
    if isinstance(error, CredbridgeError):
        # credbridge's own messages name what is wrong and never carry a value (an invalid
        # record name, a bad lazy() target): the reason a plugin's records were skipped.
        return f"{name}: {error}"
    return name


class AttributedPlugin:
    """What is registered with pluggy for one plugin: its hook functions, wrapped.

    Each (non-wrapper) hook implementation returns a :class:`Provided` with the plugin's name,
    or a :class:`HookFailed` instead of raising, so one broken plugin never hides the others.
    """

    def __init__(self, plugin: object, name: str, pm: pluggy.PluginManager) -> None:
        self.__name__ = name
        self._plugin = plugin
        self._hooks: list[str] = []
        for attribute in marked_attributes(plugin):
            opts = pm.parse_hookimpl_opts(plugin, attribute)
            if opts is None:
                continue
            function = getattr(plugin, attribute)
            self._hooks.append(attribute)
            if opts.get("wrapper") or opts.get("hookwrapper"):
                setattr(self, attribute, function)
                continue
            hook = str(opts.get("specname") or attribute)
            wrapped = self._wrap(function, name, hook)
            setattr(wrapped, MARKER, dict(opts))
            setattr(self, attribute, wrapped)

    def __dir__(self) -> list[str]:
        # What pluggy looks through when registering: only the hooks (it is faster, too).
        return list(self._hooks)

    @staticmethod
    def _wrap(function: Callable[..., Any], name: str, hook: str) -> Callable[..., Any]:
        @functools.wraps(function)
        def attributed(*args: Any, **kwargs: Any) -> Provided | HookFailed:
            # pluggy passes hook arguments positionally, in the spec's order.
            group = kwargs.get("cli", args[0] if args else None)
            before = set(getattr(group, "commands", ()))
            try:
                result = function(*args, **kwargs)
                if hook == "credbridge_commands":
                    return Provided(name, sorted(set(getattr(group, "commands", ())) - before))
                return Provided(name, () if result is None else result)
            except Exception as error:  # noqa: BLE001 - contained: reported as this plugin's
                return HookFailed(name, error)

        return attributed

    def __repr__(self) -> str:
        return f"<credbridge plugin {self.__name__!r}: {self._plugin!r}>"


def marked_attributes(plugin: object) -> list[str]:
    """Attributes that may be hook implementations: a module's marked functions (cheap to
    find), or every attribute of another object (pluggy checks them without running code)."""
    if isinstance(plugin, types.ModuleType):
        return [name for name, value in vars(plugin).items() if hasattr(value, MARKER)]
    return dir(plugin)


def undecorated_hooks(plugin: object) -> list[str]:
    """``credbridge_*`` functions of a plugin that lack ``@hookimpl`` (and so are ignored)."""
    import inspect

    found = []
    for attribute in vars(plugin) if isinstance(plugin, types.ModuleType) else dir(plugin):
        if not attribute.startswith("credbridge_"):
            continue
        value = inspect.getattr_static(plugin, attribute, None)
        value = getattr(value, "__func__", value)  # staticmethod, classmethod
        if inspect.isfunction(value) and not hasattr(value, MARKER):
            found.append(attribute)
    return found


def suggest_hook(hook: str) -> str:
    import difflib

    close = difflib.get_close_matches(hook, sorted(HOOKS), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
