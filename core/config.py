"""The configuration: targets (systemd units and VMs) and the credentials they need.

One schema, two formats chosen by the file's extension: TOML, and JSON for ``.json`` files (so
Nix can write a config with ``builtins.toJSON``). See docs/configuration.md for the schema.
Every error names the file and the key path (``targets."app.service".credentials.db-password``,
the same path in either format) and says what is wrong, in one line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from credbridge.core.errors import BadReference, ConfigError
from credbridge.core.plugins import PluginManager, get_plugin_manager
from credbridge.core.records import field, record
from credbridge.core.reference import Reference, parse_reference
from credbridge.core.secret import MAX_DEPTH, TooDeep, nesting_depth
from credbridge.core.settings import (
    account_problem,
    duration_problem,
    duration_setting,
    int_setting,
    path_setting,
)
from credbridge.core.settings import keypath as keypath  # re-exported: callers import it here
from credbridge.core.types import TARGET_KINDS
from credbridge.core.validation import validate_config

DEFAULT_CONFIG = "credbridge.toml"
CONFIG_ENV = "CREDBRIDGE_CONFIG"
DEFAULT_STORE = "/var/lib/credbridge"
DEFAULT_CONCURRENCY = 16

# \A and \Z, not ^ and $: "$" also matches before a trailing newline, and "db\n" is no name.
CREDENTIAL_NAME = re.compile(r"\A[A-Za-z0-9_.@-]{1,255}\Z")
TARGET_NAME = re.compile(r"\A[A-Za-z0-9_.@:\\-]{1,255}\Z")
UNIT_TYPES = (
    "service",
    "socket",
    "device",
    "mount",
    "automount",
    "swap",
    "target",
    "path",
    "timer",
    "slice",
    "scope",
)
UNIT_NAME = re.compile(
    r"\A[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\@-]*)?\.(" + "|".join(UNIT_TYPES) + r")\Z"
)


def credential_name_problem(name: object) -> str | None:
    """Why ``name`` is not a credential name credbridge accepts, or ``None``."""
    if not isinstance(name, str) or not CREDENTIAL_NAME.fullmatch(name):
        return "invalid credential name (1-255 of A-Z a-z 0-9 '_.@-'; systemd rules)"
    if name in {".", ".."}:
        return "invalid credential name ('.' and '..' are not names)"
    return None


def target_name_problem(name: object) -> str | None:
    """Why ``name`` is not a target name (it names a directory in the credstore), or ``None``."""
    if not isinstance(name, str) or not TARGET_NAME.fullmatch(name):
        return "invalid target name (1-255 of letters, digits, '_.@:-' and '\\')"
    if name.startswith("."):
        return "invalid target name (must not start with '.': hidden names are staging areas)"
    return None


def unit_name_problem(name: object) -> str | None:
    """Why ``name`` is not a systemd unit name like ``app.service``, or ``None``."""
    if not isinstance(name, str) or len(name) > 255 or not UNIT_NAME.fullmatch(name):
        return (
            "must be a systemd unit name like 'app.service' "
            f"(letters, digits, ':_.-\\', one '@', a type: {', '.join(UNIT_TYPES)})"
        )
    return None


DEFAULT_SINK = {"unit": "credstore", "vm": "oem-strings"}
DEFAULT_LAUNCHER = "cloud-hypervisor"
DEFAULT_VM_UNIT = "microvm@{name}.service"
"""The unit a VM target's ``credbridge launch`` runs in (microvm.nix's host units)."""
ON_CHANGE = ("restart", "reload-or-restart", "reload", "none")
"""What ``deliver`` asks systemd to do with a unit whose credentials changed (strongest first)."""


@record(frozen=True, slots=True)
class CredentialSpec:
    """One credential of a target: its name there, where the value comes from, file options."""

    name: str
    reference: Reference
    optional: bool = False
    mode: int = 0o400
    owner: str | None = None
    group: str | None = None
    where: str = ""
    refresh: float | None = None
    """``refresh = "DURATION"`` of this credential (``credbridge agent``); None: its source's."""

    @property
    def text(self) -> str:
        return self.reference.text or str(self.reference)


