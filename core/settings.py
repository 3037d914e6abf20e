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
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from credbridge.core.errors import ConfigError, printable
from credbridge.core.records import field, record

MAX_SECONDS = 86400.0
"""Upper bound for every timeout setting: a day (longer ones overflow timers in places)."""

_CONTROL = frozenset({"Cc", "Zl", "Zp"})
_BARE_KEY = re.compile(r"\A[A-Za-z0-9_-]+\Z")


def keypath(*parts: str) -> str:
    """Render a TOML key path, quoting parts that are not bare keys."""
    return ".".join(
        p if _BARE_KEY.fullmatch(p) else '"' + p.replace('"', '\\"') + '"' for p in parts
    )


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


SIZE_MAX = 1 << 50
"""Upper bound of a size setting unless it declares its own: 1 PiB, beyond any host."""
_SIZE = re.compile(r"\s*([0-9]{1,15})\s*([KMGT]?)i?B?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size_setting(value: Any, *, file: str | None, key: str, maximum: int = SIZE_MAX) -> int:
    """A size in bytes: a positive integer, or a string like ``"512M"`` (K, M, G, T are
    powers of 1024; ``KiB``/``KB`` spellings accepted), at most ``maximum``."""
    size = 0
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value)):
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]
    if 0 < size <= maximum:
        return size
    raise ConfigError(f'{value!r} is not a size like "512M" or "1G"', file=file, key=key)


