"""``credbridge agent`` and ``credbridge status``: the long-running deliverer (core/agent.py)
and what it last wrote to its state file.

Loaded only when one of them runs (core/cli.py names them in its lazy commands).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from credbridge.core.cli_base import State, _row, lock_options, pass_state


@click.command()
@click.option(
    "--restart/--no-restart",
    default=None,
    help="Restart the units whose credentials changed (targets' own on_change still apply); "
    "--no-restart touches no unit.",
)
@click.option(
    "--state-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to keep the state 'credbridge status' reads (default: see docs/agent.md).",
)
@lock_options
@pass_state
def agent(state: State, restart: bool | None, state_file: Path | None) -> None:
    """Deliver every unit target, then keep them fresh until stopped (docs/agent.md).

    Renews leases, re-reads sources every `refresh`, delivers only what changed and
    restarts the units whose credentials changed. SIGHUP re-reads the config; SIGTERM
    finishes the delivery under way and exits 0. Speaks sd_notify (Type=notify)."""
    from credbridge.core.agent import Agent
    from credbridge.core.config import find_config

    runner = Agent(
        find_config(state.config_path),
        restart=restart,
        state=state_file,
        lock_wait=state.lock_wait,
    )
    sys.exit(runner.run())


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--state-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The state file the agent writes (default: the config's, see docs/agent.md).",
)
@pass_state
def status(state: State, as_json: bool, state_file: Path | None) -> None:
    """Show what 'credbridge agent' delivered: per target and credential its source, version
    or lease id (never a value), when delivered, when it expires, next refresh, last error."""
    from credbridge.core.agent import AgentSettings, read_state, state_path

    if state_file is None:
        with state.session() as session:
            state_file = state_path(session, AgentSettings.from_config(session.config))
    data = read_state(state_file)
    if as_json:
        import json

        click.echo(json.dumps(data, indent=2))
        return
    running = "running" if data.get("running") else "not running"
    ready = "ready" if data.get("ready") else "not ready"
    click.echo(
        f"agent: {running} (pid {data.get('pid')}), {ready}, updated {data.get('updated_at')}"
    )
    for name, target in data["targets"].items():
        _row(
            name, str(target.get("status")), str(target.get("unit")), target.get("last_error") or ""
        )
        for credential, info in target.get("credentials", {}).items():
            held = info.get("lease_id") or info.get("version") or "-"
            _row(
                f"  {name}/{credential}",
                str(info.get("reference")),
                f"version/lease {held}",
                f"delivered {info.get('delivered_at') or '-'}",
                f"expires {info.get('expires_at') or 'never'}",
                f"next {info.get('next_action')} {info.get('next_refresh') or '-'}",
                info.get("last_error") or "",
            )


COMMANDS = [agent, status]
