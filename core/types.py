"""Typed records that plugins return from hooks, and the interfaces they implement.

Each hook in :mod:`credbridge.core.hookspecs` yields records of one type below. Every record
carries a unique name (a source's scheme, a sink's, a launcher's or a store's name); the plugin
manager refuses two records with the same name and names both providers.
"""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from credbridge.core.errors import CredbridgeError, PluginError, SourceError
from credbridge.core.reference import Locator, Reference
from credbridge.core.secret import Secret, SecretDocument

if TYPE_CHECKING:
    from credbridge.core.config import Config, Target

_NAME = re.compile(r"^[a-z][a-z0-9+._-]*$")


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise PluginError(f"invalid {kind} name {name!r}: use lowercase letters, digits, '-+._'")


# --------------------------------------------------------------------------- resolution


class Mode(enum.Enum):
    """Why a source is asked for values."""

    DELIVER = "deliver"
    """Produce real values; generators create and persist what is missing."""
    DRY_RUN = "dry-run"
    """Produce real values where that has no side effect; generators return :class:`Pending`."""


@dataclass(frozen=True)
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


Outcome = Secret | Pending | SourceError


@dataclass(frozen=True)
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
    a batch API overrides.
    """

    def __init__(self, concurrency: int = 8) -> None:
        self.concurrency = max(1, concurrency)

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

        if len(locators) <= 1 or self.concurrency == 1:
            return {locator: one(locator) for locator in locators}
        workers = min(self.concurrency, len(locators))
        with ThreadPoolExecutor(workers, thread_name_prefix="credbridge-fetch") as pool:
            return dict(zip(locators, pool.map(one, locators), strict=True))

    def fetch(self, requests: Sequence[Request], mode: Mode) -> dict[Request, Outcome]:
        locators = sorted({r.reference.locator for r in requests})
        documents = self.fetch_documents(locators)
        results: dict[Request, Outcome] = {}
        for request in requests:
            document = documents[request.reference.locator]
            if isinstance(document, SourceError):
                results[request] = _rename(document, request.reference)
                continue
            try:
                results[request] = request.reference.select(document)
            except SourceError as error:
                results[request] = error
        return results


def _rename(error: SourceError, reference: Reference) -> SourceError:
    """Name the full reference (with selector) in an error raised for its locator."""
    if error.reference == str(reference):
        return error
    return type(error)(str(reference), error.problem)


@dataclass(frozen=True, kw_only=True)
class SourceType:
    """A source of secrets, provided through :func:`credbridge_sources`."""

    scheme: str
    """The reference scheme it resolves (``vault`` for ``vault:secret/app#password``)."""
    open: Callable[[SourceContext], Source]
    """Create the source; called once per run, only if a reference uses the scheme."""
    summary: str = ""
    options: frozenset[str] | None = None
    """Reference options it accepts (``None``: it validates options itself)."""
    selectors: bool = True
    """Whether references may carry a ``#selector``."""
    validate: Callable[[Reference], None] | None = None
    """Cheap syntax check of a reference (no I/O); raise :class:`BadReference`."""

    def __post_init__(self) -> None:
        _check_name("source scheme", self.scheme)

    @property
    def name(self) -> str:
        return self.scheme


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

    def lock_file(self) -> Path | None:
        """A lock file that ``deliver``, ``rotate`` and ``launch`` hold (``flock``) from the
        first use of the store until their commit, so that runs sharing the store serialise;
        it may create the directory holding it. ``None``: the store needs no run lock."""
        return None

    def recover(self) -> None:  # noqa: B027 - optional: stores without crash leftovers
        """Clean up what a crashed run left behind; called with :meth:`lock_file` held."""


@dataclass(frozen=True)
class StoreContext:
    settings: Mapping[str, Any]
    config_dir: Path
    where: str = "store"


@dataclass(frozen=True, kw_only=True)
class StoreType:
    """A backend for the store of generated values, provided through :func:`credbridge_stores`."""

    name: str
    open: Callable[[StoreContext], Store]
    summary: str = ""

    def __post_init__(self) -> None:
        _check_name("store", self.name)


# --------------------------------------------------------------------------- sinks


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class SinkContext:
    target: Target
    settings: Mapping[str, Any]
    """The target's ``sink`` table (without ``type``)."""
    config: Config
    where: str


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


@dataclass(frozen=True, kw_only=True)
class SinkType:
    """A sink, provided through :func:`credbridge_sinks`."""

    name: str
    open: Callable[[SinkContext], Sink]
    summary: str = ""
    target_kinds: frozenset[str] = field(default_factory=lambda: frozenset({"unit"}))
    """Which target kinds it serves: ``unit`` (a systemd service), ``vm`` or both."""

    def __post_init__(self) -> None:
        _check_name("sink", self.name)


# --------------------------------------------------------------------------- launchers


@dataclass(frozen=True)
class LauncherContext:
    target: Target
    settings: Mapping[str, Any]
    """The target's ``launcher`` table (without ``type``)."""
    config: Config
    where: str
    sink: Sink
    """The target's sink (a ``credbridge.core.vm.VmSink`` for VM targets)."""


class Launcher(abc.ABC):
    """Starts a VM with its credentials wired in through a VM sink, in the foreground."""

    @abc.abstractmethod
    def plan(self, credentials: Mapping[str, Secret | Pending]) -> Mapping[str, Any]:
        """The launch plan with every value redacted (``credbridge launch --dry-run``)."""

    @abc.abstractmethod
    def launch(self, deliveries: Sequence[Delivery]) -> int:
        """Start the VM, wait for it, clean up; return the VM's exit status."""

    def check(self) -> None:  # noqa: B027 - optional: launchers with nothing to check early
        """Refuse early, before anything is resolved or generated (no side effects): e.g. a
        runtime directory that is not on tmpfs or is unsafe."""


@dataclass(frozen=True, kw_only=True)
class LauncherType:
    """A VM launcher, provided through :func:`credbridge_launchers`."""

    name: str
    open: Callable[[LauncherContext], Launcher]
    summary: str = ""

    def __post_init__(self) -> None:
        _check_name("launcher", self.name)


__all__ = [
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
    "Request",
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
]