@record(frozen=True)
class Target:
    """A systemd unit or a VM and the credentials it receives."""

    name: str
    kind: str
    unit: str | None
    credentials: tuple[CredentialSpec, ...]
    sink: str
    sink_settings: Mapping[str, Any] = field(default_factory=dict)
    launcher: str | None = None
    launcher_settings: Mapping[str, Any] = field(default_factory=dict)
    where: str = ""
    on_change: str | None = None
    """``restart``, ``reload``, ``reload-or-restart`` or ``none``; None: the run's default."""
    _by_name: dict[str, CredentialSpec] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        # A run looks credentials up once per changed one: a scan would make it quadratic.
        by_name: dict[str, CredentialSpec] = {}
        for spec in self.credentials:
            by_name.setdefault(spec.name, spec)
        object.__setattr__(self, "_by_name", by_name)

    def credential(self, name: str) -> CredentialSpec | None:
        return self._by_name.get(name)


@record(frozen=True)
class Config:
    """A loaded configuration. Build it with :func:`load_config` or :func:`parse_config`."""

    path: Path | None
    directory: Path
    targets: dict[str, Target]
    sources: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    sinks: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    store_type: str = "file"
    store_settings: Mapping[str, Any] = field(default_factory=dict)
    concurrency: int = DEFAULT_CONCURRENCY
    default_on_change: str | None = None
    """``[defaults] on_change``: for targets without their own ``on_change``."""
    refresh: dict[str, float] = field(default_factory=dict)
    """``refresh = "DURATION"`` of each ``[sources.NAME]`` table, in seconds (taken out of the
    source's settings: the agent reads it, the source never sees it)."""
    agent: Mapping[str, Any] = field(default_factory=dict)
    """The ``[agent]`` table (read by :mod:`credbridge.core.agent`)."""
    checked_with: PluginManager | None = field(default=None, compare=False, repr=False)
    """The plugins :func:`~credbridge.core.validation.validate_config` checked this config
    against (``None``: not checked yet); set once, by that function."""

    @property
    def label(self) -> str:
        return str(self.path) if self.path else "<config>"

    def target(self, name: str) -> Target:
        try:
            return self.targets[name]
        except KeyError:
            known = ", ".join(sorted(self.targets)) or "none"
            raise ConfigError(f"no target {name!r} (targets: {known})", file=self.label) from None

    def resolve_path(self, value: str | os.PathLike[str], key: str = "") -> Path:
        """A path from the config, relative to the config file's directory.

        Raises :class:`ConfigError` naming ``key`` for control characters, an empty path or
        a ``~USER`` that does not exist (see :func:`credbridge.core.settings.path_setting`).
        """
        return path_setting(os.fspath(value), base=self.directory, file=self.label, key=key)

    def sink_settings(self, target: Target) -> dict[str, Any]:
        """Global ``[sinks.NAME]`` settings overlaid with the target's own ``sink`` table."""
        merged = dict(self.sinks.get(target.sink, {}))
        merged.update(target.sink_settings)
        return merged


