"""The plugin contract of credbridge: four hooks yielding typed records, and one for commands.

A plugin is a module (or object) registered under the ``credbridge`` entry-point group that
implements some of these hooks with :data:`credbridge.core.hookimpl`. Built-in sources,
sinks, stores and launchers are plugins of exactly this kind. The record hooks are called with
no arguments when credbridge needs the records, and return an iterable of records; names must
be unique across all plugins. Keep hook bodies cheap: point the record's ``open`` at the
implementation with :class:`credbridge.core.lazy`, so heavy modules load only when used.

Lifecycle: entry points are loaded and registered, ``check_pending()`` verifies every hook
implementation matches a spec, then the hooks are called lazily by whatever command needs them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click
    from credbridge.core.types import LauncherType, SinkType, SourceType, StoreType

PROJECT = "credbridge"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def credbridge_sources() -> Iterable[SourceType]:
    """Provide secret sources, one :class:`~credbridge.core.types.SourceType` per scheme.

    Called when a reference is parsed or resolved and by ``credbridge plugins``. The record's
    ``open`` callable is called at most once per run, and only when a reference with its
    scheme is resolved. The opened source receives requests in batches through
    ``Source.fetch(requests, mode)``; subclass ``DocumentSource`` to get de-duplication,
    selectors and concurrent fetching for free.

    :returns: source records; each ``scheme`` must be unique across all plugins.
    """
    return ()


@hookspec
def credbridge_sinks() -> Iterable[SinkType]:
    """Provide sinks, one :class:`~credbridge.core.types.SinkType` per name.

    A sink delivers a resolved set of credentials to one target in two steps: ``stage``
    writes the complete new set aside, then credbridge calls ``commit`` on every staged target
    (or ``rollback`` on all of them if anything failed) and finally ``finalize``.

    :returns: sink records; each ``name`` must be unique across all plugins.
    """
    return ()


@hookspec
def credbridge_launchers() -> Iterable[LauncherType]:
    """Provide VM launchers, one :class:`~credbridge.core.types.LauncherType` per name.

    ``credbridge launch VM`` resolves the VM target's credentials, then calls the launcher's
    ``launch(deliveries)`` in the foreground; its return value is credbridge's exit status.

    :returns: launcher records; each ``name`` must be unique across all plugins.
    """
    return ()


@hookspec
def credbridge_stores() -> Iterable[StoreType]:
    """Provide backends for the store of generated values, one record per name.

    The config's ``[store] type = "NAME"`` picks one; ``file`` is the built-in default.

    :returns: store records; each ``name`` must be unique across all plugins.
    """
    return ()


@hookspec
def credbridge_commands(cli: click.Group) -> None:
    """Add commands to ``credbridge``: ``@cli.command()`` or ``cli.add_command(...)``.

    Called only when the command line names a command that is not built in (so plugins that
    add commands cost nothing to the others), and by ``credbridge plugins``. ``cli`` is a
    click group of the plugins' own: a command with a built-in's name is skipped with a
    warning, never replacing the built-in. Errors raised as :class:`CredbridgeError` become
    one line and their exit code, as for built-in commands.
    """
