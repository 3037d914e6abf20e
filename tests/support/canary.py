"""The suite-wide secret canary: every test fails if a registered secret shows up where it must not.

What is registered (at least 6 bytes; shorter values would match by chance):

* every :class:`~credbridge.core.secret.Secret` built in the test process (sources, sinks,
  test helpers), automatically;
* the contents of every file in a *secret home* (store, credstore base, VM runtime dir) of the
  configs the test runs, read after each ``run_cli`` call and each in-process ``Session``;
* the stdout of ``credbridge get`` (its value, by design);
* anything a test passes to ``canary.register(value)`` (the ``canary`` fixture).

Where it looks, in each value's raw, hex and base64 forms (standard and URL-safe, at all three
alignments, so a value inside a longer base64 blob is found too):

* stdout/stderr of every ``run_cli`` run (stdout of ``get`` excepted), ``capsys``/``capfd``
  reads and the test's captured output;
* every log record at DEBUG (a handler on the root logger, root level DEBUG during the test);
* the message of every ``CredbridgeError`` created, and the exception that failed the test;
* argv and environment of children: ``subprocess.Popen`` calls made from credbridge's own code
  in-process, and, while ``run_cli`` runs, ``/proc/PID/cmdline`` and ``environ`` of every
  descendant of the credbridge child (the child's own environment is the test's input);
* stray files: files created or changed during a ``run_cli`` call or an in-process session under
  the test's ``tmp_path``/``tmpfs_dir``, the config's directory, and directly in ``/tmp`` and
  ``/dev/shm``, outside the secret homes.

A test that leaks fails at teardown with one line per leak (form and place, never the value).
``canary.tolerate("argv")`` accepts leaks into places starting with that word, for the tests of a
documented opt-in that puts values there on purpose.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CREDBRIDGE_CODE = tuple(str(REPO / part) + os.sep for part in ("core", "backends", "launchers"))
MIN_LENGTH = 6
MAX_FILE = 4 << 20
# Placeholders that sinks wrap in Secret for plans (never values).
PLACEHOLDER = b"<redacted>"

_current: Canary | None = None
_internal_session = False  # homes_of() opens a Session of its own: not a run to bracket


def current() -> Canary | None:
    """The canary of the running test (``None`` outside a test)."""
    return _current


def forms(value: bytes) -> list[tuple[str, bytes]]:
    """The ways a value can show up in text: raw, hex, and base64 at every alignment."""
    found = [("raw", value), ("hex", value.hex().encode()), ("HEX", value.hex().upper().encode())]
    for shift in range(3):
        core = value[shift:]
        core = core[: len(core) // 3 * 3]
        if len(core) < MIN_LENGTH:
            continue
        encoded = base64.b64encode(core)
        found.append(("base64", encoded))
        urlsafe = base64.urlsafe_b64encode(core)
        if urlsafe != encoded:
            found.append(("base64url", urlsafe))
    return found


class Canary:
    def __init__(self) -> None:
        self.values: dict[bytes, int] = {}
        self._patterns: list[tuple[int, str, bytes]] = []
        self.observed: list[tuple[str, bytes]] = []
        self.homes: set[Path] = set()
        self.roots: set[Path] = set()
        self.tolerated: list[str] = []
        self.public: set[bytes] = set()
        self.leaks: list[str] = []
        self.bracket_sessions = True
        """Harvest and scan for stray files when an in-process Session closes."""

    def reset(self) -> None:
        """Forget values and observations (property tests check each example on its own)."""
        self.values.clear()
        self._patterns.clear()
        self.observed.clear()

    # ------------------------------------------------------------------ registering

    def register(self, value: bytes | bytearray | str) -> None:
        """Declare ``value`` secret for the rest of the test."""
        data = value.encode() if isinstance(value, str) else bytes(value)
        if len(data) < MIN_LENGTH or data in self.values or PLACEHOLDER in data:
            return
        if data in self.public:
            return
        number = len(self.values) + 1
        self.values[data] = number
        self._patterns += [(number, form, pattern) for form, pattern in forms(data)]

    def declare_public(self, value: bytes | bytearray | str) -> None:
        """Declare ``value`` public (a public key, a certificate): it may be shown anywhere."""
        data = value.encode() if isinstance(value, str) else bytes(value)
        self.public.add(data)
        number = self.values.pop(data, None)
        if number is not None:
            self._patterns = [p for p in self._patterns if p[0] != number]

    def allow(self, path: Path) -> None:
        """Declare ``path`` a secret home: files below it may hold values (and are harvested)."""
        home = Path(os.path.abspath(path))
        if len(home.parts) >= 3:  # never "/" or "/tmp": that would hide every stray file
            self.homes.add(home)

    def watch(self, path: Path) -> None:
        """Scan ``path`` (recursively) for stray files after each run."""
        self.roots.add(Path(os.path.abspath(path)))

    def tolerate(self, place: str) -> None:
        """Accept leaks into places whose name starts with ``place`` (a documented opt-in)."""
        self.tolerated.append(place)

    def harvest(self) -> None:
        """Register the contents of every file in the secret homes."""
        for home in list(self.homes):
            for file in _files(home):
                if file.name.endswith(".lock"):  # lock files hold the holder's pid, no value
                    continue
                with contextlib.suppress(OSError):
                    self.register(file.read_bytes())

    # ------------------------------------------------------------------ observing

    def observe(self, place: str, data: bytes | str) -> None:
        if data:
            raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
            self.observed.append((place, raw))

    def observe_process(self, pid: int, place: str, *, environ: bool = True) -> None:
        """Record a live process's argv (and environment)."""
        with contextlib.suppress(OSError):
            self.observe(f"argv of {place}", Path(f"/proc/{pid}/cmdline").read_bytes())
        if environ:
            with contextlib.suppress(OSError):
                self.observe(f"environ of {place}", Path(f"/proc/{pid}/environ").read_bytes())

    def scan_new_files(self, since_ns: int, extra_roots: Iterable[Path] = ()) -> None:
        """Record files changed since ``since_ns`` outside the secret homes (stray files)."""
        roots = set(self.roots)
        for extra in extra_roots:
            root = Path(os.path.abspath(extra))
            # A config's or cwd's directory is a test's own only below /tmp or /dev/shm.
            if len(root.parts) >= 3 and root.parts[1] in {"tmp", "dev"}:
                roots.add(root)
        candidates: list[Path] = []
        for root in roots:
            candidates += _files(root)
        for shared in (Path("/tmp"), Path("/dev/shm")):
            with contextlib.suppress(OSError):
                candidates += [p for p in shared.iterdir() if p.is_file() and not p.is_symlink()]
        for file in set(candidates):
            if any(file.is_relative_to(home) for home in self.homes):
                continue
            try:
                info = file.lstat()
                if not stat.S_ISREG(info.st_mode):
                    continue
                if info.st_ctime_ns < since_ns or info.st_size > MAX_FILE:
                    continue
                self.observe(f"stray file {file}", file.read_bytes())
            except OSError:
                continue

    # ------------------------------------------------------------------ verdict

    def check(self) -> list[str]:
        """Every (place, form) where a registered value was seen; never the value itself."""
        leaks = list(self.leaks)
        for place, data in self.observed:
            if any(place.startswith(t) for t in self.tolerated):
                continue
            for number, form, pattern in self._patterns:
                if pattern in data:
                    leaks.append(f"secret #{number} ({form} form) in {place}")
        return sorted(set(leaks))


