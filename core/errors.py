"""The one error family of credbridge.

Every failure a user can cause or fix is a :class:`CredbridgeError`. The CLI turns it into
one line on stderr and the exit code of its class, in one place (:mod:`credbridge.core.cli`).
Plugins raise these too; anything else escaping a plugin is a bug and is reported as such.

Messages name the file, key, reference, credential or source at fault and never a value.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Documented exit codes of the ``credbridge`` command (see docs/cli.md)."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    CONFIG = 3
    REFERENCE = 4
    NOT_FOUND = 5
    FORBIDDEN = 6
    UNREACHABLE = 7
    TIMEOUT = 8
    DELIVERY = 9
    LAUNCH = 10
    PLUGIN = 11
    RESTART = 12


class CredbridgeError(Exception):
    """Base class: a failure reported to the user as one line, with a documented exit code."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(CredbridgeError):
    """The configuration file is missing, malformed or inconsistent."""

    exit_code = ExitCode.CONFIG

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.file = file
        self.key = key


class ReferenceError_(CredbridgeError):
    """A reference does not parse, or names an unknown scheme or option."""

    exit_code = ExitCode.REFERENCE

    def __init__(self, reference: str, problem: str) -> None:
        super().__init__(f"reference {reference!r}: {problem}")
        self.reference = reference


BadReference = ReferenceError_


class SourceError(CredbridgeError):
    """A source could not produce the value of a reference.

    Subclasses say why; the message names the reference (and credential, once known),
    never the value or any token.
    """

    exit_code = ExitCode.NOT_FOUND
    kind = "failed"

    def __init__(self, reference: str, problem: str) -> None:
        super().__init__(f"{reference}: {problem}")
        self.reference = reference
        self.problem = problem
        self.credential: str | None = None

    def for_credential(self, target: str, credential: str) -> SourceError:
        """Return a copy of this error that also names the credential it was resolved for."""
        clone = type(self).__new__(type(self))
        CredbridgeError.__init__(
            clone, f"{target}/{credential}: {self.reference}: {self.kind}: {self.problem}"
        )
        clone.reference = self.reference
        clone.problem = self.problem
        clone.credential = f"{target}/{credential}"
        return clone


class NotFound(SourceError):
    """The path, field, file or variable does not exist."""

    exit_code = ExitCode.NOT_FOUND
    kind = "not found"


class Forbidden(SourceError):
    """The source refused: missing permission, bad or expired token."""

    exit_code = ExitCode.FORBIDDEN
    kind = "forbidden"


class Unreachable(SourceError):
    """The source cannot be reached, is sealed or unavailable, or TLS failed."""

    exit_code = ExitCode.UNREACHABLE
    kind = "unreachable"


class Timeout(SourceError):
    """The source did not answer in time (after the configured retries)."""

    exit_code = ExitCode.TIMEOUT
    kind = "timeout"


class InvalidValue(SourceError):
    """The source answered, but the value cannot be used (e.g. selector on non-JSON data)."""

    exit_code = ExitCode.NOT_FOUND
    kind = "invalid value"


class DeliveryError(CredbridgeError):
    """A sink could not stage or commit; the target was left as it was."""

    exit_code = ExitCode.DELIVERY


class LaunchError(CredbridgeError):
    """A launcher could not start the VM or a helper it needs."""

    exit_code = ExitCode.LAUNCH


class RestartFailed(CredbridgeError):
    """A delivery committed, but systemd could not restart or reload a unit that uses it."""

    exit_code = ExitCode.RESTART


class PluginError(CredbridgeError):
    """A plugin is broken: failed to load, clashes with another, or returned a bad record."""

    exit_code = ExitCode.PLUGIN


class ResolutionFailed(CredbridgeError):
    """Several credentials failed; carries each failure. Exit code is the first failure's."""

    def __init__(self, failures: list[SourceError]) -> None:
        self.failures = failures
        lines = [str(f) for f in failures]
        head = f"{len(failures)} credential(s) could not be resolved; nothing was delivered"
        super().__init__("\n".join([head, *lines]) if len(lines) > 1 else lines[0])
        self.exit_code = failures[0].exit_code
