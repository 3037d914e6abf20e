"""The ``credbridge`` command. User errors become one line and a documented exit code here."""

from __future__ import annotations

import json
import logging
import os
import signal
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
    from credbridge.core.fsutil import LockWait

F = TypeVar("F", bound=Callable[..., Any])


class Terminated(SystemExit):
    """SIGTERM or SIGHUP arrived: unwind (rolling back, removing temp files), exit 128+N."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(signum)


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
        except Terminated as stop:
            click.echo(f"credbridge: terminated by {signal.Signals(stop.signum).name}", err=True)
            ctx.exit(128 + stop.signum)


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
        self.lock_wait: LockWait | None = None

    def config(self, *, required: bool = True) -> Config:
        from credbridge.core.config import Config, find_config, load_config

        path = find_config(self.config_path)
        if not required and self.config_path is None and not path.exists():
            return Config(path=None, directory=Path.cwd(), targets={})
        return load_config(path)

    def session(self, *, required: bool = True, progress: bool = False) -> Session:
        from credbridge.core.engine import Session

        return Session(
            self.config(required=required),
            progress=_progress() if progress else None,
            lock_wait=self.lock_wait,
        )


pass_state = click.make_pass_decorator(State)


def _set_lock_wait(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    from credbridge.core.fsutil import LockWait

    state = ctx.ensure_object(State)
    if param.name == "no_wait" and value:
        if state.lock_wait is not None and state.lock_wait.timeout != 0:
            raise click.UsageError("--no-wait and --wait-lock exclude each other")
        state.lock_wait = LockWait(timeout=0)
    elif param.name == "wait_lock" and value is not None:
        if state.lock_wait is not None and state.lock_wait.timeout == 0:
            raise click.UsageError("--no-wait and --wait-lock exclude each other")
        state.lock_wait = LockWait(timeout=value)
    return value


def lock_options(command: F) -> F:
    """``--wait-lock SECONDS`` / ``--no-wait`` for the commands that take locks."""
    command = click.option(
        "--no-wait",
        is_flag=True,
        expose_value=False,
        callback=_set_lock_wait,
        help="Fail at once (exit 12) if another run holds a lock this one needs.",
    )(command)
    return click.option(
        "--wait-lock",
        metavar="SECONDS",
        type=click.FloatRange(min=0),
        expose_value=False,
        callback=_set_lock_wait,
        help="Wait at most SECONDS for a lock another run holds, then fail (exit 12). "
        "Default: wait as long as it takes, saying so after a second.",
    )(command)


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
    # Nothing credbridge creates may be readable by others by accident; modes are also set
    # explicitly where a file or directory is meant to be shared (drop-ins: 0644/0755).
    os.umask(0o077)
    _setup_logging(verbose)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    ctx.obj = State(config_path)


@cli.command()
@click.argument("targets", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Print the plan (no values); change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@lock_options
@pass_state
def deliver(state: State, targets: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Resolve every credential of TARGETS (default: all units) and deliver them, all or nothing."""
    with state.session(progress=not as_json) as session:
        report = session.deliver(targets, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
        return
    verb = "would " if dry_run else ""
    for entry in report.entries:
        detail = f" ({entry.detail})" if entry.detail else ""
        click.echo(
            f"{entry.target}\t{entry.credential}\t{entry.reference}\t{entry.sink}\t{verb}{entry.change.value}{detail}"
        )
    for skipped in report.skipped:
        click.echo(f"{skipped}\tskipped (optional, not found)", err=True)


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
@lock_options
@pass_state
def unit(state: State, target: str, install: bool, unit_dir: Path) -> None:
    """Print (or --install) the [Service] drop-in that loads TARGET's credentials."""
    from credbridge.core.errors import DeliveryError
    from credbridge.core.fsutil import LOCK_NAME, atomic_write, locked, opened_dir

    with state.session() as session:
        found, text = session.unit_dropin(target)
    if not install:
        click.echo(text, nl=False)
        return
    dropin_dir = unit_dir / f"{found.unit}.d"
    try:
        # Unit files are world-readable by convention (they hold paths, not values).
        with opened_dir(dropin_dir, create=True, mode=0o755, parents_mode=0o755):
            pass
        with locked(dropin_dir / LOCK_NAME, wait=state.lock_wait):
            atomic_write(dropin_dir / "credbridge.conf", text.encode(), mode=0o644)
    except OSError as error:
        raise DeliveryError(f"cannot write {dropin_dir}: {error.strerror or error}") from None
    click.echo(
        f"installed {dropin_dir / 'credbridge.conf'}; run 'systemctl daemon-reload'", err=True
    )


@cli.command()
@click.argument("target")
@click.argument("credential")
@lock_options
@pass_state
def rotate(state: State, target: str, credential: str) -> None:
    """Generate a new value for a generated CREDENTIAL of TARGET; the old one stays readable."""
    with state.session() as session:
        where = session.rotate(target, credential)
    click.echo(
        f"rotated {target}/{credential} in {where}; run 'credbridge deliver' to deliver it",
        err=True,
    )


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
@lock_options
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
