"""The one error family of credbridge.

Every failure a user can cause or fix is a :class:`CredbridgeError`. The CLI turns it into
one line on stderr and the exit code of its class, in one place (:mod:`credbridge.core.cli`).
Plugins raise these too; anything else escaping a plugin is a bug and is reported as such.

Messages name the file, key, reference, credential or source at fault and never a value.
"""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Callable
from typing import Any

# Characters that end a line or rewrite a terminal: C0/C1 controls, DEL, line/paragraph
# separators, format characters (bidi overrides) and lone surrogates (undecodable argv bytes).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def printable(text: str) -> str:
    """``text`` with every character that could split or disguise a line shown escaped.

    Error lines, log messages and tabular output carry names, paths and references that came
    from users; a ``%0A`` in a selector must not print as a second, forged line. Control
    characters become ``\\n``, ``\\x1b``, ``\\u202e``; bytes that were not UTF-8 in argv
    (surrogate escapes) become ``\\xff``. Everything else, backslashes included, is kept.
    """
    if text.isprintable():
        return text
    out = []
    for char in text:
        if unicodedata.category(char) not in _UNSAFE_CATEGORIES:
            out.append(char)
        elif "\udc80" <= char <= "\udcff":
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        else:
            out.append(repr(char)[1:-1])
    return "".join(out)


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
    LOCKED = 12
    UNSAFE_PATH = 13
    RESTART = 14


class CredbridgeError(Exception):
    """Base class: a failure reported to the user as one line, with a documented exit code."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init_subclass__(cls, *, exit_code: ExitCode | None = None, **kwargs: Any) -> None:
        # ``class Denied(CredbridgeError, exit_code=ExitCode.FORBIDDEN)``: the class's exit code.
        super().__init_subclass__(**kwargs)
        if exit_code is not None:
            cls.exit_code = exit_code

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        """The raw message; what users see is :meth:`lines` (control characters escaped)."""

    def lines(self) -> list[str]:
        """The message as printed: one line, user-supplied control characters escaped."""
        return [printable(self.message)]

    def __str__(self) -> str:
        return "\n".join(self.lines())


class ConfigError(CredbridgeError, exit_code=ExitCode.CONFIG):
    """The configuration file is missing, malformed or inconsistent."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.file = file
        self.key = key


class BadReference(CredbridgeError, exit_code=ExitCode.REFERENCE):
    """A reference does not parse, or names an unknown scheme or option."""

    def __init__(self, reference: str, problem: str) -> None:
        super().__init__(f"reference {reference!r}: {problem}")
        self.reference = reference
        self.problem = problem


SERVER_TEXT_LIMIT = 1 << 16
"""Characters of a server's error text that are kept (and checked) at most."""


class ServerText:
    """Text a server or tool wrote into an error answer, kept out of the error's message.

    A server can quote anything it knows in an error, including values this run fetches
    later, from it or from another source. So the text is not part of the message when the
    error is made; the engine shows it (or says it was withheld) only once every value of
    the run is known (:meth:`SourceError.disclose`, :func:`credbridge.core.remote.disclose`).
    An error that leaves the engine before that — a run stopped early — never shows it.
    ``guard`` is the source's own check (its tokens and login material).
    """

    __slots__ = ("guard", "text")

    def __init__(self, text: str, guard: Callable[[str], bool] | None = None) -> None:
        self.text = text[:SERVER_TEXT_LIMIT]
        self.guard = guard