SETTING_KINDS = (
    "string",
    "bool",
    "integer",
    "number",
    "duration",
    "size",
    "path",
    "choice",
    "list",
    "table",
    "any",
)
"""The kinds a :class:`Setting` can declare (docs/plugins.md, "Settings")."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@record(frozen=True)
class Setting:
    """One key a plugin's settings table may hold: its name, kind, default and a line of doc.

    Declared on a plugin record (``SourceType(settings=[...])`` and the others) and checked
    when the config loads: an unknown key (with a "did you mean") or a value of the wrong kind
    is one line naming the file and the key. ``default`` is what :func:`read_settings` returns
    for an absent key, as is (``None``: not set). Kinds and their values:

    ``string``: a non-empty string without control characters; ``bool``: ``true``/``false``;
    ``integer``: an integer from ``minimum`` to ``maximum``; ``number``: a finite number from
    ``minimum`` to ``maximum``; ``duration``: seconds, a finite number greater than 0 and at
    most ``maximum`` (default a day); ``size``: bytes, an integer or ``"512M"``, at most
    ``maximum``; ``path``: a :func:`path_setting` (``~`` expanded, relative to the config
    file's directory), read as a :class:`~pathlib.Path`; ``choice``: one of ``choices``;
    ``list``: an array; ``table``: a table; ``any``: anything (the plugin checks it).

    A ``table`` may declare its own keys, checked at load like the plugin's: ``fields`` a
    sequence of settings, or, with ``selector``, a mapping from each value of the table's key
    ``selector`` to the settings of that variant (``auth = { method = "approle", ... }``; the
    selector's own declaration is in every variant, its default picks the variant when absent).
    The table is returned as written: read it with :func:`read_settings` and the variant's
    declarations to get typed values.
    """

    name: str
    kind: str = "any"
    default: Any = None
    doc: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    fields: Sequence[Setting] | Mapping[str, Sequence[Setting]] | None = field(
        default=None, hash=False
    )
    selector: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"Setting: invalid name {self.name!r} (a bare TOML key)")
        if self.kind not in SETTING_KINDS:
            raise ValueError(
                f"Setting {self.name!r}: unknown kind {self.kind!r} "
                f"(kinds: {', '.join(SETTING_KINDS)})"
            )
        object.__setattr__(self, "choices", tuple(self.choices))
        if (self.kind == "choice") != bool(self.choices):
            raise ValueError(f"Setting {self.name!r}: choices go with kind 'choice' (only)")
        if self.kind == "integer" and (self.minimum is None or self.maximum is None):
            raise ValueError(f"Setting {self.name!r}: an integer needs minimum and maximum")
        if self.fields is not None and self.kind != "table":
            raise ValueError(f"Setting {self.name!r}: fields go with kind 'table' (only)")
        if (self.selector is not None) != isinstance(self.fields, Mapping):
            raise ValueError(
                f"Setting {self.name!r}: a selector goes with fields given per variant (a mapping)"
            )
        if self.selector is not None and isinstance(self.fields, Mapping):
            for variant, declared in self.fields.items():
                if self.selector not in {setting.name for setting in declared}:
                    raise ValueError(
                        f"Setting {self.name!r}: variant {variant!r} does not declare the "
                        f"selector {self.selector!r}"
                    )

    def parse(self, value: Any, *, base: Path, file: str | None, key: str) -> Any:
        """``value`` as this kind (a :class:`~pathlib.Path` for a path, an ``int`` for a size);
        raises :class:`ConfigError` naming ``file`` and ``key``."""
        kind = self.kind
        if kind == "string":
            return name_setting(value, file=file, key=key)
        if kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError("must be true or false", file=file, key=key)
            return value
        if kind == "integer":
            return int_setting(
                value, file=file, key=key, minimum=int(self.low), maximum=int(self.high)
            )
        if kind == "number":
            return number_setting(value, file=file, key=key, minimum=self.low, maximum=self.high)
        if kind == "duration":
            return seconds_setting(value, file=file, key=key, maximum=self.high)
        if kind == "size":
            return size_setting(value, file=file, key=key, maximum=int(self.high))
        if kind == "path":
            return path_setting(value, base=base, file=file, key=key)
        if kind == "choice":
            if value not in self.choices:
                raise ConfigError(
                    f"must be one of {', '.join(self.choices)}, not {printable(str(value))!r}",
                    file=file,
                    key=key,
                )
            return value
        if kind == "list" and not isinstance(value, list | tuple):
            raise ConfigError(f"must be an array, not {type(value).__name__}", file=file, key=key)
        if kind == "table" and not isinstance(value, Mapping):
            raise ConfigError(f"must be a table, not {type(value).__name__}", file=file, key=key)
        if self.fields is not None:
            self._check_fields(value, base=base, file=file, key=key)
        return value

    def _check_fields(
        self, table: Mapping[str, Any], *, base: Path, file: str | None, key: str
    ) -> None:
        """Check ``table`` against its declared keys (its variant's, with a selector)."""
        fields = self.fields or ()
        what = f"the {self.name} table"
        if isinstance(fields, Mapping):
            selector = next(s for s in next(iter(fields.values())) if s.name == self.selector)
            where = f"{key}.{keypath(selector.name)}"
            picked = selector.parse(
                table.get(selector.name, selector.default), base=base, file=file, key=where
            )
            if picked not in fields:
                raise ConfigError(
                    f"must be one of {', '.join(fields)}, not {printable(str(picked))!r}",
                    file=file,
                    key=where,
                )
            fields, what = fields[picked], f"{picked} {self.name}"
        read_settings(declare(fields) or {}, table, what=what, file=file, where=key, base=base)

    @property
    def low(self) -> float:
        """The smallest value a number accepts (0 unless declared)."""
        return 0.0 if self.minimum is None else self.minimum

    @property
    def high(self) -> float:
        """The largest value a number, duration or size accepts."""
        if self.maximum is not None:
            return self.maximum
        return {"duration": MAX_SECONDS, "size": float(SIZE_MAX)}.get(self.kind, math.inf)

    def describe(self) -> str:
        """The kind with its bounds, as ``credbridge plugins -v`` shows it."""
        if self.kind in {"integer", "number"}:
            return f"{self.kind} {self.low:g}..{self.high:g}"
        if self.kind == "duration":
            return f"duration (seconds, at most {self.high:g})"
        if self.kind == "size":
            return f"size (bytes or '512M', at most {_bytes(int(self.high))})"
        if self.kind == "choice":
            return f"choice: {' | '.join(self.choices)}"
        return self.kind


def _bytes(size: int) -> str:
    """``size`` in the largest binary unit that divides it (``1 PiB``, ``48 KiB``, ``100 B``)."""
    for unit, shift in (("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} B"


def declare(settings: Iterable[Setting | str] | None) -> dict[str, Setting] | None:
    """A record's ``settings`` as ``{name: Setting}`` in declaration order; a bare name is
    ``Setting(name)`` (kind ``any``, for plugins written before kinds existed).
    ``None`` stays ``None``: the plugin checks its table itself."""
    if settings is None:
        return None
    if isinstance(settings, str | Setting):
        settings = (settings,)
    declared: dict[str, Setting] = {}
    for item in settings:
        setting = Setting(item) if isinstance(item, str) else item
        if not isinstance(setting, Setting):
            raise TypeError(f"settings must hold Setting or str, not {type(item).__name__}")
        if setting.name in declared:
            raise ValueError(f"setting {setting.name!r} declared twice")
        declared[setting.name] = setting
    return declared


def did_you_mean(key: str, allowed: Iterable[str]) -> str:
    """``"did you mean 'x'? "`` for the closest of ``allowed``, or ``""``."""
    import difflib

    close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _fresh(default: Any) -> Any:
    """A copy of a list or table default, so no caller can change the declaration's."""
    import copy

    return copy.deepcopy(default) if isinstance(default, list | dict) else default


def refuse_unknown(
    settings: Iterable[str],
    known: Iterable[str | Setting],
    *,
    what: str,
    file: str | None,
    where: str,
) -> None:
    """Refuse the first key of ``settings`` not in ``known`` (names or declarations): one line
    naming the file and the key, with the closest known name ("did you mean") and all of them."""
    allowed = frozenset(k.name if isinstance(k, Setting) else k for k in known)
    for key in sorted(map(str, settings)):
        if key not in allowed:
            names = ", ".join(sorted(allowed)) or "none"
            raise ConfigError(
                f"unknown setting {str(key)!r} for {what} ({did_you_mean(str(key), allowed)}"
                f"known: {names})",
                file=file,
                key=f"{where}.{keypath(str(key))}",
            )


def read_settings(
    declared: Mapping[str, Setting],
    settings: Mapping[str, Any],
    *,
    what: str,
    file: str | None,
    where: str,
    base: Path,
) -> dict[str, Any]:
    """Check ``settings`` against ``declared`` and return every declared key's value (parsed by
    its kind; the default when absent). ``what`` names the table's owner in the message
    (``"source 'vault'"``); ``where`` is the table's key path."""
    refuse_unknown(settings, declared, what=what, file=file, where=where)
    return {
        name: (
            setting.parse(settings[name], base=base, file=file, key=f"{where}.{keypath(name)}")
            if settings.get(name) is not None
            else _fresh(setting.default)
        )
        for name, setting in declared.items()
    }
