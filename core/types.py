"""Typed records that plugins return from hooks, and the contexts their objects are opened with.

Each hook in :mod:`credbridge.core.hookspecs` yields records of one type below. Every record
carries a unique name (a source's scheme, a sink's, a launcher's or a store's name); two
records with one name are a conflict that the plugin manager reports, naming both providers.
Records and contexts compare by identity (``eq=False``): nothing compares them, and every
command creates them, so they skip generating what they do not use.

The interfaces the records' ``open`` returns (:class:`Source`, :class:`Store`, :class:`Sink`,
:class:`Launcher`) and the values that pass through them are defined in
:mod:`credbridge.core.interfaces` and importable from here too: a plugin imports everything
from :mod:`credbridge.core` (or this module).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from credbridge.core.errors import PluginError
from credbridge.core.interfaces import (
    PLAN_KEYS,
    Change,
    Delivery,
    DocumentSource,
    Launcher,
    Lease,
    LeasedSource,
    Mode,
    Outcome,
    Pending,
    PlanEntry,
    Request,
    RotatableSource,
    Sink,
    Source,
    Staged,
    Store,
)
from credbridge.core.records import record
from credbridge.core.reference import Reference
from credbridge.core.secret import Secret
from credbridge.core.settings import Setting, declare, read_settings

if TYPE_CHECKING:
    from credbridge.core.config import Config, Target

_NAME = re.compile(r"[a-z][a-z0-9+._-]*")

TARGET_KINDS = ("unit", "vm")
"""The kinds of target a config declares (``kind``) and sinks serve, in the order messages list
them."""


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PluginError(f"invalid {kind} name {name!r}: use lowercase letters, digits, '-+._'")


@record(frozen=True, eq=False, kw_only=True)
class PluginType:
    """What every plugin record has: a one-line summary and its declared settings.

    ``settings`` lists the keys its table may hold as :class:`~credbridge.core.settings.Setting`
    declarations (a bare string declares a key of kind ``any``); the record keeps them as
    ``{name: Setting}``. They are checked when the config loads. ``None``: the plugin checks
    its table itself, when it is opened.
    """

    summary: str = ""
    settings: Collection[Setting | str] | Mapping[str, Setting] | None = None

    def __post_init__(self) -> None:
        raw = self.settings
        try:
            declared = declare(raw.values() if isinstance(raw, Mapping) else raw)
        except (TypeError, ValueError) as error:
            raise PluginError(f"{type(self).__name__}.settings: {error}") from None
        object.__setattr__(self, "settings", declared)

    @property
    def declared_settings(self) -> Mapping[str, Setting] | None:
        """The declared settings by name (``None``: not declared)."""
        return self.settings  # type: ignore[return-value]  # normalised in __post_init__


def _names(record: object, attribute: str, value: Iterable[str] | None) -> None:
    """Store an iterable of names given to a record as a frozenset (a lone string is one name)."""
    if value is None:
        return
    names = frozenset({value} if isinstance(value, str) else value)
    if not all(isinstance(name, str) for name in names):
        raise PluginError(f"{type(record).__name__}.{attribute} must hold strings")
    object.__setattr__(record, attribute, names)


class lazy:
    """A callable that imports ``"module:attribute"`` on its first call, then calls it.

    Records point their ``open`` (or ``validate``) at the implementation this way, so that
    loading a plugin costs only its small registration module::

        SourceType(scheme="demo", open=lazy("credbridge_demo.source:DemoSource"))
    """

    __slots__ = ("_target", "target")

    def __init__(self, target: str) -> None:
        module, sep, attribute = target.partition(":")
        if not sep or not module or not attribute:
            raise PluginError(f"lazy({target!r}): expected 'package.module:attribute'")
        self.target = target
        self._target: Callable[..., Any] | None = None

    def resolve(self) -> Callable[..., Any]:
        """Import the module and return the attribute (done once)."""
        if self._target is None:
            module, _, attribute = self.target.partition(":")
            found: Any = importlib.import_module(module)
            for part in attribute.split("."):
                found = getattr(found, part)
            self._target = found
        return self._target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"lazy({self.target!r})"


# --------------------------------------------------------------------------- contexts


class _TableOrigin(NamedTuple):
    """Where a context's settings table came from, for the messages that name a key in it."""

    what: str
    """Whose table it is (``"source 'vault'"``)."""
    file: str | None
    where: str
    """The table's config key path."""
    base: Path
    """What relative paths in it are relative to."""


