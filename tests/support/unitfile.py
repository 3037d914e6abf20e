"""A small reader of systemd unit-file syntax, as systemd 252 reads it (for the drop-in checks).

It follows src/shared/conf-parser.c and systemd.syntax(7): a line ends at ``\\n``, ``\\r`` or
NUL; leading whitespace is skipped; lines starting with ``#`` or ``;`` are comments (even in
the middle of a continued line, and a comment never continues); a line ending in an unescaped
backslash continues on the next one (the backslash becomes a space); ``KEY=VALUE`` is split at
the first ``=`` and both sides are stripped. ``LoadCredential=ID:PATH`` takes ``ID`` up to the
first ``:`` and ``PATH`` verbatim, with ``%`` specifiers expanded (``%%`` is a literal ``%``).
"""

from __future__ import annotations

import re

_LINE_END = re.compile(r"\r\n|[\n\r\0]")
WHITESPACE = " \t\n\r"


class UnitSyntaxError(ValueError):
    pass


def _ends_in_escape(line: str) -> bool:
    escaped = False
    for char in line:
        escaped = (not escaped) and char == "\\"
    return escaped


def parse(text: str) -> list[tuple[str, str, str]]:
    """``(section, key, value)`` for every assignment, in order."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    continuation: str | None = None
    for raw in _LINE_END.split(text):
        stripped = raw.lstrip(WHITESPACE)
        if stripped[:1] in {"#", ";"}:
            continue
        line = raw if continuation is None else continuation + raw
        if _ends_in_escape(line):
            continuation = line[:-1] + " "
            continue
        continuation = None
        line = line.strip(WHITESPACE)
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise UnitSyntaxError(f"bad section header {line!r}")
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UnitSyntaxError(f"missing '=' in {line!r}")
        entries.append((section, key.strip(WHITESPACE), value.strip(WHITESPACE)))
    if continuation is not None:
        entries_tail = continuation.strip(WHITESPACE)
        if entries_tail:
            raise UnitSyntaxError("file ends inside a continued line")
    return entries


def expand_specifiers(value: str) -> str:
    """``%%`` -> ``%``; any other specifier is refused (credbridge never writes one)."""
    out = []
    index = 0
    while index < len(value):
        char = value[index]
        if char == "%":
            if value[index + 1 : index + 2] != "%":
                raise UnitSyntaxError(f"specifier %{value[index + 1 : index + 2]} in {value!r}")
            out.append("%")
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def load_credentials(text: str) -> list[tuple[str, str, str]]:
    """``(directive, ID, PATH-or-VALUE)`` of every credential setting in ``[Service]``.

    Raises :class:`UnitSyntaxError` for anything else in the file (another directive, another
    section, a specifier), which is what the drop-in checks want to rule out.
    """
    found = []
    for section, key, value in parse(text):
        if section != "Service":
            raise UnitSyntaxError(f"assignment outside [Service]: {key}")
        if key not in {"LoadCredential", "LoadCredentialEncrypted", "SetCredential"}:
            raise UnitSyntaxError(f"unexpected directive {key}=")
        ident, sep, rest = value.partition(":")
        if not sep:
            raise UnitSyntaxError(f"{key}= without ':'")
        found.append((key, ident, expand_specifiers(rest) if key != "SetCredential" else rest))
    return found
