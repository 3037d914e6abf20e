"""``credbridge plugins``: every plugin, what it provides, where it came from, its settings
(``-v``) and the conflicts between plugins.

Loaded only when the command runs (core/cli.py names it in its lazy commands).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from credbridge.core import __version__
from credbridge.core.cli_base import State
from credbridge.core.errors import printable

if TYPE_CHECKING:
    from credbridge.core.plugins import PluginManager


def _settings_listing(manager: PluginManager, plugin: str) -> dict[str, dict[str, Any]]:
    """``{"sources": {"vault": [setting, ...]}}`` for what ``plugin`` provides; a record that
    declares nothing (it checks its table itself) maps to ``None``."""
    from credbridge.core.plugins import KINDS

    listing: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        for name, (record, provider) in sorted(manager.records(kind).items()):
            if provider != plugin:
                continue
            declared = record.declared_settings
            listing.setdefault(kind.key, {})[name] = (
                None
                if declared is None
                else [
                    {
                        "name": setting.name,
                        "kind": setting.kind,
                        "type": setting.describe(),
                        "default": setting.default,
                        "doc": setting.doc,
                    }
                    for setting in declared.values()
                ]
            )
    return listing


def _echo_settings(listing: dict[str, dict[str, Any]]) -> None:
    singular = {"sources": "source", "sinks": "sink", "launchers": "launcher", "stores": "store"}
    for key, records in listing.items():
        for name, settings in records.items():
            if settings is None:
                click.echo(f"  {singular[key]} {name} settings: checked by the plugin itself")
                continue
            click.echo(f"  {singular[key]} {name} settings:{'' if settings else ' none'}")
            for setting in settings:
                default = setting["default"]
                shown = "" if default is None else f", default {default!r}"
                doc = f" -- {setting['doc']}" if setting["doc"] else ""
                click.echo(printable(f"    {setting['name']}: {setting['type']}{shown}{doc}"))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "-v",
    "--verbose",
    "verbose",
    is_flag=True,
    help="Also list each plugin's settings: kind, default and doc.",
)
@click.pass_obj
def plugins(run: State, as_json: bool, verbose: bool) -> None:
    """List every plugin, its state, what it provides and where it came from; and conflicts."""
    from credbridge.core.plugins import CORE, PluginInfo, get_plugin_manager

    verbose = verbose or run.verbose > 0  # `credbridge -v plugins` too

    manager = get_plugin_manager()
    manager.collect_all()
    # A throwaway group holding the built-ins, so clashes are found and nothing is changed.
    group = click.get_current_context().find_root().command
    assert isinstance(group, click.Group)
    builtins = getattr(group, "builtin_commands", lambda: dict(group.commands))()
    manager.add_commands(click.Group(commands=builtins))
    core = PluginInfo(CORE, "credbridge.core", "credbridge", __version__, True)
    core.sources.append("target")
    infos = [core, *sorted(manager.infos.values(), key=lambda i: (not i.builtin, i.name))]
    conflicts = manager.conflicts()
    if as_json:
        import json

        described = [i.as_json() for i in infos]
        if verbose:
            for entry in described:
                entry["settings"] = _settings_listing(manager, entry["name"])
        listing = {
            "plugins": described,
            "conflicts": [
                {
                    "kind": c.kind,
                    "name": c.name,
                    "plugins": list(c.providers),
                    "message": manager.conflict_message(c),
                }
                for c in conflicts
            ],
            "problems": manager.problems,
        }
        click.echo(json.dumps(listing, indent=2))
        return
    for info in infos:
        origin = "built-in" if info.builtin else info.origin
        state = "" if info.state in {"loaded", "registered"} else f"  [{info.state}]"
        click.echo(f"{info.name} ({origin}){state}")
        if info.error:
            click.echo(f"  error: {printable(info.error)}")
        for label in ("sources", "sinks", "launchers", "stores", "commands"):
            names = getattr(info, label)
            if names:
                click.echo(f"  {label}: {', '.join(sorted(names))}")
        if verbose:
            _echo_settings(_settings_listing(manager, info.name))
        for warning in info.warnings:
            click.echo(f"  warning: {printable(warning)}")
    for conflict in conflicts:
        click.echo(f"conflict: {printable(manager.conflict_message(conflict))}")
    for problem in manager.problems:
        click.echo(f"problem: {printable(problem)}")


COMMANDS = [plugins]
