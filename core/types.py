"""Typed records that plugins return from hooks, and the interfaces they implement.

Each hook in :mod:`credbridge.core.hookspecs` yields records of one type below. Every record
carries a unique name (a source's scheme, a sink's, a launcher's or a store's name); two
records with one name are a conflict that the plugin manager reports, naming both providers.
Records and contexts compare by identity (``eq=False``): nothing compares them, and every
command creates them, so they skip generating what they do not use.
"""

from __future__ import annotations

import abc
import enum
import importlib
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from credbridge.core.errors import CredbridgeError, PluginError, SourceError, renamed
from credbridge.core.reference import Locator, Reference, select
from credbridge.core.secret import Secret, SecretDocument
from credbridge.core.settings import Setting, declare, read_settings
from credbridge.core.threads import map_in_threads

if TYPE_CHECKING:
    from credbridge.core.config import Config, Target

_NAME = re.compile(r"[a-z][a-z0-9+._-]*")

TARGET_KINDS = ("unit", "vm")
"""The kinds of target a config declares (``kind``) and sinks serve, in the order messages list
them."""


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PluginError(f"invalid {kind} name {name!r}: use lowercase letters, digits, '-+._'")


@dataclass(frozen=True, eq=False, kw_only=True)
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


def _read(
    declared: Iterable[Setting | str] | Mapping[str, Setting],
    settings: Mapping[str, Any],
    *,
    what: str,
    file: str | None,
    where: str,
    base: Path,
) -> dict[str, Any]:
    table = declare(declared.values() if isinstance(declared, Mapping) else declared) or {}
    return read_settings(table, settings, what=what, file=file, where=where, base=base)


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


# --------------------------------------------------------------------------- resolution


class Mode(enum.Enum):
    """Why a source is asked for values."""

    DELIVER = "deliver"
    """Produce real values; generators create and persist what is missing."""
    DRY_RUN = "dry-run"
    """Produce real values where that has no side effect; generators return :class:`Pending`."""


@dataclass(frozen=True, slots=True)
class Request:
    """One reference to resolve, and the credential it is resolved for (if any).

    ``owner`` identifies the credential (``TARGET/CREDENTIAL``); generators key what they
    persist by it, so two credentials with the same ``generate:`` reference get two values.
    """

    reference: Reference
    owner: str | None = None


@dataclass(frozen=True)
class Pending:
    """A value that does not exist yet and would be created by a real run (dry-run only)."""

    reason: str
    size: int | None = None
    """How many bytes the value will have, when the source knows it in advance (a random
    ``generate:`` value); sinks check their size limits with it (``check``, and ``deliver``
    before anything is generated). ``None``: not known until the value exists."""

    @staticmethod
    def size_of(value: Secret | Pending) -> int | None:
        """The size of a value, or of a value to be made (``None``: not known yet)."""
        return value.size if isinstance(value, Pending) else len(value)


Outcome = Secret | Pending | SourceError


@dataclass(frozen=True, eq=False)
class SourceContext:
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

    def read_settings(
        self, declared: Iterable[Setting | str] | Mapping[str, Setting]
    ) -> dict[str, Any]:
        """Every declared setting's value, by its kind, defaults filled in (see
        :func:`credbridge.core.settings.read_settings`)."""
        return _read(
            declared,
            self.settings,
            what=f"source {self.scheme!r}",
            file=self.config_file or None,
            where=self.where or f"sources.{self.scheme}",
            base=self.config_dir,
        )


class Source(abc.ABC):
    """Resolves references of one scheme. Override :meth:`fetch` for a native batch API."""

    @abc.abstractmethod
    def fetch(self, requests: Sequence[Request], mode: Mode) -> dict[Request, Outcome]:
        """Resolve every request; failures are returned per request, not raised."""

    def close(self) -> None:  # noqa: B027 - optional hook for sources that hold resources
        """Release clients, pools and sessions."""


