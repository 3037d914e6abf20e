"""The ``credbridge`` command. User errors become one line and a documented exit code here."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from credbridge.core import __version__
from credbridge.core.errors import CredbridgeError, ExitCode

if TYPE_CHECKING:
    from credbridge.core.config import Config
    from credbridge.core.engine import Progress, Session

F = TypeVar("F", bound=Callable[..., Any])


class _Group(click.Group):
    """Turns every :class:`CredbridgeError` into ``credbridge: error: ...`` and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CredbridgeError as error:
            for line in str(error).splitlines():
                click.echo(f"credbridge: error: {line}", err=True)
            ctx.exit(int(error.exit_code))
        except KeyboardInterrupt:
            click.echo("credbridge: interrupted", err=True)
            ctx.exit(130)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("credbridge: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _interactive() -> bool:
    """Progress only for a person at a terminal, never under systemd or in a pipe."""
    under_systemd = "INVOCATION_ID" in os.environ or "JOURNAL_STREAM" in os.environ
    return sys.stderr.isatty() and not under_systemd and os.environ.get("TERM") != "dumb"


def _progress() -> Progress | None:
    if not _interactive():
        return None

    def show(stage: str, done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        click.echo(f"\r{stage} {done}/{total}", err=True, nl=False)
        if end:
            click.echo("\r\033[K", err=True, nl=False)

    return show


class State:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path

    def config(self, *, required: bool = True) -> Config:
        from credbridge.core.config import Config, find_config, load_config

        path = find_config(self.config_path)
        if not required and self.config_path is None and not path.exists():
            return Config(path=None, directory=Path.cwd(), targets={})
        return load_config(path)

    def session(self, *, required: bool = True, progress: bool = False) -> Session:
        from credbridge.core.engine import Session

        return Session(self.config(required=required), progress=_progress() if progress else None)


pass_state = click.make_pass_decorator(State)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    "config_path",
    metavar="PATH",
    help="Config file (default: $CREDBRIDGE_CONFIG or ./credbridge.toml).",
)
@click.option(
    "-v", "--verbose", count=True, help="Log more (-v info, -vv debug). Values are never logged."
)
@click.version_option(__version__, "--version", prog_name="credbridge")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """Carry secrets from where they are kept to systemd services and microVMs."""
    _setup_logging(verbose)
    ctx.obj = State(config_path)


@cli.command()
@click.argument("targets", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Print the plan (no values); change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--restart/--no-restart",
    default=None,
    help="Restart the units whose credentials changed (targets' own on_change still apply); "
    "--no-restart touches no unit.",
)
@pass_state
def deliver(
    state: State, targets: tuple[str, ...], dry_run: bool, as_json: bool, restart: bool | None
) -> None:
    """Resolve every credential of TARGETS (default: all units) and deliver them, all or nothing."""
    from credbridge.core.errors import RestartFailed

    with state.session(progress=not as_json) as session:
        report = session.deliver(targets, dry_run=dry_run, restart=restart)
        # After the commit, outside it: a unit that fails to restart leaves the delivery as is.
        session.restart_changed(report)
    for warning in report.warnings:
        click.echo(f"credbridge: warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
    else:
        verb = "would " if dry_run else ""
        for entry in report.entries:
            detail = f" ({entry.detail})" if entry.detail else ""
            click.echo(
                f"{entry.target}\t{entry.credential}\t{entry.reference}\t{entry.sink}\t{verb}{entry.change.value}{detail}"
            )
        for action in report.units:
            status = "would" if dry_run else action.status
            detail = f" ({action.detail})" if action.detail else ""
            click.echo(f"unit\t{action.unit}\t{action.action}\t{status}{detail}")
        for skipped in report.skipped:
            click.echo(f"{skipped}\tskipped (optional, not found)", err=True)
    failed = [a for a in report.units if a.status == "failed"]
    if failed:
        raise RestartFailed(
            "\n".join(f"delivered, but {a.action} of {a.unit} failed: {a.detail}" for a in failed)
        )


@cli.command()
@click.argument("reference")
@pass_state
def get(state: State, reference: str) -> None:
    """Resolve REFERENCE and write the raw value to stdout (no newline added)."""
    with state.session(required=False) as session:
        value = session.resolve_one(reference)
    out = sys.stdout.buffer
    out.write(value.reveal())
    out.flush()
    value.wipe()


@cli.command()
@click.argument("target")
@click.option(
    "--install", is_flag=True, help="Write the drop-in under /etc/systemd/system/UNIT.d/."
)
@click.option(
    "--unit-dir",
    default="/etc/systemd/system",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where --install writes UNIT.d/credbridge.conf.",
)
@pass_state
def unit(state: State, target: str, install: bool, unit_dir: Path) -> None:
    """Print (or --install) the [Service] drop-in that loads TARGET's credentials."""
    from credbridge.core.fsutil import atomic_write

    with state.session() as session:
        found, text = session.unit_dropin(target)
    if not install:
        click.echo(text, nl=False)
        return
    dropin_dir = unit_dir / f"{found.unit}.d"
    try:
        dropin_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        atomic_write(dropin_dir / "credbridge.conf", text.encode(), mode=0o644)
    except OSError as error:
        raise CredbridgeError(f"cannot write {dropin_dir}: {error.strerror or error}") from None
    click.echo(
        f"installed {dropin_dir / 'credbridge.conf'}; run 'systemctl daemon-reload'", err=True
    )


@cli.command()
@click.argument("target")
@click.argument("credential")
@pass_state
def rotate(state: State, target: str, credential: str) -> None:
    """Generate a new value for a generated CREDENTIAL of TARGET; the old one stays readable.

    Prints the unit targets that now need delivery, one per line."""
    with state.session() as session:
        where = session.rotate(target, credential)
        units, vms = session.affected_by(target, credential)
    click.echo(f"rotated {target}/{credential} in {where}", err=True)
    for name in units:
        click.echo(name)
    for vm in vms:
        click.echo(
            f"VM {vm.name} takes it when it starts: 'credbridge deliver --restart' restarts "
            f"{vm.unit} once its credentials are delivered",
            err=True,
        )
    if units:
        click.echo(f"deliver it: credbridge deliver --restart {' '.join(units)}", err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List plugins, what each provides and which distribution it came from."""
    from credbridge.core.plugins import get_plugin_manager

    manager = get_plugin_manager()
    manager.collect_all()
    infos = sorted(manager.infos.values(), key=lambda i: (not i.builtin, i.name))
    if as_json:
        click.echo(json.dumps([i.as_json() for i in infos], indent=2))
        return
    for info in infos:
        provides = []
        for label, names in (
            ("sources", info.sources),
            ("sinks", info.sinks),
            ("launchers", info.launchers),
            ("stores", info.stores),
        ):
            if names:
                provides.append(f"{label}: {', '.join(sorted(names))}")
        status = f"  [failed: {info.error}]" if info.error else ""
        origin = "built-in" if info.builtin else f"{info.distribution} {info.version}"
        click.echo(f"{info.name} ({origin}){status}")
        for line in provides:
            click.echo(f"  {line}")


@cli.command()
@click.argument("targets", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def check(state: State, targets: tuple[str, ...], as_json: bool) -> None:
    """Validate the config and test that every source is reachable and readable (no values)."""
    with state.session(progress=not as_json) as session:
        results = session.check(targets)
    failed = [r for r in results if not r.ok]
    if as_json:
        click.echo(
            json.dumps({"ok": not failed, "results": [r.as_json() for r in results]}, indent=2)
        )
    else:
        for result in results:
            mark = "ok" if result.ok else "FAIL"
            click.echo(
                f"{mark}\t{result.target}/{result.credential}\t{result.reference}\t{result.detail}"
            )
    if failed:
        sys.exit(failed[0].exit_code or int(ExitCode.NOT_FOUND))


@cli.command()
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Print the launch plan with values redacted.")
@pass_state
def launch(state: State, name: str, dry_run: bool) -> None:
    """Start VM target NAME in the foreground with its credentials; exit with the VM's status."""
    with state.session() as session:
        result = session.launch(name, dry_run=dry_run)
    if dry_run:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    assert isinstance(result, int)
    sys.exit(result)


def main() -> None:
    cli(prog_name="credbridge")


if __name__ == "__main__":
    main()
