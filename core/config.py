"""The TOML configuration: targets (systemd units and VMs) and the credentials they need.

See docs/configuration.md for the full schema. Every error names the file and the key path
(``targets."app.service".credentials.db-password``) and says what is wrong, in one line.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credbridge.core.errors import BadReference, ConfigError
from credbridge.core.reference import Reference, parse_reference

DEFAULT_CONFIG = "credbridge.toml"
CONFIG_ENV = "CREDBRIDGE_CONFIG"
DEFAULT_STORE = "/var/lib/credbridge"
DEFAULT_CONCURRENCY = 16

CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,255}$")
TARGET_NAME = re.compile(r"^[A-Za-z0-9_.@:\\-]{1,255}$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")

TARGET_KINDS = ("unit", "vm")
DEFAULT_SINK = {"unit": "credstore", "vm": "oem-strings"}
DEFAULT_LAUNCHER = "cloud-hypervisor"
DEFAULT_VM_UNIT = "microvm@{name}.service"
"""The unit a VM target's ``credbridge launch`` runs in (microvm.nix's host units)."""
ON_CHANGE = ("restart", "reload-or-restart", "reload", "none")
"""What ``deliver`` asks systemd to do with a unit whose credentials changed (strongest first)."""


def keypath(*parts: str) -> str:
    """Render a TOML key path, quoting parts that are not bare keys."""
    return ".".join(p if _BARE_KEY.match(p) else '"' + p.replace('"', '\\"') + '"' for p in parts)


@dataclass(frozen=True)
class CredentialSpec:
    """One credential of a target: its name there, where the value comes from, file options."""

    name: str
    reference: Reference
    optional: bool = False
    mode: int = 0o400
    owner: str | None = None
    group: str | None = None
    where: str = ""

    @property
    def text(self) -> str:
        return self.reference.text or str(self.reference)


@dataclass(frozen=True)
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

    def credential(self, name: str) -> CredentialSpec | None:
        for spec in self.credentials:
            if spec.name == name:
                return spec
        return None


@dataclass(frozen=True)
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

    @property
    def label(self) -> str:
        return str(self.path) if self.path else "<config>"

    def target(self, name: str) -> Target:
        try:
            return self.targets[name]
        except KeyError:
            known = ", ".join(sorted(self.targets)) or "none"
            raise ConfigError(f"no target {name!r} (targets: {known})", file=self.label) from None

    def resolve_path(self, value: str | os.PathLike[str]) -> Path:
        """A path from the config, relative to the config file's directory."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.directory / path

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


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a config file (see :func:`find_config` for the default location)."""
    file = find_config(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            "config file not found (use -c PATH or set CREDBRIDGE_CONFIG)", file=str(file)
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read config: {error.strerror}", file=str(file)) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("config is not UTF-8 text", file=str(file)) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"invalid TOML: {error}", file=str(file)) from None
    return parse_config(data, path=file.resolve())


def parse_config(
    data: Mapping[str, Any], *, path: Path | None = None, directory: Path | None = None
) -> Config:
    """Validate an already-parsed config mapping (for tools that build configs in code)."""
    label = str(path) if path else "<config>"
    base = directory or (path.parent if path else Path.cwd())

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, file=label, key=key)

    def table(value: Any, key: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise fail(key, f"must be a table, not {type(value).__name__}")
        return value

    known_top = {"credbridge", "store", "sources", "sinks", "targets", "defaults"}
    for key in data:
        if key not in known_top:
            raise fail(
                keypath(key), f"unknown section (expected one of: {', '.join(sorted(known_top))})"
            )

    general = table(data.get("credbridge", {}), "credbridge")
    for key in general:
        if key not in {"concurrency", "store"}:
            raise fail(keypath("credbridge", key), "unknown setting (expected concurrency, store)")
    concurrency = general.get("concurrency", DEFAULT_CONCURRENCY)
    if (
        not isinstance(concurrency, int)
        or isinstance(concurrency, bool)
        or not 1 <= concurrency <= 256
    ):
        raise fail("credbridge.concurrency", "must be an integer from 1 to 256")

    store = dict(table(data.get("store", {}), "store"))
    store_type = store.pop("type", "file")
    if not isinstance(store_type, str):
        raise fail("store.type", "must be a string")
    if "store" in general:
        if not isinstance(general["store"], str):
            raise fail("credbridge.store", "must be a path string")
        store.setdefault("path", general["store"])

    sources = {
        str(k): table(v, keypath("sources", k))
        for k, v in table(data.get("sources", {}), "sources").items()
    }
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
    for name, body in table(data.get("targets", {}), "targets").items():
        where = keypath("targets", name)
        if not TARGET_NAME.match(name):
            raise fail(where, "invalid target name (letters, digits, '_.@:-' and '\\')")
        targets[name] = _parse_target(name, table(body, where), where, fail)

    config = Config(
        path=path,
        directory=base,
        targets=targets,
        sources=sources,
        sinks=sinks,
        store_type=store_type,
        store_settings=store,
        concurrency=concurrency,
        default_on_change=default_on_change,
    )
    _check_target_links(config, fail)
    return config


def _parse_target(name: str, body: Mapping[str, Any], where: str, fail: Any) -> Target:
    allowed = {"kind", "unit", "credentials", "sink", "launcher", "description", "on_change"}
    for key in body:
        if key not in allowed:
            raise fail(
                keypath("targets", name, key),
                f"unknown setting (expected one of: {', '.join(sorted(allowed))})",
            )
    kind = body.get("kind", "vm" if "launcher" in body else "unit")
    if kind not in TARGET_KINDS:
        raise fail(f"{where}.kind", f"must be one of {', '.join(TARGET_KINDS)}, not {kind!r}")
    unit = body.get("unit")
    if unit is None and kind == "unit":
        unit = name if "." in name else f"{name}.service"
    elif unit is None:
        unit = DEFAULT_VM_UNIT.format(name=name)
    if unit is not None and (not isinstance(unit, str) or not TARGET_NAME.match(unit)):
        raise fail(f"{where}.unit", "must be a systemd unit name")

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
        if not CREDENTIAL_NAME.match(cred_name) or cred_name in {".", ".."}:
            raise fail(
                cwhere, "invalid credential name (1-255 of A-Z a-z 0-9 '_.@-'; systemd rules)"
            )
        credentials.append(_parse_credential(cred_name, spec, cwhere, fail))
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


def _parse_credential(name: str, spec: Any, where: str, fail: Any) -> CredentialSpec:
    if isinstance(spec, str):
        spec = {"ref": spec}
    if not isinstance(spec, Mapping):
        raise fail(where, "must be a reference string or a table with 'ref'")
    allowed = {"ref", "optional", "mode", "owner", "group"}
    for key in spec:
        if key not in allowed:
            raise fail(
                f"{where}.{key}", f"unknown option (expected one of: {', '.join(sorted(allowed))})"
            )
    ref_text = spec.get("ref")
    if not isinstance(ref_text, str):
        raise fail(f"{where}.ref", "missing reference string")
    try:
        reference = parse_reference(ref_text)
    except BadReference as error:
        raise fail(where, str(error)) from None
    optional = spec.get("optional", False)
    if not isinstance(optional, bool):
        raise fail(f"{where}.optional", "must be true or false")
    mode = parse_mode(spec.get("mode", 0o400), f"{where}.mode", fail)
    owner, group = spec.get("owner"), spec.get("group")
    for key, value in (("owner", owner), ("group", group)):
        if value is not None and not isinstance(value, str | int):
            raise fail(f"{where}.{key}", "must be a user/group name or numeric id")
    return CredentialSpec(
        name=name,
        reference=reference,
        optional=optional,
        mode=mode,
        owner=None if owner is None else str(owner),
        group=None if group is None else str(group),
        where=where,
    )


def parse_mode(value: Any, where: str, fail: Any) -> int:
    """A file mode given as an octal string (``"0440"``) or a TOML integer (``0o440``)."""
    if isinstance(value, str):
        try:
            mode = int(value, 8)
        except ValueError:
            raise fail(where, f'{value!r} is not an octal mode like "0400"') from None
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise fail(where, 'must be an octal string like "0400"')
    if mode & ~0o777 or mode & 0o222:
        raise fail(where, f"mode {mode:04o} is not allowed (read bits only, e.g. 0400 or 0440)")
    if mode & 0o007:
        raise fail(where, f"mode {mode:04o} would make a secret world-readable")
    return mode


def _check_target_links(config: Config, fail: Any) -> None:
    """``target:T/C`` references must name an existing credential and must not loop."""
    for target in config.targets.values():
        for spec in target.credentials:
            seen = [f"{target.name}/{spec.name}"]
            ref = spec.reference
            while ref.scheme == "target":
                t_name, _, c_name = ref.path.rpartition("/")
                other = config.targets.get(t_name)
                linked = other.credential(c_name) if other else None
                if linked is None:
                    raise fail(spec.where, f"{ref} names no credential of this config")
                key = f"{t_name}/{c_name}"
                if key in seen:
                    raise fail(spec.where, f"target references loop: {' -> '.join([*seen, key])}")
                seen.append(key)
                ref = linked.reference