class DocumentSource(Source):
    """A source that fetches whole documents and lets references select a field.

    Requests that share a locator (scheme, path, options) are fetched once; different
    locators are fetched concurrently through :meth:`fetch_documents`, which a backend with
    a batch API overrides. A reference without ``#selector`` gets the whole value of a raw
    :class:`Secret`; from a structured :class:`SecretDocument` it gets :attr:`default_field`
    when one is declared, else the only field (more than one field is an ``InvalidValue``).
    """

    default_field: str | None = None
    """The field a reference without ``#selector`` selects from a structured document."""

    def __init__(self, concurrency: int = 8, *, default_field: str | None = None) -> None:
        self.concurrency = max(1, concurrency)
        if default_field is not None:
            self.default_field = default_field

    @abc.abstractmethod
    def fetch_document(self, locator: Locator) -> Secret | SecretDocument:
        """Fetch one document; raise a :class:`SourceError` subclass on failure."""

    def fetch_documents(
        self, locators: Sequence[Locator]
    ) -> dict[Locator, Secret | SecretDocument | SourceError]:
        def one(locator: Locator) -> Secret | SecretDocument | SourceError:
            try:
                return self.fetch_document(locator)
            except SourceError as error:
                return error

        documents = map_in_threads(one, locators, workers=self.concurrency, name="credbridge-fetch")
        return dict(zip(locators, documents, strict=True))

    def fetch(self, requests: Sequence[Request], mode: Mode) -> dict[Request, Outcome]:
        locators = sorted({r.reference.locator for r in requests})
        documents = self.fetch_documents(locators)
        results: dict[Request, Outcome] = {}
        for request in requests:
            document = documents[request.reference.locator]
            if isinstance(document, SourceError):
                results[request] = renamed(document, str(request.reference))
                continue
            selector = request.reference.selector
            if selector is None and isinstance(document, SecretDocument):
                selector = self.default_field
            try:
                results[request] = select(document, selector, str(request.reference))
            except SourceError as error:
                results[request] = error
        return results


class RotatableSource(Source):
    """A source whose values credbridge itself creates, so ``credbridge rotate`` can renew them."""

    @abc.abstractmethod
    def rotate(self, request: Request) -> str:
        """Make a new current value for ``request`` (the old one stays the previous).

        Returns where the value is kept, for the message (never the value). Raise a
        :class:`SourceError` when the request names nothing that can be rotated.
        """


@dataclass(frozen=True)
class Lease:
    """How long a value stays good and which version it is: metadata, never the value.

    Sources attach one to the ``Secret`` (or ``SecretDocument``) they return when they know
    more than the bytes: a dynamic secret's lease, a certificate's expiry, a static secret's
    version. ``credbridge agent`` and ``credbridge status`` read it; sinks ignore it.
    Every field may be shown to the user (a lease id names a lease, it does not grant one).
    """

    version: str | None = None
    """What identifies this value among its versions (a KV v2 version, an AWS VersionId, a
    file's digest); a change of version means the value changed."""
    lease_id: str | None = None
    """The backend's handle to renew or revoke the value (a Vault/OpenBao lease id)."""
    issued_at: float | None = None
    """When the backend issued the value, as ``time.time()``."""
    expires_at: float | None = None
    """When the value stops working, as ``time.time()``; ``None``: it does not expire."""
    renewable: bool = False
    """Whether :meth:`LeasedSource.renew` can extend ``expires_at``."""


class LeasedSource(Source):
    """A source whose values come with leases it can extend or end (dynamic secrets, tokens).

    Values it returns carry a :class:`Lease` with ``lease_id`` and
    ``expires_at``. ``credbridge agent`` calls :meth:`renew` before a renewable lease runs
    out, and fetches a new value (a re-issue) when the lease is not renewable or renewing
    fails or no longer extends it.
    """

    @abc.abstractmethod
    def renew(self, request: Request, lease: Lease, increment: float | None = None) -> Lease:
        """Extend ``lease`` (by ``increment`` seconds when given); return the lease as it now is.

        Raise a :class:`SourceError` subclass when the backend refuses or cannot be reached.
        """

    def revoke(self, request: Request, lease: Lease) -> None:
        """End ``lease`` now (after a value is replaced, or at shutdown when configured)."""


@dataclass(frozen=True, eq=False, kw_only=True)
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


# --------------------------------------------------------------------------- stores


