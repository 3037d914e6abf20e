"""Parsers for the strings and numbers users put in settings: paths, names, numbers.

Every value that reaches a file name, a unit file, a child's argv or an error line goes
through one of these first (docs/configuration.md, "Validation rules"):

* names and paths never contain control characters (C0, DEL, C1, U+2028/U+2029) and are
  valid UTF-8 (no surrogate escapes from undecodable argv bytes);
* ``~`` and ``~USER`` at the start of a path are expanded, and an unknown user or a missing
  home directory is a one-line error, not a traceback;
* numbers are finite (TOML's ``nan`` and ``inf`` are refused) and within documented bounds.
"""

from __future__ import annotations

import math
import os
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from credbridge.core.errors import ConfigError, printable

MAX_SECONDS = 86400.0
"""Upper bound for every timeout setting: a day (longer ones overflow timers in places)."""

_CONTROL = frozenset({"Cc", "Zl", "Zp"})


def control_problem(text: str) -> str | None:
    """Why ``text`` cannot be a name or a path (a control character, not UTF-8), or ``None``."""
    for char in text:
        category = unicodedata.category(char)
        if category == "Cs":
            return "is not valid UTF-8"
        if category in _CONTROL:
            what = "a NUL byte" if char == "\0" else f"the control character {printable(char)}"
            return f"contains {what} (control characters are not allowed)"
    return None


def expand_user(text: str) -> Path:
    """``text`` as a path, a leading ``~`` or ``~USER`` expanded.

    Raises :class:`ValueError` with a one-line reason when the user is unknown or the home
    directory cannot be determined (``Path.expanduser`` raises ``RuntimeError`` there).
    """
    if not text.startswith("~"):
        return Path(text)
    expanded = os.path.expanduser(text)
    if expanded.startswith("~"):  # expanduser leaves the text alone when it cannot expand
        user = text[1:].split("/", 1)[0]
        if user:
            msg = f"cannot expand '~{user}': no user {user!r} on this machine"
        else:
            msg = "cannot expand '~': $HOME is not set and the user has no home directory"
        raise ValueError(msg)
    return Path(expanded)


def path_setting(value: Any, *, base: Path, file: str | None, key: str) -> Path:
    """A path from the config: a non-empty string, no control characters, ``~`` expanded,
    relative paths taken from ``base`` (the config file's directory)."""
    if not isinstance(value, str) or not value:
        raise ConfigError("must be a non-empty path string", file=file, key=key)
    problem = control_problem(value)
    if problem is not None:
        raise ConfigError(f"path {problem}", file=file, key=key)
    try:
        path = expand_user(value)
    except ValueError as error:
        raise ConfigError(str(error), file=file, key=key) from None
    return path if path.is_absolute() else base / path


def name_setting(value: Any, *, file: str | None, key: str) -> str:
    """A free-form name or word (program name, mode): a non-empty string without controls."""
    if not isinstance(value, str) or not value:
        raise ConfigError("must be a non-empty string", file=file, key=key)
    problem = control_problem(value)
    if problem is not None:
        raise ConfigError(f"value {problem}", file=file, key=key)
    return value


def seconds_setting(
    value: Any, *, file: str | None, key: str, maximum: float = MAX_SECONDS
) -> float:
    """A positive, finite number of seconds, at most ``maximum``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= maximum
    ):
        raise ConfigError(
            f"must be a positive number of seconds, at most {maximum:g}", file=file, key=key
        )
    return float(value)


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_DURATION = 365 * 86400.0


def duration_problem(value: Any) -> str | None:
    """Why ``value`` is not a duration like ``"90s"``, ``"5m"`` or ``"1h30m"``, or ``None``."""
    import re

    expected = 'must be a duration like "30s", "5m" or "1h30m" (units ms, s, m, h, d)'
    if not isinstance(value, str):
        return expected
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return expected
    seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if not 0 < seconds <= MAX_DURATION:
        return f"must be a duration above 0 and at most {MAX_DURATION / 86400:g}d"
    return None


def duration_setting(value: Any, *, file: str | None, key: str) -> float:
    """A duration (:func:`duration_problem`) in seconds."""
    import re

    problem = duration_problem(value)
    if problem is not None:
        raise ConfigError(problem, file=file, key=key)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", value)
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def number_setting(
    value: Any, *, file: str | None, key: str, minimum: float, maximum: float
) -> float:
    """A finite number from ``minimum`` to ``maximum`` (integers accepted)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not minimum <= value <= maximum
    ):
        raise ConfigError(f"must be a number from {minimum:g} to {maximum:g}", file=file, key=key)
    return float(value)


