"""What every ``credbridge`` command shares: the run's :class:`State` (the config it names, the
lock wait), the decorators that pass it, ``--wait-lock``/``--no-wait``, and table rows.

Apart from core/cli.py (the group, its error handling and the everyday commands) so that the
commands loaded only when they run (cli_unit.py, cli_plugins.py, cli_agent.py) need not import
the module that loads them.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click
from credbridge.core.errors import printable

if TYPE_CHECKING:
    from credbridge.core.config import Config
    from credbridge.core.engine import Session
    from credbridge.core.fsutil import LockWait
    from credbridge.core.resolution import Progress, Resolver

F = TypeVar("F", bound=Callable[..., Any])


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


def _row(*fields: str) -> None:
    """One tab-separated output line; a tab or newline inside a field is shown escaped."""
    click.echo("\t".join(printable(field) for field in fields))
