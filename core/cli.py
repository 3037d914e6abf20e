"""The ``credbridge`` command. User errors become one line and a documented exit code here."""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click
from credbridge.core import __version__
from credbridge.core.errors import CredbridgeError, ExitCode, PluginFailed, printable

if TYPE_CHECKING:
    from credbridge.core.config import Config
    from credbridge.core.engine import Session
    from credbridge.core.fsutil import LockWait
    from credbridge.core.plugins import PluginManager
    from credbridge.core.report import DeliveryReport
    from credbridge.core.resolution import Progress, Resolver

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

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None and not self._plugin_commands_loaded:
            # Plugins are asked for commands only when the command line names an unknown one.
            from credbridge.core.plugins import get_plugin_manager

            self._plugin_commands_loaded = True
            get_plugin_manager().add_commands(self)
            found = super().get_command(ctx, cmd_name)
        return found

    _plugin_commands_loaded = False


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


def _set_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        state = ctx.find_object(State)
        if state is not None:
            state.config_path = value


def _config_option() -> click.Option:
    return click.Option(
        ["-c", "--config"],
        metavar="PATH",
        expose_value=False,
        is_eager=True,
        callback=_set_config,
        help="Config file (default: $CREDBRIDGE_CONFIG or ./credbridge.toml).",
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
    def __init__(self, config_path: str | None, verbose: int = 0) -> None:
        self.config_path = config_path
        self.verbose = verbose
        self.lock_wait: LockWait | None = None

    def config(self, *, required: bool = True) -> Config:
        from credbridge.core.config import Config, find_config, load_config

        path = find_config(self.config_path)
        if not required and self.config_path is None and not path.exists():
            return Config(path=None, directory=Path.cwd(), targets={})
        return load_config(path)

    def resolver(self) -> Resolver:
        """For commands that only read values (``get``, ``export``): no delivery code loaded."""
        from credbridge.core.resolution import Resolver

        return Resolver(self.config(required=False))

    def session(self, *, required: bool = True, progress: bool = False) -> Session:
        from credbridge.core.engine import Session

        return Session(
            self.config(required=required),
            progress=_progress() if progress else None,
            lock_wait=self.lock_wait,
        )


pass_state = click.make_pass_decorator(State)


def pass_config(command: F) -> F:
    """Call a command with the loaded :class:`Config` as its first argument (docs/plugins.md).

    The config is the one ``-c PATH`` names (before or after the command's name), else
    ``$CREDBRIDGE_CONFIG`` or ``./credbridge.toml``; it is loaded and validated when the command
    runs, and a bad one is one line and the exit code it gets in the built-in commands.
    """

    @functools.wraps(command)
    def with_config(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        state = ctx.find_object(State) or State(None)
        return ctx.invoke(command, state.config(), *args, **kwargs)

    return cast("F", with_config)


def _set_lock_wait(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    from credbridge.core.fsutil import LockWait

    state = ctx.ensure_object(State)
    if param.name == "no_wait" and value:
        if state.lock_wait is not None and state.lock_wait.timeout != 0:
            raise click.UsageError("--no-wait and --wait-lock exclude each other")
        state.lock_wait = LockWait(timeout=0)
    elif param.name == "wait_lock" and value is not None:
        if not math.isfinite(value):
            # FloatRange lets nan through (nan < 0 is false), and nan would wait forever.
            raise click.BadParameter("must be a finite number of seconds", ctx, param)
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


def _row(*fields: str) -> None:
    """One tab-separated output line; a tab or newline inside a field is shown escaped."""
    click.echo("\t".join(printable(field) for field in fields))


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


def installed_command() -> list[str]:
    """The credbridge that is running, as a unit's ``ExecStart=`` should name it: the absolute
    path of the ``credbridge`` entry point, or this interpreter with ``-m credbridge.core``."""
    script = sys.argv[0] if sys.argv else ""
    if os.path.basename(script) == "credbridge" and os.path.isfile(script):
        return [os.path.abspath(script)]
    return [os.path.abspath(sys.executable), "-m", "credbridge.core"]


def _exec_word(word: str) -> str:
    """One word of a systemd command line: ``%`` and ``$`` doubled, quoted when it needs it."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in word):
        raise click.BadParameter(f"{word!r} holds a control character")
    word = word.replace("%", "%%").replace("$", "$$")
    if all(c.isalnum() or c in "/._+-@:,=%" for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def boot_unit(config: Config) -> str:
    """``credbridge-deliver.service`` for ``config``, naming the running credbridge."""
    command = " ".join(
        _exec_word(w) for w in [*installed_command(), "-c", str(config.path), "deliver"]
    )
    units = sorted({t.unit for t in config.targets.values() if t.unit})
    rerun = " ".join([*installed_command(), "-c", str(config.path), "unit", "--boot", "--install"])
    return "\n".join(
        [
            f"# Generated by credbridge from {printable(str(config.path))}: deliver the",
            "# credentials at boot, before the units that load them.",
            f"# Re-run '{printable(rerun)}' after adding targets.",
            "[Unit]",
            "Description=Deliver credentials with credbridge",
            *([f"Before={' '.join(units)}"] if units else []),
            "",
            "[Service]",
            "Type=oneshot",
            "RemainAfterExit=yes",
            f"ExecStart={command}",
            "UMask=0077",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


@cli.command()
@click.argument("target", required=False)
@click.option(
    "--boot",
    is_flag=True,
    help="Instead of a drop-in: credbridge-deliver.service, delivering at boot.",
)
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
def unit(state: State, target: str | None, boot: bool, install: bool, unit_dir: Path) -> None:
    """Print (or --install) the [Service] drop-in that loads TARGET's credentials.

    With --boot, the credbridge-deliver.service that delivers every target at boot, naming
    this credbridge and config (no TARGET)."""
    from credbridge.core.errors import DeliveryError
    from credbridge.core.fsutil import LOCK_NAME, atomic_write, locked, opened_dir
    from credbridge.core.settings import control_problem

    problem = control_problem(str(unit_dir))
    if problem is not None:
        raise click.BadParameter(f"path {problem}", param_hint="--unit-dir")
    if boot == (target is not None):
        raise click.UsageError("name a TARGET, or give --boot (and no TARGET)")
    if boot:
        text = boot_unit(state.config())
        if not install:
            click.echo(text, nl=False)
            return
        path = unit_dir / "credbridge-deliver.service"
        try:
            with opened_dir(unit_dir, create=True, mode=0o755, parents_mode=0o755):
                pass
            atomic_write(path, text.encode(), mode=0o644)
        except OSError as error:
            raise DeliveryError(f"cannot write {path}: {error.strerror or error}") from None
        click.echo(
            f"installed {path}; run 'systemctl daemon-reload && systemctl enable "
            "credbridge-deliver.service'",
            err=True,
        )
        return
    assert target is not None
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
            # atomic_write reached the directory once, before writing: a symlink swapped in
            # for it since then would leave the drop-in where systemd does not look. Walking
            # the path again refuses it (exit 13), as a symlink there beforehand is refused.
            with opened_dir(dropin_dir):
                pass
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


@cli.command()
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
    manager.add_commands(click.Group(commands=dict(cli.commands)))
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


@cli.command()
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


@cli.command()
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


def main() -> None:
    cli(prog_name="credbridge")


if __name__ == "__main__":
    main()
