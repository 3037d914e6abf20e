"""``sops:`` — values from sops-encrypted files; and the ``sops`` store of generated values.

Reference: ``sops:PATH[?type=yaml|json|dotenv|ini|binary][#/json/pointer | #key]``. The file
type comes from how the name ends, as sops decides it (``.yaml``/``.yml``, ``.json``,
``.env``, ``.ini``, case-sensitive, a file named ``.env`` included; anything else is binary);
``?type=`` is sops's ``--input-type``. Relative paths start at the config file's directory.

Each file is decrypted once per run, to JSON parsed here (a binary file to its bytes), no
matter how many keys are taken from it; different files are decrypted concurrently. Running
sops (finding the binary, its children's environment and keys, typed failures) is
backends/sops_cli.py, shared with ``clan-vars:``.

The store (``[store] type = "sops"``) keeps generated values in one sops-encrypted YAML or
JSON file: ``KEY: {current: VALUE, previous: VALUE}``. Settings and layout:
docs/sources/sops.md.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import re
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from credbridge.backends.hooks.sops import SOURCE_SETTINGS, STORE_SETTINGS
from credbridge.backends.sops_cli import (
    FILE_TYPES,
    SopsRunner,
    SopsSettings,
    file_type,
    setting_error,
)
from credbridge.core import (
    BadReference,
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
from credbridge.core.secret import JSONNumber, TooDeep
from credbridge.core.settings import expand_user
from credbridge.core.threads import map_in_threads

log = logging.getLogger(__name__)

CURRENT = "current"
PREVIOUS = "previous"
"""Store layout: ``KEY: {current: VALUE, previous: VALUE}`` (previous after a rotation)."""
BINARY_MARKER = "base64:"
"""A stored value that is not UTF-8 text (or starts with this marker) is kept as
``base64:`` followed by its standard base64 encoding."""

_STORE_KEY = re.compile(r'^[^"\[\]\x00-\x1f\x7f]{1,1024}$')
"""What a store key may hold: anything sops's ``["KEY"]`` index syntax carries unchanged."""


def _config_path(value: str, config_dir: Path) -> Path:
    """``value`` from the config dir, ``~`` expanded; :class:`ValueError` for an unknown user."""
    path = expand_user(value)
    return Path(os.path.abspath(path if path.is_absolute() else config_dir / path))


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
        # An interrupt (KeyboardInterrupt, the engine's Terminated) reaches the main thread
        # only: it ends the workers' sops runs, or the exit would wait for all of them.
        decrypted = map_in_threads(
            one,
            files,
            workers=workers,
            name="credbridge-sops",
            on_interrupt=self.runner.stop_running,
        )
        try:
            results = dict(zip(files, decrypted, strict=True))
        finally:
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
    values = context.read_settings(SOURCE_SETTINGS)
    settings = SopsSettings.read(
        values, fail=setting_error(context), forbidden_schemes=frozenset({"sops"})
    )
    workers = values["concurrency"] or min(context.concurrency, max(2, os.cpu_count() or 2))
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
    values = context.read_settings(STORE_SETTINGS, name="sops")
    fail = setting_error(context)
    settings = SopsSettings.read(
        values, fail=fail, forbidden_schemes=frozenset({"generate", "stored"})
    )
    if values["path"] is None:
        raise fail(
            "path",
            "the sops store needs path, the sops file to keep generated values in "
            '(e.g. path = "secrets/generated.yaml")',
        )
    path = Path(os.path.abspath(values["path"]))
    if file_type(str(path)) not in {"yaml", "json"}:
        raise fail("path", "the sops store file must end in .yaml, .yml or .json")
    recipients = values["age_recipients"]
    if not all(isinstance(r, str) and r.startswith("age1") for r in recipients):
        raise fail("age_recipients", "must be a list of age recipients (age1...)")
    return SopsStore(path, SopsRunner(settings, context.resolve), recipients)


# --------------------------------------------------------------------------- plugin
