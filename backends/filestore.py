"""The built-in ``file`` store: generated values as 0400 files in a 0700 directory tree.

Layout: ``ROOT/KEY/current`` and ``ROOT/KEY/previous`` where KEY is ``TARGET/CREDENTIAL``
(or the ``?id=`` of the reference). Writes are atomic and durable (temp file, fsync, rename,
fsync of every directory that gained an entry up to the root), serialised by ``ROOT/.lock``, so
two runs never generate two values for one key. ``ROOT/.credbridge.lock`` is the run lock that
``deliver``, ``rotate`` and ``launch`` hold while they use the store; under it the temp files of
a crashed run (``.current.*.tmp``) are removed. Every directory on the way is checked and no
symlink is followed (:mod:`credbridge.core.fsutil`).

With ``seal`` set (:class:`SealedFileStore`) each value is kept as ``current.cred`` and
``previous.cred`` instead: the output of ``systemd-creds encrypt --with-key=SEAL``, fed and read
through pipes only, so the plaintext never reaches a file. A store without ``seal`` refuses a
key that holds a sealed value rather than generating a new one beside it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from credbridge.backends.hooks.filestore import SETTINGS
from credbridge.core import ConfigError, Secret, Store, StoreContext
from credbridge.core.config import DEFAULT_STORE
from credbridge.core.fsutil import (
    LOCK_NAME,
    atomic_write,
    ensure_private_dir,
    is_temp_name,
    locked,
    opened_dir,
    read_private_file,
    remove_at,
)
from credbridge.core.settings import control_problem, path_setting

log = logging.getLogger(__name__)
_SEGMENT = re.compile(r"[A-Za-z0-9_.@:\\-]{1,255}")
WRITE_LOCK = ".lock"
SEALED_SUFFIX = ".cred"
"""What a sealed value's file name adds to ``current``/``previous``."""
SEAL_KEYS = ("host", "tpm2", "host+tpm2", "auto")
"""``seal`` values: the keys of ``systemd-creds --with-key=`` (as the credstore's ``encrypt``)."""
SYSTEMD_CREDS_TIMEOUT = 60.0
"""Seconds one ``systemd-creds`` call may take (a TPM2 can be slow; values are small)."""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


class SealedValueUnreadable(PermissionError):
    """A sealed value that cannot be read here: another machine's key or TPM2, or a store
    without ``seal``. Never a reason to generate a new value (sources report it as forbidden,
    naming the store key)."""

    def __init__(self, reason: str) -> None:
        super().__init__(errno.EACCES, reason)


def _slot(previous: bool) -> str:
    return "previous" if previous else "current"


