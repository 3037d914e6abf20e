"""The ``credbridge`` command. User errors become one line and a documented exit code here."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from credbridge.core import __version__
from credbridge.core.cli_base import (
    State,
    _config_option,
    _row,
    lock_options,
    pass_state,
)
from credbridge.core.cli_base import pass_config as pass_config
from credbridge.core.errors import CredbridgeError, ExitCode, PluginFailed, printable

if TYPE_CHECKING:
    from credbridge.core.report import DeliveryReport

F = TypeVar("F", bound=Callable[..., Any])


class Terminated(SystemExit):
    """SIGTERM or SIGHUP arrived: unwind (rolling back, removing temp files), exit 128+N."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(signum)


STDOUT_CLOSED = 128 + signal.SIGPIPE
"""The exit status when the reader of stdout went away (``credbridge check | head -1``): what
a shell shows for a tool that SIGPIPE stopped, without dying of it mid-run."""


def stdout_closed() -> bool:
    """Whether the reader of stdout is gone (a pipe or socket whose other end closed); if so,
    stdout is pointed at /dev/null so that nothing later (the final flush) fails again."""
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        gone = any(events & select.POLLERR for _fd, events in poller.poll(0))
    except (AttributeError, ValueError, OSError):
        return False
    if gone:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    return gone


class _Group(click.Group):
    """Turns every :class:`CredbridgeError` into ``credbridge: error: ...`` and its exit code.

    Anything else is a bug: one line and exit 1, with where it happened (never the exception's
    message, which could carry a value) at ``-vv``. Every command also accepts ``-c PATH``
    after its name, and a name that is no built-in command is looked up among the plugins'.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CredbridgeError as error:
            # lines() escapes control characters from user input: one message, no forged lines.
            for line in error.lines():
                click.echo(f"credbridge: error: {line}", err=True)
            if isinstance(error, PluginFailed):
                _show_where(ctx, error.error)
            ctx.exit(int(error.exit_code))
        except KeyboardInterrupt:
            click.echo("credbridge: interrupted", err=True)
            ctx.exit(130)
        except Terminated as stop:
            click.echo(f"credbridge: terminated by {signal.Signals(stop.signum).name}", err=True)
            ctx.exit(128 + stop.signum)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except BrokenPipeError as error:
            if not stdout_closed():
                self._internal(ctx, error)
            # Like any filter whose reader left (head, grep -q): no message, and all work that
            # wrote something (a delivery, its restarts) was done before the output started.
            ctx.exit(STDOUT_CLOSED)
        except Exception as error:  # noqa: BLE001 - the one place a bug becomes one line
            self._internal(ctx, error)

    @staticmethod
    def _internal(ctx: click.Context, error: Exception) -> None:
        click.echo(
            f"credbridge: error: internal error ({type(error).__name__}): a bug in "
            "credbridge; please report it with the output of -vv",
            err=True,
        )
        _show_where(ctx, error)
        ctx.exit(int(ExitCode.INTERNAL))

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not any("--config" in getattr(p, "opts", ()) for p in cmd.params):
            cmd.params.append(_config_option())
        super().add_command(cmd, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def builtin_commands(self) -> dict[str, click.Command]:
        """Every built-in command, the lazy ones loaded (``plugins`` checks clashes with them)."""
        for name in LAZY_COMMANDS:
            self._load_lazy(name)
        return {n: c for n, c in self.commands.items() if n in self._builtin_names}

    def _load_lazy(self, name: str) -> None:
        if name in LAZY_COMMANDS and name not in self.commands:
            import importlib

            module = importlib.import_module(LAZY_COMMANDS[name])
            for command in module.COMMANDS:
                if command.name not in self.commands:
                    self.add_command(command)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load_lazy(cmd_name)
        found = super().get_command(ctx, cmd_name)
        if found is None and not self._plugin_commands_loaded:
            # Plugins are asked for commands only when the command line names an unknown one.
            from credbridge.core.plugins import get_plugin_manager

            self._plugin_commands_loaded = True
            self.builtin_commands()  # a plugin's command never takes a lazy built-in's name
            get_plugin_manager().add_commands(self)
            found = super().get_command(ctx, cmd_name)
        return found

    _plugin_commands_loaded = False
    _builtin_names: frozenset[str] = frozenset()


LAZY_COMMANDS = {
    "unit": "credbridge.core.cli_unit",
    "plugins": "credbridge.core.cli_plugins",
    "agent": "credbridge.core.cli_agent",
    "status": "credbridge.core.cli_agent",
}
"""Built-in commands whose modules load only when they run (or ``--help`` lists them)."""


def _show_where(ctx: click.Context, error: BaseException) -> None:
    """At ``-vv``: the frames an exception went through, and its type; no messages."""
    state = ctx.find_object(State)
    if state is None or state.verbose < 2:
        return
    import traceback

    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for index, item in enumerate(reversed(chain)):
        if index:
            click.echo("credbridge: debug: which led to:", err=True)
        click.echo("credbridge: debug: traceback (messages withheld):", err=True)
        for frame in traceback.extract_tb(item.__traceback__):
            click.echo(
                f'credbridge: debug:   File "{frame.filename}", line {frame.lineno}, '
                f"in {frame.name}: {frame.line or ''}".rstrip(": "),
                err=True,
            )
        click.echo(
            f"credbridge: debug: {type(item).__module__}.{type(item).__qualname__}", err=True
        )


class _OneLineFormatter(logging.Formatter):
    """Log messages carry names and paths from users: escape their control characters."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter("credbridge: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Plugins may add commands: 'credbridge plugins' lists them.",
)
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
    # Nothing credbridge creates may be readable by others by accident; modes are also set
    # explicitly where a file or directory is meant to be shared (drop-ins: 0644/0755).
    os.umask(0o077)
    _setup_logging(verbose)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    ctx.obj = State(config_path, verbose)


