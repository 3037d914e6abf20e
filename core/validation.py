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
    base = config.directory
    for scheme, settings in config.sources.items():
        where = keypath("sources", scheme)
        found = plugins.lookup(SOURCE, scheme)
        if found is None:
            raise ConfigError(
                f"no plugin provides the source scheme {scheme!r} "
                f"(known: {_known(plugins.names(SOURCE))})",
                file=label,
                key=where,
            )
        check_settings(
            settings,
            found[0].declared_settings,
            f"source {scheme!r}",
            file=label,
            where=where,
            base=base,
        )
    for name, settings in config.sinks.items():
        where = keypath("sinks", name)
        sink = plugins.lookup(SINK, name)
        if sink is None:
            raise ConfigError(
                f"unknown sink {name!r} (known: {_known(plugins.names(SINK))})",
                file=label,
                key=where,
            )
        check_settings(
            settings,
            sink[0].declared_settings,
            f"sink {name!r}",
            file=label,
            where=where,
            base=base,
        )
    for target in config.targets.values():
        sink_where = f"{target.where}.sink"
        sink = plugins.lookup(SINK, target.sink)
        if sink is None:
            raise ConfigError(
                f"unknown sink {target.sink!r} (known: {_known(plugins.names(SINK))})",
                file=label,
                key=sink_where,
            )
        sink_type = sink[0]
        if target.kind not in sink_type.target_kinds:
            raise ConfigError(
                f"sink {target.sink!r} cannot serve a {target.kind} target "
                f"(it serves: {_known(sink_type.target_kinds)})",
                file=label,
                key=sink_where,
            )
        check_settings(
            target.sink_settings,
            sink_type.declared_settings,
            f"sink {target.sink!r}",
            file=label,
            where=sink_where,
            base=base,
        )
        if target.launcher is not None:
            launcher_where = f"{target.where}.launcher"
            launcher = plugins.lookup(LAUNCHER, target.launcher)
            if launcher is None:
                raise ConfigError(
                    f"unknown launcher {target.launcher!r} "
                    f"(known: {_known(plugins.names(LAUNCHER))})",
                    file=label,
                    key=launcher_where,
                )
            check_settings(
                target.launcher_settings,
                launcher[0].declared_settings,
                f"launcher {target.launcher!r}",
                file=label,
                where=launcher_where,
                base=base,
            )
        for spec in target.credentials:
            if links.is_link(spec.reference):
                continue
            try:
                check_reference(spec.reference, plugins)
            except BadReference as error:
                raise ConfigError(str(error), file=label, key=spec.where) from None
    check_world_readable(config, plugins)
    store = plugins.lookup(STORE, config.store_type)
    if store is None:
        raise ConfigError(
            f"unknown store type {config.store_type!r} (known: {_known(plugins.names(STORE))})",
            file=label,
            key="store.type",
        )
    check_settings(
        config.store_settings,
        store[0].declared_settings,
        f"store {config.store_type!r}",
        file=label,
        where="store",
        base=base,
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
