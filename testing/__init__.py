"""Testing credbridge plugins: register a plugin object for one test.

Installed with credbridge as a pytest plugin (entry point ``pytest11``), so a plugin's own
test suite gets the :func:`credbridge_plugins` fixture without configuration::

    import credbridge_dotenv
    from credbridge.core import resolve

    def test_reads_a_key(credbridge_plugins, tmp_path):
        credbridge_plugins.register(credbridge_dotenv)
        (tmp_path / "app.env").write_text("KEY=value\\n")
        assert resolve([f"dotenv:{tmp_path}/app.env#KEY"])[...].reveal() == b"value"

Registration goes into the process-wide plugin manager, so ``credbridge.core.resolve``,
``deliver``, ``Session()`` and the CLI run in-process (``click.testing.CliRunner``) all see the
plugin. A plugin that is also installed (its entry point already loaded) is tolerated: while
the test runs, the installed copy, and any other plugin claiming the same names, is put aside,
and it comes back afterwards. Without pytest, use :func:`registered` as a context manager.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from credbridge.core.plugins import KINDS, PluginManager, get_plugin_manager

__all__ = ["PluginRegistrar", "credbridge_plugins", "registered"]


class PluginRegistrar:
    """Registers plugin objects in a plugin manager and undoes all of it on :meth:`close`."""

    def __init__(self, manager: PluginManager | None = None) -> None:
        self.manager = manager or get_plugin_manager()
        self._names: list[str] = []
        self._hidden: list[str] = []

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register ``plugin`` (a module or an object with ``@hookimpl`` methods).

        Returns the name it was registered under. Raises ``PluginError`` if it is broken.
        """
        manager = self.manager
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        for installed, proxy in list(manager.pm.list_name_plugin()):
            if proxy is not None and getattr(proxy, "_plugin", None) is plugin:
                self._hidden += manager.hide_plugin(installed)
        registered = name
        while manager.pm.has_plugin(registered):
            registered = f"{registered}+"
        manager.register(plugin, registered, distribution="(registered for a test)")
        self._names.append(registered)
        for kind in KINDS:
            mine = [n for n, found in manager.collect(kind).items() if registered in found]
            self._hidden += manager.hide(kind, mine, keep=registered)
        return registered

    def close(self) -> None:
        """Unregister what was registered; put back what was set aside."""
        for name in reversed(self._names):
            self.manager.unregister(name)
        self.manager.unhide(self._hidden)
        self._names.clear()
        self._hidden.clear()


@contextlib.contextmanager
def registered(plugin: object, name: str | None = None) -> Iterator[PluginRegistrar]:
    """Register ``plugin`` in the process-wide manager for the duration of the block."""
    registrar = PluginRegistrar()
    try:
        registrar.register(plugin, name)
        yield registrar
    finally:
        registrar.close()


try:
    import pytest
except ImportError:  # pragma: no cover - the fixture is for pytest users only
    pass
else:

    @pytest.fixture
    def credbridge_plugins() -> Iterator[PluginRegistrar]:
        """Register plugin objects for one test: ``credbridge_plugins.register(module)``."""
        registrar = PluginRegistrar()
        try:
            yield registrar
        finally:
            registrar.close()
