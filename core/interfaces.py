"""The interfaces plugins implement, and the values that pass through them.

A source (:class:`Source` and its kinds) turns :class:`Request` objects into an
:data:`Outcome` each; a :class:`Store` keeps generated values; a :class:`Sink` plans and stages
a target's set of :class:`Delivery` objects, which a :class:`Staged` commits or rolls back; a
:class:`Launcher` starts a VM with them. The records that announce these implementations to
credbridge, and the contexts they are opened with, are in :mod:`credbridge.core.types`.
"""

from __future__ import annotations

import abc
import contextlib
import enum
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from credbridge.core.errors import SourceError, renamed
from credbridge.core.records import record
from credbridge.core.reference import Locator, Reference, select
from credbridge.core.secret import Secret, SecretDocument
from credbridge.core.threads import map_in_threads

# --------------------------------------------------------------------------- resolution


class Mode(enum.Enum):
    """Why a source is asked for values."""

    DELIVER = "deliver"
    """Produce real values; generators create and persist what is missing."""
    DRY_RUN = "dry-run"
    """Produce real values where that has no side effect; generators return :class:`Pending`."""


@record(frozen=True, slots=True)
class Request:
    """One reference to resolve, and the credential it is resolved for (if any).

    ``owner`` identifies the credential (``TARGET/CREDENTIAL``); generators key what they
    persist by it, so two credentials with the same ``generate:`` reference get two values.
    """

    reference: Reference
    owner: str | None = None


@record(frozen=True)
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


@record(frozen=True)
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

    def held_for_run(self) -> contextlib.AbstractContextManager[None]:
        """Optional: what the store holds from its run lock to the end of the run, entered
        right after :meth:`lock_file` is taken (the file store takes its write lock here once,
        so ``create``/``rotate`` inside the run do not lock again). Default: nothing."""
        return contextlib.nullcontext()


# --------------------------------------------------------------------------- sinks


@record(frozen=True, slots=True)
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


@record(frozen=True, slots=True)
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


# --------------------------------------------------------------------------- launchers


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