def find_config(explicit: str | os.PathLike[str] | None) -> Path:
    """The config path: ``-c``, else ``$CREDBRIDGE_CONFIG``, else ``./credbridge.toml``."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else Path(DEFAULT_CONFIG)


def load_config(
    path: str | os.PathLike[str] | None = None, *, plugins: PluginManager | None = None
) -> Config:
    """Read and validate a config file (see :func:`find_config` for the default location).

    Plugin names and settings are checked against ``plugins`` (default: the installed ones).
    """
    file = find_config(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            "config file not found (use -c PATH or set CREDBRIDGE_CONFIG)", file=str(file)
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read config: {error.strerror}", file=str(file)) from None
    except ValueError:  # a NUL byte: no file has such a name
        raise ConfigError("config path contains a NUL byte", file=repr(str(file))) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("config is not UTF-8 text", file=str(file)) from None
    loader = load_json if file.suffix.lower() == ".json" else load_toml
    return parse_config(loader(text, str(file)), path=file.resolve(), plugins=plugins)


def load_toml(text: str, label: str) -> Mapping[str, Any]:
    """Parse TOML config text; syntax errors become one :class:`ConfigError` line."""
    import tomllib  # only commands that read a config pay for the parser

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"invalid TOML: {error}", file=label) from None
    except RecursionError:
        raise ConfigError(f"invalid TOML: {TooDeep()}", file=label) from None
    return _shallow(data, "TOML", label)


def _shallow(data: Mapping[str, Any], kind: str, label: str) -> Mapping[str, Any]:
    """Refuse a config nested deeper than any setting goes (its walkers recurse)."""
    if nesting_depth(data) > MAX_DEPTH:
        raise ConfigError(f"invalid {kind}: {TooDeep()}", file=label)
    return data


def load_json(text: str, label: str) -> Mapping[str, Any]:
    """Parse JSON config text with TOML's strictness: one object, no duplicate keys, no NaN."""
    import json

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
        return out

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a number a config can hold")

    try:
        data = json.loads(text, object_pairs_hook=unique, parse_constant=no_constant)
    except ValueError as error:  # json.JSONDecodeError included
        raise ConfigError(f"invalid JSON: {error}", file=label) from None
    except RecursionError:
        raise ConfigError(f"invalid JSON: {TooDeep()}", file=label) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"invalid JSON: the top level must be an object, not {type(data).__name__}",
            file=label,
        )
    return _shallow(data, "JSON", label)


def parse_config(
    data: Mapping[str, Any],
    *,
    path: Path | None = None,
    directory: Path | None = None,
    plugins: PluginManager | None = None,
) -> Config:
    """Read and validate an already-parsed config mapping (for tools that build configs in
    code): :func:`read_config` then, once,
    :func:`~credbridge.core.validation.validate_config`.

    Plugin names, settings and references are checked against ``plugins`` (default: the
    installed ones), exactly as :func:`load_config` does.
    """
    config = read_config(data, path=path, directory=directory)
    validate_config(config, plugins or get_plugin_manager())
    return config


