"""credbridge: carry secrets from where they are kept to systemd services and microVMs.

This package is the framework and the typed Python API for tools that embed credbridge
(docs/api.md)::

    from credbridge.core import load_config, deliver

    report = deliver(load_config("credbridge.toml"), dry_run=True)

Plugins import :data:`hookimpl` and the record types from here.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from credbridge.core.cli import pass_config
    from credbridge.core.config import Config, CredentialSpec, Target, load_config, parse_config
    from credbridge.core.engine import Session
    from credbridge.core.errors import (
        BadReference,
        ConfigError,
        CredbridgeError,
        DeliveryError,
        ExitCode,
        Forbidden,
        InvalidValue,
        LaunchError,
        LockUnavailable,
        NotFound,
        PluginError,
        PluginFailed,
        ResolutionFailed,
        RestartFailed,
        ServerText,
        SourceError,
        Timeout,
        Unreachable,
        UnsafePath,
    )
    from credbridge.core.hookspecs import hookimpl
    from credbridge.core.interfaces import (
        Change,
        Delivery,
        DocumentSource,
        Launcher,
        Lease,
        LeasedSource,
        Mode,
        Outcome,
        Pending,
        PlanEntry,
        Request,
        RotatableSource,
        Sink,
        Source,
        Staged,
        Store,
    )
    from credbridge.core.plugins import PluginManager, get_plugin_manager
    from credbridge.core.reference import Locator, Reference, parse_reference
    from credbridge.core.report import CheckResult, DeliveryEntry, DeliveryReport
    from credbridge.core.resolution import Resolver
    from credbridge.core.secret import Secret, SecretDocument
    from credbridge.core.settings import Setting, read_settings
    from credbridge.core.types import (
        LauncherContext,
        LauncherType,
        PluginType,
        SinkContext,
        SinkType,
        SourceContext,
        SourceType,
        StoreContext,
        StoreType,
        lazy,
    )
    from credbridge.core.units import UnitAction
    from credbridge.core.vm import FwCfgItem, VirtiofsShare, VmChannel, VmSink


# Importing the package must stay cheap (``credbridge --help`` imports it): the API below is
# loaded on first use, while type checkers see the imports above.
_EXPORTS = {
    "cli": ("pass_config",),
    "config": ("Config", "CredentialSpec", "Target", "load_config", "parse_config"),
    "report": ("CheckResult", "DeliveryEntry", "DeliveryReport"),
    "engine": ("Session",),
    "resolution": ("Resolver",),
    "errors": (
        "BadReference",
        "ConfigError",
        "CredbridgeError",
        "DeliveryError",
        "ExitCode",
        "Forbidden",
        "InvalidValue",
        "LaunchError",
        "LockUnavailable",
        "NotFound",
        "PluginError",
        "PluginFailed",
        "ResolutionFailed",
        "RestartFailed",
        "ServerText",
        "SourceError",
        "Timeout",
        "Unreachable",
        "UnsafePath",
    ),
    "hookspecs": ("hookimpl",),
    "plugins": ("PluginManager", "get_plugin_manager"),
    "reference": ("Locator", "Reference", "parse_reference"),
    "secret": ("Secret", "SecretDocument"),
    "interfaces": (
        "Change",
        "Delivery",
        "DocumentSource",
        "Launcher",
        "Lease",
        "LeasedSource",
        "Mode",
        "Outcome",
        "Pending",
        "PlanEntry",
        "Request",
        "RotatableSource",
        "Sink",
        "Source",
        "Staged",
        "Store",
    ),
    "types": (
        "LauncherContext",
        "LauncherType",
        "PluginType",
        "SinkContext",
        "SinkType",
        "SourceContext",
        "SourceType",
        "StoreContext",
        "StoreType",
        "lazy",
    ),
    "settings": ("Setting", "read_settings"),
    "vm": ("FwCfgItem", "VirtiofsShare", "VmChannel", "VmSink"),
    "units": ("UnitAction",),
}
"""The public names, by the module of this package they are loaded from."""
_LAZY = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'credbridge.core' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(f"credbridge.core.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The public API (loaded or not), not the modules this file imports for itself.
    return sorted(__all__)


__version__ = "0.1.0"

# A library leaves output to the application: without this, credbridge's warnings (a plugin
# that failed to load) reach an embedding program's stderr through logging's last resort.
# The credbridge command installs its own handler (core/cli.py).
logging.getLogger("credbridge").addHandler(logging.NullHandler())


def resolve(
    references: Iterable[str | Reference], *, config: Config | None = None
) -> dict[str, Secret]:
    """Resolve references to secrets, concurrently.

    Keys are the references as given. When any fails, raises :class:`ResolutionFailed`
    listing every failure (``.failures``). ``generate:`` references resolved here are not tied to
    a credential: without ``?id=`` they produce a fresh, unpersisted value.
    """
    from credbridge.core.errors import NotFound, ResolutionFailed, SourceError
    from credbridge.core.interfaces import Request
    from credbridge.core.reference import parse_reference
    from credbridge.core.resolution import Resolver
    from credbridge.core.secret import Secret

    wanted = [parse_reference(r) if isinstance(r, str) else r for r in references]
    with Resolver(config) as session:
        for reference in wanted:
            session.check_reference(reference)
        requests = [Request(r) for r in wanted]
        outcomes = session.resolve(requests)
        failures = [o for o in outcomes.values() if isinstance(o, SourceError)]
        if failures:
            raise ResolutionFailed(failures)
        result: dict[str, Secret] = {}
        for reference, request in zip(wanted, requests, strict=True):
            value = outcomes[request]
            if not isinstance(value, Secret):
                raise NotFound(str(reference), "has no value yet")
            result[reference.text or str(reference)] = value
        return result


def deliver(
    config: Config | str | os.PathLike[str] | None = None,
    targets: Sequence[str] = (),
    *,
    dry_run: bool = False,
    restart: bool | None = None,
) -> DeliveryReport:
    """Resolve and deliver unit targets (all when none are named); all-or-nothing.

    Then the units whose credentials changed are restarted or reloaded as their ``on_change``
    asks (``restart=True``: restart those without one; ``False``: touch none); the outcome
    per unit is in ``report.units`` (a failed restart does not raise).
    """
    from credbridge.core.config import Config, load_config
    from credbridge.core.engine import Session

    loaded = config if isinstance(config, Config) else load_config(config)
    with Session(loaded) as session:
        report = session.deliver(targets, dry_run=dry_run, restart=restart)
        session.restart_changed(report)
        return report


__all__ = [
    "BadReference",
    "Change",
    "CheckResult",
    "Config",
    "ConfigError",
    "CredbridgeError",
    "CredentialSpec",
    "Delivery",
    "DeliveryEntry",
    "DeliveryError",
    "DeliveryReport",
    "DocumentSource",
    "ExitCode",
    "Forbidden",
    "FwCfgItem",
    "InvalidValue",
    "LaunchError",
    "Launcher",
    "LauncherContext",
    "LauncherType",
    "Lease",
    "LeasedSource",
    "Locator",
    "LockUnavailable",
    "Mode",
    "NotFound",
    "Outcome",
    "Pending",
    "PlanEntry",
    "PluginError",
    "PluginFailed",
    "PluginManager",
    "PluginType",
    "Reference",
    "Request",
    "ResolutionFailed",
    "Resolver",
    "RestartFailed",
    "RotatableSource",
    "Secret",
    "SecretDocument",
    "ServerText",
    "Session",
    "Setting",
    "Sink",
    "SinkContext",
    "SinkType",
    "Source",
    "SourceContext",
    "SourceError",
    "SourceType",
    "Staged",
    "Store",
    "StoreContext",
    "StoreType",
    "Target",
    "Timeout",
    "UnitAction",
    "Unreachable",
    "UnsafePath",
    "VirtiofsShare",
    "VmChannel",
    "VmSink",
    "__version__",
    "deliver",
    "get_plugin_manager",
    "hookimpl",
    "lazy",
    "load_config",
    "parse_config",
    "parse_reference",
    "pass_config",
    "read_settings",
    "resolve",
]