class Store(abc.ABC):
    """Persists generated values so they survive runs, and keeps the previous one on rotate."""

    @abc.abstractmethod
    def read(self, key: str, *, previous: bool = False) -> Secret | None:
        """Return the current (or previous) value of ``key``, or ``None``."""

    @abc.abstractmethod
    def create(self, key: str, value: Secret) -> Secret:
        """Persist ``value`` under ``key`` unless a value exists; return the stored value.

        Must be durable before it returns (the value is used right after) and must never
        overwrite: when another process won the race, its value is returned.
        """

    @abc.abstractmethod
    def rotate(self, key: str, value: Secret) -> None:
        """Make ``value`` current and keep the old current value as the previous one."""

    @abc.abstractmethod
    def keys(self) -> list[str]:
        """All keys with a current value."""

    @abc.abstractmethod
    def location(self) -> str:
        """Where values are kept, for messages (no values)."""

    @abc.abstractmethod
    def lock_file(self) -> Path:
        """A lock file that ``deliver``, ``rotate`` and ``launch`` hold (``flock``) from the
        first use of the store until their commit, so that a ``rotate`` never lands between a
        delivery's resolution and its commit; it may create the directory holding it.
        Required: every store is shared by concurrent runs."""

    def recover(self) -> None:  # noqa: B027 - optional: stores without crash leftovers
        """Clean up what a crashed run left behind; called with :meth:`lock_file` held."""


@dataclass(frozen=True, eq=False)
class StoreContext:
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

    def read_settings(
        self, declared: Iterable[Setting | str] | Mapping[str, Setting], *, name: str = ""
    ) -> dict[str, Any]:
        """Every declared setting's value, by its kind, defaults filled in; ``name`` (the
        store's) makes messages say ``store 'NAME'``."""
        return _read(
            declared,
            self.settings,
            what=f"store {name!r}" if name else "the store",
            file=self.config_file or None,
            where=self.where,
            base=self.config_dir,
        )


@dataclass(frozen=True, eq=False, kw_only=True)
class StoreType(PluginType):
    """A backend for the store of generated values, provided through :func:`credbridge_stores`.

    Its ``settings`` are the keys the ``[store]`` table may hold besides ``type``."""

    name: str
    open: Callable[[StoreContext], Store]

    def __post_init__(self) -> None:
        _check_name("store", self.name)
        super().__post_init__()


# --------------------------------------------------------------------------- sinks


@dataclass(frozen=True, slots=True)
class Delivery:
    """One credential as a sink receives it: the name in the target, the value, its options."""

    name: str
    value: Secret
    mode: int = 0o400
    owner: str | None = None
    group: str | None = None


class Change(enum.Enum):
    ADD = "add"
    CHANGE = "change"
    KEEP = "keep"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class PlanEntry:
    """What a sink would do with one credential (never the value)."""

    credential: str
    change: Change
    detail: str = ""


class Staged(abc.ABC):
    """A delivery written aside; nothing the target's readers see has changed yet."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Make the staged set visible at once."""

    @abc.abstractmethod
    def rollback(self) -> None:
        """Undo: drop the staged set, or after :meth:`commit` put the old set back."""

    def finalize(self) -> None:  # noqa: B027 - optional: sinks without leftovers do nothing
        """Forget the old set once every target has committed."""


@dataclass(frozen=True, eq=False)
class SinkContext:
    """What a sink gets when it is opened for one target."""

    target: Target
    settings: Mapping[str, Any]
    """``[sinks.NAME]`` overlaid with the target's own ``sink`` table (without ``type``)."""
    config: Config
    where: str
    """Config key path of the target's ``sink`` table, for error messages."""

    def read_settings(
        self, declared: Iterable[Setting | str] | Mapping[str, Setting]
    ) -> dict[str, Any]:
        """Every declared setting's value, by its kind, defaults filled in."""
        return _read(
            declared,
            self.settings,
            what=f"sink {self.target.sink!r}",
            file=self.config.label,
            where=self.where,
            base=self.config.directory,
        )