class _SettingsReader:
    """The ``read_settings`` every context has: its ``settings`` table read by declarations."""

    settings: Mapping[str, Any]

    def _origin(self) -> _TableOrigin:
        raise NotImplementedError

    def read_settings(
        self, declared: Iterable[Setting | str] | Mapping[str, Setting]
    ) -> dict[str, Any]:
        """Every declared setting's value, by its kind, defaults filled in (see
        :func:`credbridge.core.settings.read_settings`)."""
        return self._read(declared, self._origin())

    def _read(
        self, declared: Iterable[Setting | str] | Mapping[str, Setting], origin: _TableOrigin
    ) -> dict[str, Any]:
        table = declare(declared.values() if isinstance(declared, Mapping) else declared) or {}
        what, file, where, base = origin
        return read_settings(table, self.settings, what=what, file=file, where=where, base=base)


@record(frozen=True, eq=False)
class SourceContext(_SettingsReader):
    """What a source gets when it is opened."""

    scheme: str
    settings: Mapping[str, Any]
    """The ``[sources.SCHEME]`` table of the config (empty when absent)."""
    config_dir: Path
    concurrency: int
    """How many backend calls a source may have in flight at once."""
    resolve: Callable[[str], Secret]
    """Resolve another reference (e.g. a token given as ``credential:vault-token``)."""
    store: Callable[[], Store]
    """The store of generated values, opened on first use."""
    where: str = ""
    """Config key path of the settings, for error messages."""
    config_file: str = ""
    """The config file's path, for error messages."""

    def _origin(self) -> _TableOrigin:
        return _TableOrigin(
            f"source {self.scheme!r}",
            self.config_file or None,
            self.where or f"sources.{self.scheme}",
            self.config_dir,
        )


@record(frozen=True, eq=False)
class StoreContext(_SettingsReader):
    """What a store gets when it is opened."""

    settings: Mapping[str, Any]
    """The ``[store]`` table without ``type`` (``credbridge.store`` becomes ``path``)."""
    config_dir: Path
    where: str = "store"
    """Config key path of the settings, for error messages."""
    config_file: str = ""
    """The config file's path, for error messages."""
    resolve: Callable[[str], Secret] | None = None
    """Resolve a reference the store needs for itself (e.g. the key that decrypts it).
    ``None`` when the store is opened outside a session."""

    def _origin(self) -> _TableOrigin:
        return _TableOrigin("the store", self.config_file or None, self.where, self.config_dir)

    def read_settings(
        self, declared: Iterable[Setting | str] | Mapping[str, Setting], *, name: str = ""
    ) -> dict[str, Any]:
        """Every declared setting's value, by its kind, defaults filled in; ``name`` (the
        store's) makes messages say ``store 'NAME'``."""
        origin = self._origin()
        return self._read(declared, origin._replace(what=f"store {name!r}") if name else origin)


@record(frozen=True, eq=False)
class _TargetContext(_SettingsReader):
    """What a sink or a launcher gets when it is opened for one target."""

    target: Target
    """The target it is opened for (its name, kind, credentials and plugin names)."""
    settings: Mapping[str, Any]
    config: Config
    where: str
    """Config key path of the plugin's table in the target, for error messages."""

    def _plugin(self) -> str:
        raise NotImplementedError

    def _origin(self) -> _TableOrigin:
        return _TableOrigin(self._plugin(), self.config.label, self.where, self.config.directory)


@record(frozen=True, eq=False)
class SinkContext(_TargetContext):
    """What a sink gets when it is opened for one target.

    ``settings`` is ``[sinks.NAME]`` overlaid with the target's own ``sink`` table (without
    ``type``); ``where`` is the key path of the target's ``sink`` table."""

    def _plugin(self) -> str:
        return f"sink {self.target.sink!r}"