MAX_ID = 2**32 - 2
"""The largest user or group id: ids are 32-bit and ``2**32 - 1`` means "no change" to the
kernel (``chown(2)``), so systemd and the kernel refuse it as an id."""


def account_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a user or group, or ``None``: a name, or a numeric id (a TOML
    integer or a string of ASCII digits, 0 to :data:`MAX_ID`). Only ASCII digits make an id:
    ``"\u0663"`` (Arabic-Indic three) or fullwidth digits are names, looked up (and not found)
    like any other, never uid 3."""
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return "must be a user/group name or numeric id"
    if isinstance(value, str) and (problem := control_problem(value)) is not None:
        return f"value {problem}"
    if (isinstance(value, int) or is_numeric_id(value)) and not 0 <= int(value) <= MAX_ID:
        return f"numeric id must be from 0 to {MAX_ID}"
    return None


def account_setting(value: Any, *, file: str | None, key: str) -> str | None:
    """A user or group setting (see :func:`account_problem`) as text; ``None`` stays ``None``."""
    if value is None:
        return None
    problem = account_problem(value)
    if problem is not None:
        raise ConfigError(problem, file=file, key=key)
    return str(value)


def is_numeric_id(text: str) -> bool:
    """Whether a user or group given as text is a numeric id: ASCII digits only."""
    return text.isascii() and text.isdigit()


def int_setting(value: Any, *, file: str | None, key: str, minimum: int, maximum: int) -> int:
    """An integer (not a boolean, not a float) from ``minimum`` to ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ConfigError(f"must be an integer from {minimum} to {maximum}", file=file, key=key)
    return value


class SettingsTable:
    """Reads one settings table (``[sources.SCHEME]``, a sink's table) with the parsers above;
    every error names the file and the key."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        where: str,
        config_file: str | None,
        known: Iterable[str],
    ) -> None:
        self.settings = settings
        self.where = where
        self.config_file = config_file
        self.known = frozenset(known)
        unknown = sorted(str(k) for k in set(settings) - self.known)
        if unknown:
            raise self.fail(unknown[0], f"unknown setting (known: {', '.join(sorted(self.known))})")

    def key(self, key: str) -> str:
        return f"{self.where}.{key}" if key else self.where

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.config_file, key=self.key(key))

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self.settings.get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "must be a non-empty string")
        return name_setting(value, file=self.config_file, key=self.key(key))

    def choice(self, key: str, choices: Iterable[str], default: str) -> str:
        allowed = list(choices)
        value = self.settings.get(key, default)
        if value not in allowed:
            raise self.fail(key, f"must be one of {', '.join(allowed)}")
        return str(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.settings.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def number(
        self, key: str, default: float, *, minimum: float = 0.0, maximum: float = math.inf
    ) -> float:
        value = self.settings.get(key, default)
        return number_setting(
            value, file=self.config_file, key=self.key(key), minimum=minimum, maximum=maximum
        )

    def timeout(self, key: str, default: float) -> float:
        value = self.settings.get(key, default)
        return seconds_setting(value, file=self.config_file, key=self.key(key), maximum=3600)

    def integer(self, key: str, default: int, *, minimum: int, maximum: int) -> int:
        value = self.settings.get(key, default)
        return int_setting(
            value, file=self.config_file, key=self.key(key), minimum=minimum, maximum=maximum
        )