def _files(root: Path) -> list[Path]:
    found: list[Path] = []
    if "\0" in str(root):
        return found
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if not path.is_symlink():
                found.append(path)
    return found


# --------------------------------------------------------------------------- secret homes


def homes_of(config: Any, env: dict[str, str] | None = None) -> list[Path]:
    """Where a loaded config keeps secrets by design: store, credstore bases, VM runtime dirs."""
    from credbridge.core.engine import Session

    global _internal_session
    environ = os.environ if env is None else env
    homes: list[Path] = []
    store = config.store_settings.get("path") or environ.get("CREDBRIDGE_STORE")
    if isinstance(store, str):
        homes.append(config.directory / os.path.expanduser(store))
    _internal_session = True
    try:
        session = Session(config)
    finally:
        _internal_session = False
    with session:
        for target in config.targets.values():
            with contextlib.suppress(Exception):
                sink = session.sink(target)
                base = getattr(sink, "base", None)
                if isinstance(base, Path):
                    homes.append(base)
            runtime = target.launcher_settings.get("runtime_dir")
            if isinstance(runtime, str):
                homes.append(config.directory / runtime)
            elif target.kind == "vm":
                homes.append(Path(environ.get("RUNTIME_DIRECTORY", "/run/credbridge")))
    return homes


