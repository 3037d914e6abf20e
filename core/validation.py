"""Checking a config against the installed plugins: names, declared settings, references.

:func:`validate_config` is the one entry point: :func:`credbridge.core.config.parse_config`
(so :func:`~credbridge.core.config.load_config` too) calls it once when the config loads, and
marks the config checked against those plugins, so a
:class:`~credbridge.core.engine.Session` with the same plugins does not check it again. Every
error names the config file and the key at fault; no I/O happens here.

This module sits below :mod:`credbridge.core.config` (which imports it): it reads a
:class:`~credbridge.core.config.Config` but never imports that module at run time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from credbridge.core import links
from credbridge.core.errors import BadReference, ConfigError
from credbridge.core.plugin_calls import Kind, R
from credbridge.core.plugins import LAUNCHER, SINK, SOURCE, STORE, PluginManager
from credbridge.core.settings import Setting, keypath, read_settings

if TYPE_CHECKING:
    from credbridge.core.config import Config
    from credbridge.core.reference import Reference


def _known(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none"


def check_settings(
    settings: Mapping[str, Any],
    declared: Mapping[str, Setting] | None,
    what: str,
    *,
    file: str,
    where: str,
    base: Path,
) -> None:
    """Refuse a key of ``settings`` that the plugin did not declare, or a value not of its
    declared kind (``None``: the plugin declared nothing and checks its table itself)."""
    if declared is not None:
        read_settings(declared, settings, what=what, file=file, where=where, base=base)


def check_reference(reference: Reference, plugins: PluginManager) -> None:
    """Syntax check of a reference against the source that owns its scheme (no I/O)."""
    text = str(reference)
    found = plugins.lookup(SOURCE, reference.scheme)
    if found is None:
        known = _known(plugins.names(SOURCE))
        raise BadReference(text, f"unknown scheme {reference.scheme!r} (known: {known})")
    source_type, _ = found
    if source_type.options is not None:
        for key in reference.options:
            if key not in source_type.options:
                allowed = _known(source_type.options)
                raise BadReference(
                    text, f"unknown option {key!r} for {reference.scheme}: (allowed: {allowed})"
                )
    if reference.selector is not None and not source_type.selectors:
        raise BadReference(text, f"{reference.scheme}: references take no '#selector'")
    if source_type.validate is not None:
        with plugins.guard(SOURCE, reference.scheme, "validate()"):
            source_type.validate(reference)


def validate_config(config: Config, plugins: PluginManager) -> None:
    """Check every plugin name, declared setting and reference of ``config``, once: a config
    already checked against ``plugins`` returns at once; a checked one is marked so.

    Raises :class:`ConfigError` naming the file and key, or :class:`PluginError` when two
    plugins claim a name the config uses.
    """
    if config.checked_with is plugins:
        return
    _validate(config, plugins)
    # Config is frozen for its users; this one field is the validator's note, set only here.
    object.__setattr__(config, "checked_with", plugins)


def _validate(config: Config, plugins: PluginManager) -> None:
    links.check_links(config)
    label = config.label
    for scheme, settings in config.sources.items():
        where = keypath("sources", scheme)
        unknown = "no plugin provides the source scheme"
        _check_table(plugins, config, SOURCE, scheme, settings, where, unknown, owner="source")
    for name, settings in config.sinks.items():
        where = keypath("sinks", name)
        _check_table(plugins, config, SINK, name, settings, where, "unknown sink")
    for target in config.targets.values():
        where = f"{target.where}.sink"
        sink = _lookup(plugins, SINK, target.sink, "unknown sink", file=label, where=where)
        if target.kind not in sink.target_kinds:
            raise ConfigError(
                f"sink {target.sink!r} cannot serve a {target.kind} target "
                f"(it serves: {_known(sink.target_kinds)})",
                file=label,
                key=where,
            )
        check_settings(
            target.sink_settings,
            sink.declared_settings,
            f"sink {target.sink!r}",
            file=label,
            where=where,
            base=config.directory,
        )
        if target.launcher is not None:
            where = f"{target.where}.launcher"
            settings = target.launcher_settings
            _check_table(
                plugins, config, LAUNCHER, target.launcher, settings, where, "unknown launcher"
            )
        for spec in target.credentials:
            if links.is_link(spec.reference):
                continue
            try:
                check_reference(spec.reference, plugins)
            except BadReference as error:
                raise ConfigError(str(error), file=label, key=spec.where) from None
    check_world_readable(config, plugins)
    store, settings = config.store_type, config.store_settings
    _check_table(plugins, config, STORE, store, settings, "store", "unknown store type")


def _lookup(
    plugins: PluginManager, kind: Kind[R], name: str, unknown: str, *, file: str, where: str
) -> R:
    """The record of ``kind`` named ``name``; ``"{unknown} 'NAME' (known: ...)"`` when no plugin
    provides it."""
    found = plugins.lookup(kind, name)
    if found is None:
        known = _known(plugins.names(kind))
        raise ConfigError(f"{unknown} {name!r} (known: {known})", file=file, key=where)
    return found[0]


def _check_table(
    plugins: PluginManager,
    config: Config,
    kind: Kind[R],
    name: str,
    settings: Mapping[str, Any],
    where: str,
    unknown: str,
    *,
    owner: str | None = None,
) -> None:
    """Check that a plugin provides ``name`` and that its table ``settings`` (at ``where``)
    holds what the plugin declared; messages call the table's owner ``"{owner} 'NAME'"``
    (default: the kind's label)."""
    record = _lookup(plugins, kind, name, unknown, file=config.label, where=where)
    check_settings(
        settings,
        record.declared_settings,
        f"{owner or kind.label} {name!r}",
        file=config.label,
        where=where,
        base=config.directory,
    )


def check_world_readable(config: Config, plugins: PluginManager) -> None:
    """``mode = "0444"`` only for a reference that selects a public part (``#public``)."""
    for target in config.targets.values():
        for spec in target.credentials:
            if not spec.mode & 0o004:
                continue
            reference = links.linked_reference(config, spec.reference)
            found = plugins.lookup(SOURCE, reference.scheme)
            if found is None or not found[0].selects_public(reference):
                raise ConfigError(
                    f"mode {spec.mode:04o} would make a secret world-readable (only a public "
                    "part, like generate:ssh-ed25519?id=ID#public, may be)",
                    file=config.label,
                    key=f"{spec.where}.mode",
                )