def _present(path: Path) -> bool:
    """Whether ``path`` exists (a symlink counts: it is refused when read, never followed)."""
    try:
        with opened_dir(path.parent) as dir_fd:
            os.lstat(path.name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


class FileStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = root
        # flock excludes other processes; threads of this one are excluded here.
        with _thread_locks_guard:
            self._thread_lock = _thread_locks.setdefault(os.path.abspath(root), threading.Lock())

    def _dir(self, key: str) -> Path:
        parts = key.split("/")
        if not all(_SEGMENT.fullmatch(p) and p not in {".", ".."} for p in parts):
            msg = f"invalid store key {key!r}"
            raise ValueError(msg)
        return self.root.joinpath(*parts)

    def _ensure(self, directory: Path) -> None:
        # Missing directories are created 0700 and their parents fsynced, up to the root.
        ensure_private_dir(self.root)
        ensure_private_dir(directory)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        with self._thread_lock, locked(self.root / WRITE_LOCK):
            yield

    def read(self, key: str, *, previous: bool = False) -> Secret | None:
        return self._load(self._dir(key), _slot(previous))

    def _load(self, directory: Path, slot: str) -> Secret | None:
        try:
            return Secret(read_private_file(directory / slot))
        except FileNotFoundError:
            pass
        if _present(directory / f"{slot}{SEALED_SUFFIX}"):
            # Switched from a sealed store back to a plain one: generating a new value here
            # would silently replace the sealed one.
            raise SealedValueUnreadable(
                f"{slot}{SEALED_SUFFIX} is sealed with systemd-creds, and [store] has no seal; "
                "set seal as it was to read it"
            )
        return None

    def _save(self, directory: Path, slot: str, value: Secret) -> None:
        atomic_write(directory / slot, value.reveal())

    def create(self, key: str, value: Secret) -> Secret:
        directory = self._dir(key)
        self._ensure(directory)
        with self._writing():
            existing = self.read(key)
            if existing is not None:
                return existing
            self._save(directory, "current", value)
        return value

    def rotate(self, key: str, value: Secret) -> None:
        directory = self._dir(key)
        self._ensure(directory)
        with self._writing():
            old = self.read(key)
            if old is not None:
                # previous first: a crash in between leaves current == previous, never a loss.
                self._save(directory, "previous", old)
                old.wipe()
            self._save(directory, "current", value)

    def lock_file(self) -> Path:
        ensure_private_dir(self.root)
        return self.root / LOCK_NAME

    def recover(self) -> None:
        """Remove temp files a killed run left (a full value each) anywhere in the store."""
        with self._writing(), opened_dir(self.root) as root:
            _sweep(root)

    def keys(self) -> list[str]:
        found: list[str] = []
        if not self.root.is_dir():
            return found
        for dirpath, _dirs, files in os.walk(self.root):
            if "current" in files or f"current{SEALED_SUFFIX}" in files:
                found.append(str(Path(dirpath).relative_to(self.root)))
        return sorted(found)

    def location(self) -> str:
        return str(self.root)


class SealedFileStore(FileStore):
    """The file store with every value sealed by ``systemd-creds encrypt --with-key=SEAL``.

    Values go to ``systemd-creds`` on stdin and come back on stdout (never in argv, the
    environment or a file); only ciphertext is written, with the file store's atomic writes
    and locks. ``--name=`` is empty: a value is not tied to its file name, so ``rotate`` copies
    the current ciphertext to ``previous.cred`` as it is, without decrypting it. A plaintext
    value from before ``seal`` was set is still that key's value (read, never replaced) and is
    sealed by :meth:`recover`, the next time a run locks the store.
    """

    def __init__(self, root: Path, seal: str, tpm2_pcrs: str | None, binary: str) -> None:
        super().__init__(root)
        self.seal = seal
        self.tpm2_pcrs = tpm2_pcrs
        self.binary = binary

    def _load(self, directory: Path, slot: str) -> Secret | None:
        path = directory / f"{slot}{SEALED_SUFFIX}"
        try:
            sealed = read_private_file(path)
        except FileNotFoundError:
            try:
                return Secret(read_private_file(directory / slot))
            except FileNotFoundError:
                return None
        return self._decrypt(sealed, path)

    def _save(self, directory: Path, slot: str, value: Secret) -> None:
        self._put(directory, slot, self._encrypt(value))

    def _put(self, directory: Path, slot: str, sealed: bytes) -> None:
        """Write a sealed value, then remove the plaintext it replaces (if one was left)."""
        atomic_write(directory / f"{slot}{SEALED_SUFFIX}", sealed)
        _drop_plaintext(directory, slot)

    def rotate(self, key: str, value: Secret) -> None:
        directory = self._dir(key)
        self._ensure(directory)
        sealed = self._encrypt(value)
        with self._writing():
            old: bytes | None
            try:
                old = read_private_file(directory / f"current{SEALED_SUFFIX}")
            except FileNotFoundError:
                plain = self._load(directory, "current")
                old = None if plain is None else self._encrypt(plain)
            if old is not None:
                # previous first: a crash in between leaves current == previous, never a loss.
                self._put(directory, "previous", old)
            self._put(directory, "current", sealed)

    def recover(self) -> None:
        """Remove temp files a killed run left, and seal plaintext values left from before
        ``seal`` was set (or by a crash between sealing a value and removing its plaintext)."""
        super().recover()
        if not self.root.is_dir():
            return
        with self._writing():
            sealed = 0
            for dirpath, _dirs, files in os.walk(self.root):
                directory = Path(dirpath)
                for slot in ("previous", "current"):
                    if slot not in files:
                        continue
                    if f"{slot}{SEALED_SUFFIX}" in files:
                        # A crash came between sealing it and removing the plaintext.
                        _drop_plaintext(directory, slot)
                        continue
                    plain = Secret(read_private_file(directory / slot))
                    try:
                        self._save(directory, slot, plain)
                    finally:
                        plain.wipe()
                    sealed += 1
            if sealed:
                log.info(
                    "%s: sealed %d plaintext value(s) kept from before seal", self.root, sealed
                )

    # ------------------------------------------------------------------ systemd-creds

    def _run(self, verb: str, options: list[str], data: bytes) -> tuple[int, bytes, bytes]:
        import subprocess  # only a sealed store runs systemd-creds

        from credbridge.core.process import OutputTooLarge, child_env, communicate

        argv = [self.binary, verb, "--name=", *options, "-", "-"]
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
        )
        try:
            out, err = communicate(process, data, timeout=SYSTEMD_CREDS_TIMEOUT)
        except (subprocess.TimeoutExpired, OutputTooLarge):
            process.kill()
            process.wait()
            raise TimeoutError(
                errno.ETIMEDOUT,
                f"systemd-creds {verb} gave no answer in {SYSTEMD_CREDS_TIMEOUT:g} s",
            ) from None
        except BaseException:
            process.kill()
            process.wait()
            raise
        return process.returncode, out, err

    def _encrypt(self, value: Secret) -> bytes:
        options = [f"--with-key={self.seal}"]
        if self.tpm2_pcrs is not None:
            options.append(f"--tpm2-pcrs={self.tpm2_pcrs}")
        code, out, err = self._run("encrypt", options, value.reveal())
        if code != 0 or not out:
            from credbridge.core.remote import Redactor

            # systemd-creds read the value: its message is shown only if it quotes none of it.
            redactor = Redactor(min_length=1)
            redactor.add(value)
            reason = redactor.detail(_last_line(err)) or "no message"
            raise OSError(errno.EIO, f"systemd-creds encrypt failed (exit {code}): {reason}")
        return out

    def _decrypt(self, sealed: bytes, path: Path) -> Secret:
        code, out, err = self._run("decrypt", [], sealed)
        if code != 0:
            reason = _last_line(err) or f"exit {code}"
            raise SealedValueUnreadable(
                f"{path.name} cannot be decrypted on this machine (systemd-creds decrypt: "
                f"{reason}); it was sealed by another machine's host key or TPM2, or under "
                "other PCR values, and no new value is generated in its place"
            )
        return Secret(out)