def config_of_cli(args: tuple[str, ...], env: dict[str, str], cwd: Path | None) -> Path:
    """The config a ``credbridge`` argv would read (``-c``, ``$CREDBRIDGE_CONFIG``, ./)."""
    for index, arg in enumerate(args):
        if arg in {"-c", "--config"} and index + 1 < len(args):
            return Path(cwd or ".", args[index + 1])
        if arg.startswith("--config="):
            return Path(cwd or ".", arg.split("=", 1)[1])
    if env.get("CREDBRIDGE_CONFIG"):
        return Path(cwd or ".", env["CREDBRIDGE_CONFIG"])
    return Path(cwd or ".", "credbridge.toml")


def command_of_cli(args: tuple[str, ...]) -> str:
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in {"-c", "--config"}:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return ""


def run_cli_watched(
    argv: list[str],
    args: tuple[str, ...],
    *,
    env: dict[str, str],
    cwd: Path | None,
    input: bytes | None,
    timeout: float,
) -> subprocess.CompletedProcess[bytes]:
    """Run a credbridge child and feed everything it shows to the current canary."""
    canary = current()
    started = time.time_ns()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if input is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            stdout, stderr = proc.communicate(input, timeout=0.05)
            break
        except subprocess.TimeoutExpired:
            if canary is not None:
                canary.observe_process(proc.pid, "the credbridge child", environ=False)
                from support.proc import descendants

                for child in descendants(proc.pid):
                    canary.observe_process(child, f"credbridge's child {child}")
            if time.monotonic() > deadline:
                proc.kill()
                proc.communicate()
                raise
    result = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    if canary is not None:
        command = command_of_cli(args)
        config = config_of_cli(args, env, cwd)
        canary.observe(f"argv of credbridge {command}", "\0".join(args))
        if command == "get" and proc.returncode == 0:
            if _public_reference(args, config):
                canary.declare_public(stdout)  # a public part (#public, #cert): shown by design
            else:
                canary.register(stdout)  # the value itself: stdout is where `get` puts it
        else:
            canary.observe(f"stdout of credbridge {command}", stdout)
        canary.observe(f"stderr of credbridge {command}", stderr)
        with contextlib.suppress(Exception):
            from credbridge.core.config import load_config

            for home in homes_of(load_config(config), env):
                canary.allow(home)
        if env.get("CREDBRIDGE_STORE"):  # the store of a run without a config file
            canary.allow(Path(cwd or ".", os.path.expanduser(env["CREDBRIDGE_STORE"])))
        canary.harvest()
        canary.scan_new_files(started, [config.parent] + ([cwd] if cwd else []))
    return result


def _public_reference(args: tuple[str, ...], config: Path) -> bool:
    """Whether ``credbridge get REF`` names a public part, by credbridge's own rule."""
    from credbridge.core.config import load_config
    from credbridge.core.engine import Session

    words = [a for a in args if not a.startswith("-")]
    if "get" not in words or words.index("get") + 1 >= len(words):
        return False
    reference = words[words.index("get") + 1]
    global _internal_session
    _internal_session = True
    try:
        loaded = None
        with contextlib.suppress(Exception):
            loaded = load_config(config)
        with contextlib.suppress(Exception), Session(loaded) as session:
            return session.is_public(reference)
        return False
    finally:
        _internal_session = False


# --------------------------------------------------------------------------- the fixture


class _RecordingHandler(logging.Handler):
    def __init__(self, canary: Canary) -> None:
        super().__init__(logging.DEBUG)
        self.canary = canary
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.canary.observe(f"log record of {record.name}", self.format(record))