def read_config(
    data: Mapping[str, Any], *, path: Path | None = None, directory: Path | None = None
) -> Config:
    """The config a mapping describes, its own rules checked (keys, names, paths, modes,
    ``target:`` links) but not yet the plugins it names: pure, no plugin is loaded."""
    label = str(path) if path else "<config>"
    base = directory or (path.parent if path else Path.cwd())

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, file=label, key=key)

    def table(value: Any, key: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise fail(key, f"must be a table, not {type(value).__name__}")
        return value

    known_top = {"credbridge", "store", "sources", "sinks", "targets", "defaults", "agent"}
    for key in data:
        if key not in known_top:
            raise fail(
                keypath(key), f"unknown section (expected one of: {', '.join(sorted(known_top))})"
            )

    general = table(data.get("credbridge", {}), "credbridge")
    for key in general:
        if key not in {"concurrency", "store"}:
            raise fail(keypath("credbridge", key), "unknown setting (expected concurrency, store)")
    concurrency = int_setting(
        general.get("concurrency", DEFAULT_CONCURRENCY),
        file=label,
        key="credbridge.concurrency",
        minimum=1,
        maximum=256,
    )

    store = dict(table(data.get("store", {}), "store"))
    store_type = store.pop("type", "file")
    if not isinstance(store_type, str):
        raise fail("store.type", "must be a string")
    if "store" in general:
        if not isinstance(general["store"], str):
            raise fail("credbridge.store", "must be a path string")
        path_setting(general["store"], base=base, file=label, key="credbridge.store")
        store.setdefault("path", general["store"])

    sources = {
        str(k): table(v, keypath("sources", k))
        for k, v in table(data.get("sources", {}), "sources").items()
    }
    refresh: dict[str, float] = {}
    for scheme, settings in list(sources.items()):
        if "refresh" in settings:
            rest = dict(settings)
            where = keypath("sources", scheme, "refresh")
            refresh[scheme] = duration_setting(rest.pop("refresh"), file=label, key=where)
            sources[scheme] = rest
    agent = table(data.get("agent", {}), "agent")
    sinks = {
        str(k): table(v, keypath("sinks", k))
        for k, v in table(data.get("sinks", {}), "sinks").items()
    }

    defaults = table(data.get("defaults", {}), "defaults")
    for key in defaults:
        if key != "on_change":
            raise fail(keypath("defaults", key), "unknown setting (expected on_change)")
    default_on_change = _on_change(defaults.get("on_change"), "defaults.on_change", fail)

    targets: dict[str, Target] = {}
    # Credentials written with the same reference text (generate:base64 for each of many
    # credentials) share one parsed Reference: it is immutable, and a run of 10,000 keeps
    # one instead of 10,000 (each with its locator, options and rendered text).
    parsed: dict[str, Reference] = {}
    for name, body in table(data.get("targets", {}), "targets").items():
        where = keypath("targets", name)
        problem = target_name_problem(name)
        if problem is not None:
            raise fail(where, problem)
        targets[name] = _parse_target(name, table(body, where), where, fail, parsed)

    return Config(
        path=path,
        directory=base,
        targets=targets,
        sources=sources,
        sinks=sinks,
        store_type=store_type,
        store_settings=store,
        concurrency=concurrency,
        default_on_change=default_on_change,
        refresh=refresh,
        agent=agent,
    )


def _dotted_name_hint(name: str, key: str, value: Any) -> str:
    """``[targets.app.service.credentials]`` is target ``app`` with a table ``service``: TOML
    splits an unquoted key at every dot. Say how to write the name the user meant."""
    if not isinstance(value, Mapping):
        return ""
    inner = ("credentials",) if "credentials" in value else ()
    table = keypath("targets", f"{name}.{key}", *inner)
    return f"; a unit name with a dot must be quoted in TOML: [{table}]"


def _parse_target(
    name: str, body: Mapping[str, Any], where: str, fail: Any, parsed: dict[str, Reference]
) -> Target:
    allowed = {"kind", "unit", "credentials", "sink", "launcher", "description", "on_change"}
    for key in body:
        if key not in allowed:
            raise fail(
                keypath("targets", name, key),
                f"unknown setting (expected one of: {', '.join(sorted(allowed))})"
                + _dotted_name_hint(name, key, body[key]),
            )
    kind = body.get("kind", "vm" if "launcher" in body else "unit")
    if kind not in TARGET_KINDS:
        raise fail(f"{where}.kind", f"must be one of {', '.join(TARGET_KINDS)}, not {kind!r}")
    unit = body.get("unit")
    if unit is None and kind == "unit":
        unit = name if name.rpartition(".")[2] in UNIT_TYPES else f"{name}.service"
    elif unit is None:
        unit = DEFAULT_VM_UNIT.format(name=name)
    if unit is not None and (problem := unit_name_problem(unit)) is not None:
        raise fail(f"{where}.unit", problem)

    sink, sink_settings = _typed_table(body.get("sink", DEFAULT_SINK[kind]), f"{where}.sink", fail)
    launcher: str | None = None
    launcher_settings: Mapping[str, Any] = {}
    if kind == "vm":
        launcher, launcher_settings = _typed_table(
            body.get("launcher", DEFAULT_LAUNCHER), f"{where}.launcher", fail
        )

    creds_raw = body.get("credentials", {})
    if not isinstance(creds_raw, Mapping):
        raise fail(f"{where}.credentials", "must be a table of NAME = REFERENCE")
    credentials = []
    for cred_name, spec in creds_raw.items():
        cwhere = keypath("targets", name, "credentials", cred_name)
        problem = credential_name_problem(cred_name)
        if problem is not None:
            raise fail(cwhere, problem)
        credentials.append(_parse_credential(cred_name, spec, cwhere, fail, parsed))
    return Target(
        name=name,
        kind=kind,
        unit=unit,
        credentials=tuple(credentials),
        sink=sink,
        sink_settings=sink_settings,
        launcher=launcher,
        launcher_settings=launcher_settings,
        where=where,
        on_change=_on_change(body.get("on_change"), f"{where}.on_change", fail),
    )


def _on_change(value: Any, where: str, fail: Any) -> str | None:
    if value is None:
        return None
    if value not in ON_CHANGE:
        raise fail(where, f"must be one of {', '.join(map(repr, ON_CHANGE))}, not {value!r}")
    return str(value)


def _typed_table(value: Any, where: str, fail: Any) -> tuple[str, Mapping[str, Any]]:
    if isinstance(value, str):
        return value, {}
    if isinstance(value, Mapping):
        settings = dict(value)
        kind = settings.pop("type", None)
        if not isinstance(kind, str):
            raise fail(f"{where}.type", "missing or not a string")
        return kind, settings
    raise fail(where, "must be a name or a table with 'type'")


def _parse_credential(
    name: str, spec: Any, where: str, fail: Any, parsed: dict[str, Reference]
) -> CredentialSpec:
    if isinstance(spec, str):
        spec = {"ref": spec}
    if not isinstance(spec, Mapping):
        raise fail(where, "must be a reference string or a table with 'ref'")
    allowed = {"ref", "optional", "mode", "owner", "group", "refresh"}
    for key in spec:
        if key not in allowed:
            raise fail(
                f"{where}.{key}", f"unknown option (expected one of: {', '.join(sorted(allowed))})"
            )
    ref_text = spec.get("ref")
    if not isinstance(ref_text, str):
        raise fail(f"{where}.ref", "missing reference string")
    reference = parsed.get(ref_text)
    if reference is None:
        try:
            reference = parsed[ref_text] = parse_reference(ref_text)
        except BadReference as error:
            raise fail(where, str(error)) from None
    optional = spec.get("optional", False)
    if not isinstance(optional, bool):
        raise fail(f"{where}.optional", "must be true or false")
    mode = parse_mode(spec.get("mode", 0o400), f"{where}.mode", fail, world_readable=True)
    owner, group = (_account(spec.get(key), f"{where}.{key}", fail) for key in ("owner", "group"))
    refresh = spec.get("refresh")
    if refresh is not None:
        problem = duration_problem(refresh)
        if problem is not None:
            raise fail(f"{where}.refresh", problem)
        refresh = duration_setting(refresh, file=None, key=f"{where}.refresh")
    return CredentialSpec(
        name=name,
        reference=reference,
        optional=optional,
        mode=mode,
        owner=owner,
        group=group,
        where=where,
        refresh=refresh,
    )


def _account(value: Any, where: str, fail: Any) -> str | None:
    problem = None if value is None else account_problem(value)
    if problem is not None:
        raise fail(where, problem)
    return None if value is None else str(value)


def parse_mode(value: Any, where: str, fail: Any, *, world_readable: bool = False) -> int:
    """A file mode given as an octal string (``"0440"``) or a TOML integer (``0o440``).

    ``world_readable`` lets the "other" read bit through; the caller then checks that the
    value is public (:func:`credbridge.core.validation.check_world_readable`)."""
    if isinstance(value, str):
        # int() also reads Arabic-Indic or fullwidth digits: only ASCII digits make a mode.
        try:
            mode = int(value, 8) if value.isascii() else -1
        except ValueError:
            mode = -1
        if mode < 0:
            raise fail(where, f'{value!r} is not an octal mode like "0400"')
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise fail(where, 'must be an octal string like "0400"')
    if mode & ~0o777 or mode & 0o222:
        raise fail(where, f"mode {mode:04o} is not allowed (read bits only, e.g. 0400 or 0440)")
    if mode & (0o003 if world_readable else 0o007):
        raise fail(where, f"mode {mode:04o} would make a secret world-readable")
    return mode