@cli.command()
@click.argument("targets", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Print the plan (no values); change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@lock_options
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
        try:
            session.restart_changed(report)
        except BaseException:
            left = [a for a in report.units if a.status == "planned"]
            if left:
                click.echo(
                    "credbridge: error: delivered, but not yet restarted or reloaded: "
                    + ", ".join(printable(a.unit) for a in left)
                    + "; recorded: the next 'credbridge deliver' does it",
                    err=True,
                )
            raise
    for warning in report.warnings:
        click.echo(f"credbridge: warning: {printable(warning)}", err=True)
    closed = False
    try:
        _print_report(report, as_json=as_json)
    except BrokenPipeError:
        if not stdout_closed():
            raise
        closed = True  # the summary and a failed restart still go to stderr
    # For a person: on stderr, so the lines above stay the whole of stdout for scripts.
    for line in report.summary():
        click.echo(f"credbridge: {printable(line)}", err=True)
    failed = [a for a in report.units if a.status == "failed"]
    if failed:
        raise RestartFailed(
            "\n".join(f"delivered, but {a.action} of {a.unit} failed: {a.detail}" for a in failed)
        )
    if closed:
        sys.exit(STDOUT_CLOSED)


def _print_report(report: DeliveryReport, *, as_json: bool) -> None:
    if as_json:
        import json

        click.echo(json.dumps(report.as_json(), indent=2))
        return
    verb = "would " if report.dry_run else ""
    for entry in report.entries:
        detail = f" ({entry.detail})" if entry.detail else ""
        _row(
            entry.target,
            entry.credential,
            entry.reference,
            entry.sink,
            f"{verb}{entry.change.value}{detail}",
        )
    for action in report.units:
        status = "would" if report.dry_run else action.status
        detail = f" ({action.detail})" if action.detail else ""
        _row("unit", action.unit, action.action, f"{status}{detail}")


class SecretToTerminal(CredbridgeError):
    """``credbridge get`` of a secret with a terminal as stdout and no ``--reveal``."""

    exit_code = ExitCode.USAGE


@cli.command()
@click.argument("reference")
@click.option("--reveal", is_flag=True, help="Print a secret even when stdout is a terminal.")
@pass_state
def get(state: State, reference: str, reveal: bool) -> None:
    """Resolve REFERENCE and write the raw value to stdout (no newline added).

    Public parts (#public, #cert, #chain of a generated key) are printed anywhere; a secret
    is printed to a pipe or file, and to a terminal only with --reveal.
    """
    with state.resolver() as session:
        if not reveal and sys.stdout.isatty() and not session.is_public(reference):
            raise SecretToTerminal(
                f"{reference}: refusing to print a secret to a terminal; pipe it, redirect "
                "it, or pass --reveal"
            )
        value = session.resolve_one(reference)
    out = sys.stdout.buffer
    out.write(value.reveal())
    out.flush()
    value.wipe()


@cli.command()
@click.argument("reference")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@pass_state
def export(state: State, reference: str, path: Path) -> None:
    """Write the public part REFERENCE selects to PATH (0644, atomically, no symlinks)."""
    from credbridge.core.export import export_public

    with state.resolver() as session:
        size = export_public(session, reference, path)
    click.echo(f"exported {reference} to {path} ({size} bytes)", err=True)


@cli.command()
@click.argument("target")
@click.argument("credential")
@lock_options
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
@click.argument("targets", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def check(state: State, targets: tuple[str, ...], as_json: bool) -> None:
    """Validate the config and test that every source is reachable and readable (no values)."""
    with state.session(progress=not as_json) as session:
        results = session.check(targets)
    failed = [r for r in results if not r.ok]
    if as_json:
        import json

        click.echo(
            json.dumps({"ok": not failed, "results": [r.as_json() for r in results]}, indent=2)
        )
    else:
        for result in results:
            mark = "ok" if result.ok else "FAIL"
            what = f"{result.target}/{result.credential}" if result.credential else result.target
            _row(mark, what, result.reference, result.detail)
    if failed:
        sys.exit(failed[0].exit_code or int(ExitCode.NOT_FOUND))


@cli.command()
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Print the launch plan with values redacted.")
@lock_options
@pass_state
def launch(state: State, name: str, dry_run: bool) -> None:
    """Start VM target NAME in the foreground with its credentials; exit with the VM's status."""
    with state.session() as session:
        result = session.launch(name, dry_run=dry_run)
    if dry_run:
        import json

        click.echo(json.dumps(result, indent=2, default=str))
        return
    assert isinstance(result, int)
    sys.exit(result)


cli._builtin_names = frozenset({*cli.commands, *LAZY_COMMANDS})


def main() -> None:
    cli(prog_name="credbridge")


if __name__ == "__main__":
    main()