def _called_from_credbridge() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(CREDBRIDGE_CODE):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


_CALL_SECTIONS = pytest.StashKey[list[tuple[str, str]]]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if call.when == "call":
        sections = list(report.sections)
        if call.excinfo is not None:
            sections.append(("exception that failed the test", str(call.excinfo.value)))
        item.stash[_CALL_SECTIONS] = sections


@pytest.fixture(autouse=True)
def canary(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Canary]:
    """The running test's canary: ``canary.register(value)`` declares more secrets."""
    global _current
    from credbridge.core.engine import Session
    from credbridge.core.errors import CredbridgeError
    from credbridge.core.secret import Secret

    watcher = Canary()
    for name in ("tmp_path", "tmpfs_dir"):
        if name in request.fixturenames:
            watcher.watch(request.getfixturevalue(name))

    secret_init = Secret.__init__

    def registering_init(self: Secret, value: Any, **kw: Any) -> None:
        secret_init(self, value, **kw)
        watcher.register(bytes(value))

    error_init = CredbridgeError.__init__

    def observing_error_init(self: CredbridgeError, message: str, *args: Any, **kw: Any) -> None:
        error_init(self, message, *args, **kw)
        watcher.observe(f"message of {type(self).__name__}", message)

    popen_init = subprocess.Popen.__init__

    def observing_popen_init(self: subprocess.Popen[Any], args: Any, *rest: Any, **kw: Any) -> None:
        if _called_from_credbridge():
            argv = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
            watcher.observe(
                "argv of a child of credbridge", b"\0".join(os.fsencode(a) for a in argv)
            )
            env = kw.get("env")
            environ = os.environ if env is None else env
            watcher.observe(
                "environ of a child of credbridge",
                b"\0".join(os.fsencode(f"{k}={v}") for k, v in environ.items()),
            )
        popen_init(self, args, *rest, **kw)

    session_init, session_close = Session.__init__, Session.close

    def bracketing_session_init(self: Session, *args: Any, **kw: Any) -> None:
        session_init(self, *args, **kw)
        if not _internal_session:
            self._canary_started = time.time_ns()  # type: ignore[attr-defined]

    def bracketing_session_close(self: Session) -> None:
        session_close(self)
        started = getattr(self, "_canary_started", None)
        if started is None or not watcher.bracket_sessions:
            return
        with contextlib.suppress(Exception):
            for home in homes_of(self.config):
                watcher.allow(home)
        watcher.harvest()
        watcher.scan_new_files(started, [self.config.directory])

    readouterr = pytest.CaptureFixture.readouterr

    def observing_readouterr(self: pytest.CaptureFixture[Any]) -> Any:
        captured = readouterr(self)
        watcher.observe("captured stdout", captured.out)
        watcher.observe("captured stderr", captured.err)
        return captured

    monkeypatch.setattr(Secret, "__init__", registering_init)
    monkeypatch.setattr(CredbridgeError, "__init__", observing_error_init)
    monkeypatch.setattr(subprocess.Popen, "__init__", observing_popen_init)
    monkeypatch.setattr(Session, "__init__", bracketing_session_init)
    monkeypatch.setattr(Session, "close", bracketing_session_close)
    monkeypatch.setattr(pytest.CaptureFixture, "readouterr", observing_readouterr)

    root = logging.getLogger()
    handler = _RecordingHandler(watcher)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    _current = watcher
    try:
        yield watcher
    finally:
        _current = None
        root.removeHandler(handler)
        root.setLevel(level)
    for title, content in request.node.stash.get(_CALL_SECTIONS, []):
        watcher.observe(title, content)
    watcher.harvest()
    if os.environ.get("CREDBRIDGE_CANARY_STATS"):  # how much each test registered and scanned
        print(
            f"\ncanary: {len(watcher.values)} value(s), {len(watcher.observed)} place(s) scanned,"
            f" {len(watcher.homes)} secret home(s)"
        )
    leaks = watcher.check()
    if leaks:
        pytest.fail("canary: a registered secret leaked: " + "; ".join(leaks), pytrace=False)