class Sink(abc.ABC):
    """Delivers a resolved set of credentials to one target, in two steps."""

    @abc.abstractmethod
    def plan(self, credentials: Mapping[str, Secret | Pending]) -> list[PlanEntry]:
        """Compare with what the target holds now; must not change anything."""

    @abc.abstractmethod
    def stage(self, deliveries: Sequence[Delivery]) -> Staged:
        """Write the complete new set aside; raise :class:`DeliveryError` on failure.

        Called with every file of :meth:`lock_files` locked, so leftovers of other runs found
        now are stale and may be removed."""

    def check(self) -> None:  # noqa: B027 - optional: sinks with nothing to check early
        """Refuse early, before anything is resolved, generated or written (no side effects):
        e.g. a plaintext credstore that is not on tmpfs, or an unsafe directory."""

    def lock_files(self) -> Sequence[Path]:
        """Lock files credbridge holds (``flock``, in one global order, honouring
        ``--wait-lock``) from resolution through commit, so runs sharing a target directory
        serialise; may create the directory holding them. Default: none."""
        return ()

    def unit_settings(self) -> list[str]:
        """``[Service]`` lines that make the unit load what this sink delivers (may be empty)."""
        return []

    def location(self) -> str:
        """Where the target's credentials go, for the ``deliver`` summary (no values)."""
        return ""


@dataclass(frozen=True, eq=False, kw_only=True)
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


# --------------------------------------------------------------------------- launchers


@dataclass(frozen=True, eq=False)
class LauncherContext:
    """What a launcher gets when it is opened for one VM target."""

    target: Target
    settings: Mapping[str, Any]
    """The target's ``launcher`` table (without ``type``)."""
    config: Config
    where: str
    """Config key path of the target's ``launcher`` table, for error messages."""
    sink: Sink
    """The target's sink (a ``credbridge.core.vm.VmSink`` for VM targets)."""

    def read_settings(
        self, declared: Iterable[Setting | str] | Mapping[str, Setting]
    ) -> dict[str, Any]:
        """Every declared setting's value, by its kind, defaults filled in."""
        return _read(
            declared,
            self.settings,
            what=f"launcher {self.target.launcher!r}",
            file=self.config.label,
            where=self.where,
            base=self.config.directory,
        )


PLAN_KEYS = (
    "target",
    "launcher",
    "sink",
    "delivery",
    "binary",
    "version",
    "runtime_dir",
    "argv",
    "helpers",
    "requests",
    "credentials",
    "warnings",
)
"""The keys of every launch plan (``credbridge launch --dry-run --json``), in this order.

``target``, ``launcher``, ``sink`` name them; ``delivery`` is how the credentials reach the
guest; ``binary``/``version`` the hypervisor; ``argv`` its command line and ``helpers`` the
argv of helper processes (virtiofsd); ``requests`` the API calls (``[]`` for CLI-driven
hypervisors); ``credentials`` one ``{credential, change, detail}`` per credential;
``warnings`` a list of lines. credbridge fills a missing key with ``None`` (``[]`` for lists)
and keeps a launcher's extra keys after these.
"""


class Launcher(abc.ABC):
    """Starts a VM with its credentials wired in through a VM sink, in the foreground."""

    @abc.abstractmethod
    def plan(self, credentials: Mapping[str, Secret | Pending]) -> Mapping[str, Any]:
        """The launch plan with every value redacted (``credbridge launch --dry-run``).

        Use the keys of :data:`PLAN_KEYS`. Must start nothing and write nothing.
        """

    @abc.abstractmethod
    def launch(self, deliveries: Sequence[Delivery]) -> int:
        """Start the VM, wait for it, clean up; return the VM's exit status."""

    def check(self) -> None:  # noqa: B027 - optional: launchers with nothing to check early
        """Refuse early, before anything is resolved or generated (no side effects): e.g. a
        runtime directory that is not on tmpfs or is unsafe."""

    def runtime_dir(self) -> Path | None:
        """The directory a launch of this VM runs in (its sink's files, the lock naming the
        launch), for ``credbridge agent`` to update a running VM; ``None``: not known."""
        return None


@dataclass(frozen=True, eq=False, kw_only=True)
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
    "Change",
    "CredbridgeError",
    "Delivery",
    "DocumentSource",
    "Launcher",
    "LauncherContext",
    "LauncherType",
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