class SourceError(CredbridgeError, exit_code=ExitCode.NOT_FOUND):
    """A source could not produce the value of a reference.

    Subclasses say why; the message names the reference (and credential, once known),
    never the value or any token. ``server_text`` is what the server said, pending until the
    engine has checked it against every value of the run (see :class:`ServerText`).
    """

    kind = "failed"
    """What went wrong, in a word or two (``"not found"``), as messages and reports name it."""

    def __init_subclass__(cls, *, kind: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind is not None:
            cls.kind = kind

    def __init__(
        self, reference: str, problem: str, *, server_text: ServerText | None = None
    ) -> None:
        super().__init__(f"{reference}: {problem}")
        self.reference = reference
        self.problem = problem
        self.credential: str | None = None
        self.server_text = server_text

    def disclose(self, detail: str) -> None:
        """Append ``detail`` (the checked server text, or a note that it was withheld) once;
        afterwards the error has no pending server text."""
        if self.server_text is None:
            return
        self.server_text = None
        if detail:
            self.problem += f": {detail}"
            self.message += f": {detail}"
            self.args = (self.message,)

    def retyped(
        self, reference: str, problem: str | None = None, kind: type[SourceError] | None = None
    ) -> SourceError:
        """A copy naming ``reference`` (and saying ``problem``, as ``kind``) that keeps the
        pending server text."""
        return (kind or type(self))(
            reference, self.problem if problem is None else problem, server_text=self.server_text
        )

    def for_credential(self, target: str, credential: str) -> SourceError:
        """Return a copy of this error that also names the credential it was resolved for."""
        clone = type(self).__new__(type(self))
        CredbridgeError.__init__(
            clone, f"{target}/{credential}: {self.reference}: {self.kind}: {self.problem}"
        )
        clone.reference = self.reference
        clone.problem = self.problem
        clone.credential = f"{target}/{credential}"
        clone.server_text = self.server_text
        return clone


def renamed(error: SourceError, reference: str) -> SourceError:
    """The same error naming ``reference`` (errors are often raised before it is known)."""
    if error.reference == reference:
        return error
    return error.retyped(reference)


class NotFound(SourceError, exit_code=ExitCode.NOT_FOUND, kind="not found"):
    """The path, field, file or variable does not exist."""


class Forbidden(SourceError, exit_code=ExitCode.FORBIDDEN, kind="forbidden"):
    """The source refused: missing permission, bad or expired token."""


class Unreachable(SourceError, exit_code=ExitCode.UNREACHABLE, kind="unreachable"):
    """The source cannot be reached, is sealed or unavailable, or TLS failed."""


class Timeout(SourceError, exit_code=ExitCode.TIMEOUT, kind="timeout"):
    """The source did not answer in time (after the configured retries)."""


class InvalidValue(SourceError, exit_code=ExitCode.NOT_FOUND, kind="invalid value"):
    """The source answered, but the value cannot be used (e.g. selector on non-JSON data)."""


class DeliveryError(CredbridgeError, exit_code=ExitCode.DELIVERY):
    """A sink could not stage or commit; the target was left as it was."""


class LaunchError(CredbridgeError, exit_code=ExitCode.LAUNCH):
    """A launcher could not start the VM or a helper it needs."""


class RestartFailed(CredbridgeError, exit_code=ExitCode.RESTART):
    """A delivery committed, but systemd could not restart or reload a unit that uses it."""


class PluginError(CredbridgeError, exit_code=ExitCode.PLUGIN):
    """A plugin is broken: two plugins claim one name, or a plugin failed while called."""


class PluginFailed(PluginError):
    """A plugin raised something other than a :class:`CredbridgeError`: a bug in that plugin.

    The message names the plugin, its distribution and version, and what credbridge was
    calling; never the exception's own message, which could carry a value. ``error`` is the
    original exception (the CLI shows where it was raised at ``-vv``, without messages).
    """

    def __init__(self, message: str, error: BaseException) -> None:
        super().__init__(message)
        self.error = error


class LockUnavailable(CredbridgeError, exit_code=ExitCode.LOCKED):
    """Another credbridge run holds a lock this run needs, longer than ``--wait-lock`` allows."""

    def __init__(self, path: str, holder: str, waited: float) -> None:
        how = (
            "not waiting (--no-wait)" if waited <= 0 else f"gave up after {waited:g}s (--wait-lock)"
        )
        super().__init__(f"{path} is locked by another credbridge run (pid {holder}); {how}")
        self.path = path
        self.holder = holder


class UnsafePath(CredbridgeError, exit_code=ExitCode.UNSAFE_PATH):
    """A directory on the way to a secret could be changed by someone else.

    It is a symlink, is owned by a user other than root and the one credbridge runs as, or is
    group- or world-writable (root-owned sticky directories such as ``/tmp`` excepted, as
    ancestors). The message names the path, its owner and its mode.
    """

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"unsafe path {path}: {problem}")
        self.path = path
        self.problem = problem


class ResolutionFailed(CredbridgeError):
    """Several credentials failed; carries each failure. Exit code is the first failure's."""

    def __init__(self, failures: list[SourceError]) -> None:
        self.failures = failures
        lines = [str(f) for f in failures]
        head = f"{len(failures)} credential(s) could not be resolved; nothing was delivered"
        super().__init__("\n".join([head, *lines]) if len(lines) > 1 else lines[0])
        self.exit_code = failures[0].exit_code

    def lines(self) -> list[str]:
        """A head line, then one line per failed credential (each escaped on its own)."""
        if len(self.failures) == 1:
            return self.failures[0].lines()
        head = f"{len(self.failures)} credential(s) could not be resolved; nothing was delivered"
        return [head, *(line for f in self.failures for line in f.lines())]
