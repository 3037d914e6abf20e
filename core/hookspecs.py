"""The plugin contract of credbridge: four hooks, each yielding typed records.

A plugin is a module (or object) registered under the ``credbridge`` entry-point group that
implements some of these hooks with :data:`credbridge.core.hookimpl`. Built-in sources,
sinks, stores and launchers are plugins of exactly this kind. Every hook is called with no
arguments when credbridge needs the records, and returns an iterable of records; names must be
unique across all plugins. Keep hook bodies cheap: import heavy client libraries inside the
``open`` callable of the record, not at module level.

Lifecycle: entry points are loaded and registered, ``check_pending()`` verifies every hook
implementation matches a spec, then the hooks are called lazily by whatever command needs them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
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
