"""Process and runtime-directory machinery shared by the VM launchers (QEMU, cloud-hypervisor).

A launcher does its whole launch inside one :class:`VmRuntime`::

    with VmRuntime(spec.name, spec.runtime_dir, allow_persistent=...,
                   config_file=config.label, key=f"{where}.runtime_dir") as rt:
        try:
            channel = rt.prepare(sink, deliveries)          # files 0400 under rt.path
            sockets = [rt.start_virtiofsd(s, daemon) for s in channel.virtiofs]
            return rt.run(argv)                              # foreground; 128+N if killed by N
        except LaunchInterrupted as stop:                    # signal before the VM started
            return stop.status

Public API (stable; other launchers depend on it):

``VmRuntime(name, directory, *, allow_persistent=False, startup_timeout=30.0,
stop_timeout=10.0, config_file=None, key=None)``
    Context manager owning one VM's private runtime directory, its helper processes and the
    hypervisor process. On enter it refuses a directory that is not on tmpfs/ramfs (unless
    ``allow_persistent``), wipes a stale directory left by a crashed run (detected by the
    lock file ``.credbridge.lock``: present but not locked), refuses one held by a live
    credbridge, creates the directory 0700, takes the lock and (in the main thread) installs
    handlers for SIGTERM, SIGINT and SIGHUP. On exit -- normal return, exception or signal --
    it stops the hypervisor (if still running) and the helpers, runs the registered cleanups
    (last first), removes the directory and restores the signal handlers.

    * ``path`` -- the directory (0700).
    * ``private_dir(relpath) -> Path`` -- a 0700 subdirectory.
    * ``write_file(relpath, data) -> Path`` -- a new 0400 file (never through a symlink).
    * ``callback(fn, *args)`` -- run ``fn(*args)`` at exit (before the directory goes).
    * ``prepare(sink, deliveries) -> VmChannel`` -- ``sink.prepare(deliveries, path)``;
      ``sink.cleanup(channel)`` is registered to run at exit.
    * ``start_helper(name, argv, *, ready=None) -> Helper`` -- start a supervised helper
      (own process group, minimal environment, killed with credbridge); with ``ready`` wait
      until that path exists. A helper that dies while the VM runs stops the VM and makes
      :meth:`wait` raise :class:`LaunchError`.
    * ``start_virtiofsd(share, daemon=None, *, extra_args=()) -> Path`` -- start virtiofsd
      exporting ``share.directory`` and return its vhost-user socket (inside ``path``).
    * ``wait_for_path(path, what, *, process=None)`` -- wait for a socket/file to appear
      while watching helpers, ``process`` and signals (e.g. cloud-hypervisor's API socket).
    * ``start(argv, *, env=None, pass_fds=()) -> subprocess.Popen[bytes]`` -- start the
      hypervisor in the foreground (inherits stdin/stdout/stderr); from now on SIGTERM,
      SIGINT and SIGHUP are forwarded to it.
    * ``wait() -> int`` -- wait for the hypervisor, watching helpers; returns its exit status
      (``128+N`` when killed by signal N).
    * ``run(argv, *, env=None, pass_fds=()) -> int`` -- ``start`` then ``wait``.
    * ``interrupted -> int | None`` -- the first termination signal received, if any.
    * ``check()`` -- raise :class:`LaunchInterrupted` if a signal arrived, or
      :class:`LaunchError` if a helper died (call between startup steps).

``check_runtime_dir(path, *, allow_persistent=False, config_file=None, key=None)``: refuse a
runtime directory that is not on tmpfs/ramfs or whose existing path is unsafe (a symlink, another
user's directory, a group/world-writable one), before anything is written -- call it from
``Launcher.check()``. The directory and its parents are reached through
:func:`credbridge.core.fsutil.open_dir` (no symlink followed anywhere).

``LaunchInterrupted(LaunchError)``: a termination signal arrived before the hypervisor ran;
``.signal`` and ``.status`` (128+N) -- launchers return ``.status``.

``Virtiofsd(path, flavour)``, ``find_virtiofsd(configured=None) -> Virtiofsd``,
``virtiofsd_argv(daemon, share, socket, *, extra_args=()) -> list[str]``: the Rust
virtiofsd (``--shared-dir``, ``--readonly``) and QEMU's old C one (``-o source=``), told
apart by their ``--help`` text.

``child_env(extra=None) -> dict[str, str]``: the environment children get -- an allow-list
(PATH, HOME, LANG, LC_*, TERM, TZ, TMPDIR, USER, LOGNAME), never credbridge's own environment,
which may hold source tokens. ``exit_status(returncode) -> int``. ``RUNTIME_SETTINGS``:
launcher keys this module reads (``allow_persistent``, ``virtiofsd``, ``virtiofsd_args``,
``stop_timeout``) -- add them to ``parse_vm_spec(..., extra_keys=...)``. ``SOCKET_PATH_MAX``
(107): the longest usable AF_UNIX socket path. ``LOCK_NAME``: the lock file in the directory.

Children are started with ``PR_SET_PDEATHSIG`` so they die with credbridge even on SIGKILL
(the parent is the *thread* that started them: start them from the main thread); the
directory left behind then is wiped by the next launch. Nothing here ever puts a value in a
child's argv or environment: values reach the hypervisor only through 0400 files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import selectors
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from credbridge.core.errors import ConfigError, LaunchError
from credbridge.core.faults import point
from credbridge.core.fsutil import (
    LockWait,
    check_path,
    ensure_private_dir,
    is_memory_backed,
    libc,
    locked,
    opened_dir,
    remove_tree,
    write_new_file,
)
from credbridge.core.process import child_env
from credbridge.core.types import Delivery
from credbridge.core.vm import RUNTIME_LOCK, VirtiofsShare, VmChannel, VmSink
from credbridge.launchers.hooks import RUNTIME_KEYS

log = logging.getLogger(__name__)

LOCK_NAME = RUNTIME_LOCK
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
RUNTIME_SETTINGS = RUNTIME_KEYS
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
_PR_SET_PDEATHSIG = 1
_POLL = 0.02

_libc = libc


def check_runtime_dir(
    path: Path,
    *,
    allow_persistent: bool = False,
    config_file: str | None = None,
    key: str | None = None,
) -> None:
    """Refuse a runtime directory before anything is written: not on tmpfs/ramfs (unless
    ``allow_persistent``), or an existing part of its path that is unsafe (a symlink, another
    user's, group/world-writable). Launchers call it from ``Launcher.check()``."""
    try:
        check_path(path)
        persistent = not allow_persistent and not is_memory_backed(path)
    except OSError as error:
        raise ConfigError(
            f"runtime directory {path}: {error.strerror or error}", file=config_file, key=key
        ) from None
    if persistent:
        raise ConfigError(
            f"runtime directory {path} is not on tmpfs or ramfs; refusing to put secrets "
            "on persistent storage (set runtime_dir to a tmpfs path, or allow_persistent "
            "= true in the launcher table)",
            file=config_file,
            key=key,
        )


class LaunchInterrupted(LaunchError):
    """A termination signal arrived before the hypervisor was started."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name} before the VM started")
        self.signal = signum
        self.status = 128 + signum


def exit_status(returncode: int) -> int:
    """A shell-style exit status: ``128+N`` for a child killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _die_with_parent(parent: int) -> Callable[[], None]:
    def setup() -> None:
        # Children of a SIGKILLed credbridge must not outlive it holding the runtime dir.
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return setup


# --------------------------------------------------------------------------- virtiofsd


@dataclass(frozen=True)
class Virtiofsd:
    """A virtiofsd binary: ``flavour`` is ``"rust"`` (upstream) or ``"c"`` (QEMU <= 7.2)."""

    path: str
    flavour: str


_VIRTIOFSD_CANDIDATES = ("virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")
_flavours: dict[str, str] = {}


def virtiofsd_flavour(path: str) -> str:
    """``rust`` or ``c``, from the program's ``--help`` (cached per path)."""
    if path not in _flavours:
        try:
            result = subprocess.run(
                [path, "--help"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=10,
                check=False,
                env=child_env(),
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise LaunchError(f"cannot run virtiofsd {path}: {error}") from None
        text = (result.stdout + result.stderr).decode(errors="replace")
        if "--shared-dir" in text:
            _flavours[path] = "rust"
        elif "source=" in text:
            _flavours[path] = "c"
        else:
            raise LaunchError(f"{path} does not look like virtiofsd (unknown --help output)")
    return _flavours[path]


def find_virtiofsd(configured: str | None = None) -> Virtiofsd:
    """The configured virtiofsd, else the first found: PATH, /usr/libexec, /usr/lib/qemu."""
    candidates = (configured,) if configured else _VIRTIOFSD_CANDIDATES
    for candidate in candidates:
        path = shutil.which(candidate) if "/" not in candidate else candidate
        if path and os.access(path, os.X_OK):
            return Virtiofsd(path, virtiofsd_flavour(path))
    if configured:
        raise LaunchError(f"virtiofsd {configured!r} not found or not executable")
    raise LaunchError(
        "no virtiofsd found (install the 'virtiofsd' package, or on Debian 12 "
        "'qemu-system-common' for /usr/lib/qemu/virtiofsd)"
    )


def virtiofsd_argv(
    daemon: Virtiofsd, share: VirtiofsShare, socket_path: Path, *, extra_args: Sequence[str] = ()
) -> list[str]:
    """The virtiofsd command line: read-only where the daemon supports it, no caching."""
    if daemon.flavour == "rust":
        return [
            daemon.path,
            f"--socket-path={socket_path}",
            f"--shared-dir={share.directory}",
            "--readonly",
            "--cache=never",
            "--sandbox=namespace",
            "--log-level=warn",
            *extra_args,
        ]
    # The C daemon has no read-only switch: the guest mounts the share "ro" and the
    # directory is a throw-away copy that is wiped when the VM exits.
    return [
        daemon.path,
        f"--socket-path={socket_path}",
        "-o",
        f"source={share.directory}",
        "-o",
        "cache=none",
        "-o",
        "no_posix_lock",
        "-o",
        "log_level=warn",
        *extra_args,
    ]


# --------------------------------------------------------------------------- runtime


@dataclass
class Helper:
    """A supervised helper process (virtiofsd, ...)."""

    name: str
    process: subprocess.Popen[bytes]
    pidfd: int | None = None


class VmRuntime:
    """One VM's runtime directory, helpers and hypervisor process (see module docstring)."""

    def __init__(
        self,
        name: str,
        directory: Path,
        *,
        allow_persistent: bool = False,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        config_file: str | None = None,
        key: str | None = None,
    ) -> None:
        self.name = name
        self.path = Path(directory)
        self.allow_persistent = allow_persistent
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.config_file = config_file
        self.key = key
        self.helpers: list[Helper] = []
        self.hypervisor: subprocess.Popen[bytes] | None = None
        self.interrupted: int | None = None
        self._lock_fd: int | None = None
        self._cleanups: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._old_handlers: dict[int, Any] = {}
        self._wake_r = self._wake_w = -1

    # ------------------------------------------------------------------ enter / exit

    def __enter__(self) -> VmRuntime:
        try:
            self._claim_directory()
            self._install_signals()
        except BaseException:
            self._release()  # removes the directory only if this runtime claimed it
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    def _refuse(self, message: str) -> ConfigError:
        return ConfigError(message, file=self.config_file, key=self.key)

    def _claim_directory(self) -> None:
        path = self.path
        check_runtime_dir(
            path,
            allow_persistent=self.allow_persistent,
            config_file=self.config_file,
            key=self.key,
        )
        # Parents are created 0700 through a trusted chain (no symlink, no foreign owner).
        with opened_dir(path.parent, create=True):
            pass
        # Serialise claims of this directory: without it, a second launch could find the new
        # directory before its lock is held and wipe it as stale.
        with locked(path.parent / f".{path.name}.claim", wait=LockWait(notify_after=5.0)):
            self._claim_locked(path)
        point("runtime.claimed")

    def _claim_locked(self, path: Path) -> None:
        if os.path.lexists(path):
            self._clear_stale(path)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            raise LaunchError(
                f"runtime directory {path} appeared while starting VM {self.name}: "
                "is it being launched twice?"
            ) from None
        try:
            ensure_private_dir(path)
            lock = path / LOCK_NAME
            fd = os.open(
                lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._lock_fd = fd
        except BaseException:
            remove_tree(path)
            raise

    def _clear_stale(self, path: Path) -> None:
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode):
            raise LaunchError(f"runtime directory {path} exists and is not a directory")
        lock = path / LOCK_NAME
        try:
            fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if any(os.scandir(path)):
                raise LaunchError(
                    f"runtime directory {path} exists and was not made by credbridge; "
                    "remove it or choose another runtime_dir"
                ) from None
            os.rmdir(path)
            return
        except OSError as error:
            # A symlink (ELOOP), a directory (EISDIR), ...: credbridge only ever makes a file.
            raise LaunchError(
                f"runtime directory {path} exists and was not made by credbridge "
                f"({LOCK_NAME}: {error.strerror}); remove it or choose another runtime_dir"
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
                raise LaunchError(
                    f"VM {self.name} is already running (credbridge pid {owner} holds {path})"
                ) from None
            owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
            log.warning(
                "removing stale runtime directory %s of VM %s left by credbridge pid %s",
                path,
                self.name,
                owner,
            )
            remove_tree(path)
        finally:
            os.close(fd)

    def _release(self) -> None:
        try:
            if self.hypervisor is not None and self.hypervisor.poll() is None:
                self._terminate(self.hypervisor, "hypervisor")
            self._stop_helpers()
            while self._cleanups:
                fn, args = self._cleanups.pop()
                try:
                    fn(*args)
                except Exception:
                    log.error("cleanup of VM %s failed", self.name, exc_info=True)
        finally:
            try:
                if self._lock_fd is not None:
                    remove_tree(self.path)
            finally:
                if self._lock_fd is not None:
                    os.close(self._lock_fd)
                    self._lock_fd = None
                self._restore_signals()

    # ------------------------------------------------------------------ signals

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for signum in FORWARDED_SIGNALS:
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_signals(self) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.interrupted is None:
            self.interrupted = signum
        hypervisor = self.hypervisor
        if hypervisor is not None and hypervisor.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(hypervisor.pid, signum)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    # ------------------------------------------------------------------ files

    def private_dir(self, relpath: str) -> Path:
        path = self.path / relpath
        ensure_private_dir(path)
        return path

    def write_file(self, relpath: str, data: bytes) -> Path:
        path = self.path / relpath
        write_new_file(path, data, mode=0o400)
        return path

    def callback(self, fn: Callable[..., Any], *args: Any) -> None:
        self._cleanups.append((fn, args))

    def prepare(self, sink: VmSink, deliveries: Sequence[Delivery]) -> VmChannel:
        channel = sink.prepare(deliveries, self.path)
        self.callback(sink.cleanup, channel)
        return channel

    # ------------------------------------------------------------------ helpers

    def _spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None,
        pass_fds: Sequence[int],
        new_group: bool,
        stdout: int | None = None,
    ) -> subprocess.Popen[bytes]:
        # A child must be started by the thread that stays alive until it is reaped
        # (PR_SET_PDEATHSIG fires when that thread exits).
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL if new_group else None,
            stdout=stdout,
            env=child_env(env),
            pass_fds=tuple(pass_fds),
            start_new_session=new_group,
            preexec_fn=_die_with_parent(os.getpid()),
            close_fds=True,
        )

    def start_helper(
        self,
        name: str,
        argv: Sequence[str],
        *,
        ready: Path | None = None,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> Helper:
        """Start a helper in its own session (terminal signals do not reach it)."""
        self.check()
        log.debug("starting %s: %s", name, " ".join(argv))
        try:
            # Helpers log to credbridge's stderr; their stdout must not mix with the console.
            process = self._spawn(
                argv, env=env, pass_fds=pass_fds, new_group=True, stdout=subprocess.DEVNULL
            )
        except OSError as error:
            raise LaunchError(f"cannot start {name} ({argv[0]}): {error.strerror}") from None
        helper = Helper(name, process, _pidfd(process.pid))
        self.helpers.append(helper)
        if ready is not None:
            self.wait_for_path(ready, f"{name} socket {ready}")
        return helper

    def start_virtiofsd(
        self,
        share: VirtiofsShare,
        daemon: Virtiofsd | None = None,
        *,
        extra_args: Sequence[str] = (),
    ) -> Path:
        daemon = daemon or find_virtiofsd()
        sockets = self.private_dir("sockets")
        # virtiofsd opens the shared directory by its path and follows a symlink there: the
        # path is walked again now, after the files were written into it, and a symlink
        # swapped in since is refused (exit 13) before the guest could see what it points to.
        with opened_dir(share.directory):
            pass
        socket_path = sockets / f"virtiofsd-{share.tag}.sock"
        if len(os.fsencode(socket_path)) > SOCKET_PATH_MAX:
            raise self._refuse(
                f"socket path {socket_path} is longer than {SOCKET_PATH_MAX} bytes; "
                "choose a shorter runtime_dir"
            )
        argv = virtiofsd_argv(daemon, share, socket_path, extra_args=extra_args)
        self.start_helper(f"virtiofsd for share {share.tag!r}", argv, ready=socket_path)
        return socket_path

    def _dead_helper(self) -> Helper | None:
        for helper in self.helpers:
            if helper.process.poll() is not None:
                return helper
        return None

    def check(self) -> None:
        """Raise if a signal arrived or a helper died (between startup steps)."""
        if self.interrupted is not None:
            raise LaunchInterrupted(self.interrupted)
        dead = self._dead_helper()
        if dead is not None:
            raise LaunchError(
                f"{dead.name} exited with status "
                f"{exit_status(dead.process.returncode or 0)} before the VM started"
            )

    def wait_for_path(
        self, path: Path, what: str, *, process: subprocess.Popen[bytes] | None = None
    ) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while not os.path.exists(path):
            self.check()
            if process is not None and process.poll() is not None:
                raise LaunchError(
                    f"{what}: the process exited with status "
                    f"{exit_status(process.returncode or 0)} before it appeared"
                )
            if time.monotonic() > deadline:
                raise LaunchError(f"{what} did not appear within {self.startup_timeout:g}s")
            time.sleep(_POLL)

    def _terminate(self, process: subprocess.Popen[bytes], what: str) -> None:
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s of VM %s ignored SIGTERM; killing it", what, self.name)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()

    def _stop_helpers(self) -> None:
        for helper in reversed(self.helpers):
            self._terminate(helper.process, helper.name)
            if helper.pidfd is not None:
                os.close(helper.pidfd)
                helper.pidfd = None

    # ------------------------------------------------------------------ hypervisor

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> subprocess.Popen[bytes]:
        """Start the hypervisor in credbridge's process group, with its stdio."""
        self.check()
        if self.hypervisor is not None:
            raise LaunchError("the hypervisor was already started")
        # The argv itself is not logged: a launcher may (on explicit request) carry secrets in it.
        log.debug(
            "starting hypervisor of VM %s: %s with %d arguments", self.name, argv[0], len(argv) - 1
        )
        try:
            # Same process group: a console on the terminal keeps working (no SIGTTIN).
            self.hypervisor = self._spawn(argv, env=env, pass_fds=pass_fds, new_group=False)
        except OSError as error:
            raise LaunchError(f"cannot start {argv[0]}: {error.strerror}") from None
        if self.interrupted is not None:
            # The signal came while Popen ran, before the handler could forward it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.hypervisor.pid, self.interrupted)
        point("runtime.hypervisor-started")
        return self.hypervisor

    def wait(self) -> int:
        """Wait for the hypervisor; a helper that dies meanwhile stops the VM (LaunchError)."""
        hypervisor = self.hypervisor
        if hypervisor is None:
            raise LaunchError("the hypervisor was not started")
        hv_fd = _pidfd(hypervisor.pid)
        selector = selectors.DefaultSelector()
        exact = hv_fd is not None and all(h.pidfd is not None for h in self.helpers)
        try:
            if hv_fd is not None:
                selector.register(hv_fd, selectors.EVENT_READ)
            for helper in self.helpers:
                if helper.pidfd is not None:
                    selector.register(helper.pidfd, selectors.EVENT_READ)
            if self._wake_r >= 0:
                selector.register(self._wake_r, selectors.EVENT_READ)
            while hypervisor.poll() is None:
                dead = self._dead_helper()
                if dead is not None and self.interrupted is None:
                    self._helper_died(dead)
                # Without pidfds (old kernels, seccomp) fall back to polling.
                for key, _ in selector.select(None if exact else 0.2):
                    if key.fd == self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 64)
                    elif key.fd != hv_fd:
                        selector.unregister(key.fd)  # an exited helper stays readable
        finally:
            selector.close()
            if hv_fd is not None:
                os.close(hv_fd)
        return exit_status(hypervisor.returncode)

    def _helper_died(self, dead: Helper) -> None:
        status = exit_status(dead.process.returncode or 0)
        hypervisor = self.hypervisor
        assert hypervisor is not None
        if status == 0:
            # virtiofsd exits cleanly when the hypervisor closes the vhost-user socket, which
            # happens while a powered-off VM shuts down: give the hypervisor time to exit.
            with contextlib.suppress(subprocess.TimeoutExpired):
                hypervisor.wait(timeout=self.stop_timeout)
            if hypervisor.returncode is not None:
                return
        log.error(
            "%s of VM %s exited with status %d; stopping the VM", dead.name, self.name, status
        )
        self._terminate(hypervisor, "hypervisor")
        raise LaunchError(
            f"{dead.name} exited with status {status} while VM {self.name} was running; "
            "the VM was stopped"
        )

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> int:
        self.start(argv, env=env, pass_fds=pass_fds)
        return self.wait()


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError) as error:
        if isinstance(error, OSError) and error.errno not in (
            errno.ENOSYS,
            errno.EPERM,
            errno.EINVAL,
            errno.ESRCH,
        ):
            raise
        return None


__all__ = [
    "FORWARDED_SIGNALS",
    "LOCK_NAME",
    "RUNTIME_SETTINGS",
    "SOCKET_PATH_MAX",
    "Helper",
    "LaunchInterrupted",
    "Virtiofsd",
    "VmRuntime",
    "check_runtime_dir",
    "child_env",
    "exit_status",
    "find_virtiofsd",
    "virtiofsd_argv",
    "virtiofsd_flavour",
]