def _drop_plaintext(directory: Path, slot: str) -> None:
    """Remove the plaintext ``slot`` once its sealed copy is durable (nothing if none is left)."""
    with opened_dir(directory) as dir_fd:
        try:
            os.unlink(slot, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        os.fsync(dir_fd)


def _last_line(text: bytes) -> str:
    lines = text.decode("utf-8", "replace").strip().splitlines()
    return lines[-1].strip() if lines else ""


def open_store(context: StoreContext) -> Store:
    settings = context.read_settings(SETTINGS, name="file")
    root = settings["path"]
    if root is None:
        raw = os.environ.get("CREDBRIDGE_STORE", DEFAULT_STORE)
        root = path_setting(raw, base=context.config_dir, file=None, key="CREDBRIDGE_STORE")
    seal = context.settings.get("seal", False)
    pcrs = context.settings.get("tpm2_pcrs")
    file = context.config_file or None
    if seal is False:
        if pcrs is not None:
            raise ConfigError(
                "binds a sealed store to PCRs; set seal too",
                file=file,
                key=f"{context.where}.tpm2_pcrs",
            )
        return FileStore(root)
    if seal not in SEAL_KEYS:
        choices = ", ".join(f'"{k}"' for k in SEAL_KEYS)
        raise ConfigError(
            f"must be false or one of {choices}", file=file, key=f"{context.where}.seal"
        )
    if (
        isinstance(pcrs, bool)
        or not isinstance(pcrs, str | int | None)
        or (isinstance(pcrs, str) and control_problem(pcrs) is not None)
    ):
        raise ConfigError(
            'must be a string like "7" or "0+7"', file=file, key=f"{context.where}.tpm2_pcrs"
        )
    return _sealed_store(root, seal, None if pcrs is None else str(pcrs), context.where, file)


def _sealed_store(
    root: Path, seal: str, tpm2_pcrs: str | None, where: str, file: str | None
) -> SealedFileStore:
    """A sealed store, refused in one line where this machine's systemd cannot seal as asked."""
    import shutil

    from credbridge.backends.credstore import TPM2_KEYS, key_problem
    from credbridge.core import DeliveryError

    if tpm2_pcrs is not None and seal not in TPM2_KEYS:
        raise ConfigError(
            f'binds a TPM2 key; seal = "{seal}" does not use the TPM2 '
            '("tpm2", "host+tpm2" or "auto")',
            file=file,
            key=f"{where}.tpm2_pcrs",
        )
    binary = shutil.which("systemd-creds")
    if binary is None:
        raise DeliveryError(
            f'{where}: seal = "{seal}" needs systemd-creds (systemd 250 or later); '
            "it is not installed"
        )
    problem = key_problem(binary, seal, tpm2_pcrs, SYSTEMD_CREDS_TIMEOUT, setting="seal")
    if problem is not None:
        raise DeliveryError(f"{where}: {problem}")
    return SealedFileStore(root, seal, tpm2_pcrs, binary)


def _sweep(dir_fd: int) -> None:
    for name in os.listdir(dir_fd):
        info = os.lstat(name, dir_fd=dir_fd)
        if stat.S_ISDIR(info.st_mode):
            child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                _sweep(child)
            finally:
                os.close(child)
        elif stat.S_ISREG(info.st_mode) and is_temp_name(name):
            remove_at(dir_fd, name)