@record(frozen=True, eq=False)
class LauncherContext(_TargetContext):
    """What a launcher gets when it is opened for one VM target.

    ``settings`` is the target's ``launcher`` table (without ``type``); ``where`` its key
    path."""

    sink: Sink
    """The target's sink (a ``credbridge.core.vm.VmSink`` for VM targets)."""

    def _plugin(self) -> str:
        return f"launcher {self.target.launcher!r}"


# --------------------------------------------------------------------------- records


@record(frozen=True, eq=False, kw_only=True)
class SourceType(PluginType):
    """A source of secrets, provided through :func:`credbridge_sources`."""

    scheme: str
    """The reference scheme it resolves (``vault`` for ``vault:secret/app#password``)."""
    open: Callable[[SourceContext], Source]
    """Create the source; called once per run, only if a reference uses the scheme."""
    options: Collection[str] | None = None
    """Reference options it accepts (``None``: it validates options itself)."""
    selectors: bool = True
    """Whether references may carry a ``#selector``."""
    validate: Callable[[Reference], None] | None = None
    """Cheap syntax check of a reference (no I/O); raise :class:`BadReference`."""
    public: Callable[[Reference], bool] | None = None
    """Whether the value a reference selects is public (a public key, a certificate), decided
    from the reference alone (no I/O). Public values may be printed by ``credbridge get``,
    exported, shown by ``check``/``--dry-run`` and delivered world-readable (``mode = "0444"``);
    everything else is a secret. ``None``: every value of this scheme is a secret."""

    def __post_init__(self) -> None:
        _check_name("source scheme", self.scheme)
        _names(self, "options", self.options)
        super().__post_init__()

    @property
    def name(self) -> str:
        return self.scheme

    def selects_public(self, reference: Reference) -> bool:
        """Whether ``reference`` selects a public value; a failing ``public`` means secret."""
        if self.public is None:
            return False
        try:
            return self.public(reference) is True
        except Exception:  # noqa: BLE001 - a broken plugin must not make a secret public
            return False


@record(frozen=True, eq=False, kw_only=True)
class StoreType(PluginType):
    """A backend for the store of generated values, provided through :func:`credbridge_stores`.

    Its ``settings`` are the keys the ``[store]`` table may hold besides ``type``."""

    name: str
    open: Callable[[StoreContext], Store]

    def __post_init__(self) -> None:
        _check_name("store", self.name)
        super().__post_init__()


@record(frozen=True, eq=False, kw_only=True)
class SinkType(PluginType):
    """A sink, provided through :func:`credbridge_sinks`.

    Its ``settings`` are the keys of ``[sinks.NAME]`` and of a target's ``sink`` table."""

    name: str
    open: Callable[[SinkContext], Sink]
    target_kinds: Collection[str] = frozenset({"unit"})
    """Which target kinds it serves (any iterable of ``"unit"``, ``"vm"``)."""

    def __post_init__(self) -> None:
        _check_name("sink", self.name)
        _names(self, "target_kinds", self.target_kinds)
        super().__post_init__()
        unknown = set(self.target_kinds) - set(TARGET_KINDS)
        if unknown or not self.target_kinds:
            raise PluginError(
                f"sink {self.name!r}: target_kinds must name 'unit' and/or 'vm', "
                f"not {sorted(unknown) or 'nothing'}"
            )


@record(frozen=True, eq=False, kw_only=True)
class LauncherType(PluginType):
    """A VM launcher, provided through :func:`credbridge_launchers`.

    Its ``settings`` are the keys its ``launcher`` table may hold besides ``type``."""

    name: str
    open: Callable[[LauncherContext], Launcher]

    def __post_init__(self) -> None:
        _check_name("launcher", self.name)
        super().__post_init__()


__all__ = [
    "PLAN_KEYS",
    "TARGET_KINDS",
    "Change",
    "Delivery",
    "DocumentSource",
    "Launcher",
    "LauncherContext",
    "LauncherType",
    "Lease",
    "LeasedSource",
    "Mode",
    "Outcome",
    "Pending",
    "PlanEntry",
    "PluginType",
    "Request",
    "RotatableSource",
    "Setting",
    "Sink",
    "SinkContext",
    "SinkType",
    "Source",
    "SourceContext",
    "SourceType",
    "Staged",
    "Store",
    "StoreContext",
    "StoreType",
    "lazy",
]
