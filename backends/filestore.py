"""The built-in ``file`` store: generated values as 0400 files in a 0700 directory tree.

Layout: ``ROOT/KEY/current`` and ``ROOT/KEY/previous`` where KEY is ``TARGET/CREDENTIAL``
(or the ``?id=`` of the reference). Writes are atomic and durable (temp file, fsync, rename,
fsync of every directory that gained an entry up to the root), serialised by ``ROOT/.lock``, so
two runs never generate two values for one key. ``ROOT/.credbridge.lock`` is the run lock that
``deliver``, ``rotate`` and ``launch`` hold while they use the store; under it the temp files of
a crashed run (``.current.*.tmp``) are removed (``ROOT/.swept`` marks a store known to hold
none). Every directory on the way is checked and no symlink is followed
(:mod:`credbridge.core.fsutil`): the root once per run, walked from ``/``, then held open with
the directories above the key directories, so each value is reached relative to them.

With ``seal`` set (:class:`SealedFileStore`) each value is kept as ``current.cred`` and
``previous.cred`` instead: the output of ``systemd-creds encrypt --with-key=SEAL``, fed and read
through pipes only, so the plaintext never reaches a file. A store without ``seal`` refuses a
key that holds a sealed value rather than generating a new one beside it.

Longer than most modules because the sealed store is the plain one with only its value reads
and writes replaced (``_load_at``/``_save_at``): kept in one file so the two share every step of
the held-directory walk, the locks and the crash sweep, and cannot drift apart.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

from credbridge.backends.hooks.filestore import SETTINGS, STORE_PATH
from credbridge.backends.systemd_creds import check_pcrs_key, key_problem, read_key, read_pcrs
from credbridge.core import ConfigError, Secret, Store, StoreContext
from credbridge.core.config import DEFAULT_STORE
from credbridge.core.fsutil import (
    LOCK_NAME,
    atomic_write_at,
    ensure_private_dir,
    hold_lock,
    is_temp_name,
    open_dir,
    open_dir_at,
    open_entry_below,
    open_lock_file,
    opened_dir,
    read_file_at,
    read_open_file,
    remove_at,
)

log = logging.getLogger(__name__)
_SEGMENT = re.compile(r"[A-Za-z0-9_.@:\\-]{1,255}")
WRITE_LOCK = ".lock"
SWEPT_MARK = ".swept"
"""Present while the store holds no temp file of a crashed run (see FileStore.recover)."""
SEALED_SUFFIX = ".cred"
"""What a sealed value's file name adds to ``current``/``previous``."""
SYSTEMD_CREDS_TIMEOUT = 60.0
"""Seconds one ``systemd-creds`` call may take (a TPM2 can be slow; values are small)."""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_MODE = 0o700
_MAX_HELD = 64
"""At most this many directories of key directories are held open at once."""


class SealedValueUnreadable(PermissionError):
    """A sealed value that cannot be read here: another machine's key or TPM2, or a store
    without ``seal``. Never a reason to generate a new value (sources report it as forbidden,
    naming the store key)."""

    def __init__(self, reason: str) -> None:
        super().__init__(errno.EACCES, reason)


def _slot(previous: bool) -> str:
    return "previous" if previous else "current"


def _present_at(dir_fd: int, name: str) -> bool:
    """Whether ``name`` exists in ``dir_fd`` (a symlink counts: it is refused when read)."""
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


class _Handle:
    """A directory fd opened and checked once, and the identity it had then."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        info = os.fstat(fd)
        self.identity = (info.st_dev, info.st_ino)

    def names(self, info: os.stat_result) -> bool:
        return (info.st_dev, info.st_ino) == self.identity


class FileStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_text = os.path.abspath(root)
        # flock excludes other processes and other FileStore objects (each opens the lock
        # file anew: flock locks belong to the open file); this object's threads, which share
        # its lock file, are excluded here.
        self._thread_lock = threading.Lock()
        # The root (walked from / and checked once) and the directories holding the key
        # directories (usually one per target), held for the run: every access opens entries
        # relative to them instead of walking from / again. Each is looked up by name again
        # (one lstat) before use, so a store removed or replaced meanwhile is walked anew.
        self._handles_guard = threading.Lock()
        self._root_handle: _Handle | None = None
        self._root_ensured = False
        self._parents: dict[tuple[str, ...], _Handle] = {}
        self._write_lock: tuple[_Handle, int] | None = None
        """The write lock file's fd (held for the run) and the root it was opened in."""
        self._run_lock_fd: int | None = None
        """The write lock's fd while :meth:`held_for_run` holds it (writers skip the flock)."""
        self._held_fds: list[int] = []
        weakref.finalize(self, _close_all, self._held_fds)

    def _dir(self, key: str) -> Path:
        return self.root.joinpath(*self._parts(key))

    @staticmethod
    def _parts(key: str) -> tuple[str, ...]:
        parts = tuple(key.split("/"))
        if not all(_SEGMENT.fullmatch(p) and p not in {".", ".."} for p in parts):
            msg = f"invalid store key {key!r}"
            raise ValueError(msg)
        return parts

    def _path(self, key: str, name: str) -> str:
        """Where ``name`` of ``key`` is, for messages (strings: this runs once per value)."""
        return f"{self._root_text}/{key}/{name}"

    def _hold(self, fd: int) -> _Handle:
        self._held_fds.append(fd)
        return _Handle(fd)

    def _release(self, fd: int) -> None:
        self._held_fds.remove(fd)
        os.close(fd)

    def _forget(self) -> None:
        # The write lock's fd stays: a writer may hold it; _writing replaces it.
        for handle in (self._root_handle, *self._parents.values()):
            if handle is not None:
                self._release(handle.fd)
        self._root_handle = None
        self._root_ensured = False
        self._parents.clear()

    def _root_fd(self, *, create: bool) -> int:
        """The store root's fd, walked from / and checked (created 0700 with ``create``) once.

        Raises ``FileNotFoundError`` without ``create`` when there is no store yet."""
        handle = self._root_handle
        if handle is not None:
            try:
                current = os.lstat(self._root_text)
            except FileNotFoundError:
                current = None
            if current is None or not handle.names(current):
                self._forget()
                handle = None
        if handle is not None and (self._root_ensured or not create):
            return handle.fd
        if create:
            ensure_private_dir(self.root)
        fd = open_dir(self.root)
        if handle is not None:
            os.close(fd)
        else:
            handle = self._root_handle = self._hold(fd)
        self._root_ensured = self._root_ensured or create
        return handle.fd

    def _parent(self, parts: tuple[str, ...], *, create: bool) -> tuple[int, str, bool]:
        """The directory holding key directory ``parts[-1]``: its fd, its path and whether the
        caller must close it (the others are held). Call with ``_handles_guard`` held."""
        root = self._root_fd(create=create)
        if len(parts) == 1:
            return root, self._root_text, False
        above = parts[:-1]
        path = os.path.join(self._root_text, *above)
        held = self._parents.get(above)
        if held is not None:
            try:
                info: os.stat_result | None = os.stat(
                    os.path.join(*above), dir_fd=root, follow_symlinks=False
                )
            except FileNotFoundError:
                info = None
            if info is not None and held.names(info):
                return held.fd, path, False
            del self._parents[above]
            self._release(held.fd)
        fd = open_dir_at(root, self._root_text, above, create=create)
        if len(self._parents) >= _MAX_HELD:
            return fd, path, True
        self._parents[above] = self._hold(fd)
        return fd, path, False

    def _key_dir(self, key: str, *, create: bool) -> int:
        """A new fd of the directory of ``key`` (close it), every component checked as
        :func:`open_dir` checks it; ``FileNotFoundError`` when it is missing (without
        ``create``)."""
        parts = self._parts(key)
        with self._handles_guard:
            parent, parent_path, owned = self._parent(parts, create=create)
            try:
                fd = open_dir_at(parent, parent_path, parts[-1:], create=create)
            finally:
                if owned:
                    os.close(parent)
        if create and stat.S_IMODE(os.fstat(fd).st_mode) != _DIR_MODE:
            # As ensure_private_dir: an existing key directory that was safe is made private.
            os.fchmod(fd, _DIR_MODE)
        return fd

    def _open_value(self, key: str, name: str) -> int | None:
        """An fd of the file ``name`` of ``key``'s directory, in one open (close it); ``None``
        when there is no such file, or when it takes the walk of :meth:`_key_dir` (to refuse
        what it refuses with its messages)."""
        parts = self._parts(key)
        with self._handles_guard:
            parent, parent_path, owned = self._parent(parts, create=False)
            try:
                return open_entry_below(parent, parent_path, parts[-1], name)
            finally:
                if owned:
                    os.close(parent)

    def _write_lock_fd(self) -> tuple[_Handle, int]:
        """The store root (created) and its write lock file's fd, both held for the run."""
        with self._handles_guard:
            self._root_fd(create=True)
            root = self._root_handle
            assert root is not None
            if self._write_lock is not None and self._write_lock[0] is not root:
                # The store was replaced meanwhile; a lock held for the run is closed when
                # the run ends (held_for_run), any other now.
                if self._write_lock[1] != self._run_lock_fd:
                    self._release(self._write_lock[1])
                self._write_lock = None
            if self._write_lock is None:
                fd = open_lock_file(root.fd, WRITE_LOCK, self.root / WRITE_LOCK)
                self._held_fds.append(fd)
                self._write_lock = (root, fd)
            return self._write_lock

    @contextlib.contextmanager
    def held_for_run(self) -> Iterator[None]:
        """Hold the write lock from here to the end of the run, so that a run writing many
        values takes it once (the engine enters this right after the store's run lock).

        Writers of other processes (``credbridge get generate:...?id=``) wait for the run."""
        with self._thread_lock:
            _root, lock_fd = self._write_lock_fd()
        with hold_lock(lock_fd, self.root / WRITE_LOCK):
            self._run_lock_fd = lock_fd
            try:
                yield
            finally:
                with self._thread_lock:
                    self._run_lock_fd = None
        with self._thread_lock, self._handles_guard:
            if self._write_lock is None or self._write_lock[1] != lock_fd:
                self._release(lock_fd)  # the store it locked was replaced during the run

    @contextlib.contextmanager
    def _writing(self) -> Iterator[int]:
        """Hold the write lock (unless held for the run); yields the root's fd (held)."""
        with self._thread_lock:
            root, lock_fd = self._write_lock_fd()
            if lock_fd == self._run_lock_fd:
                yield root.fd
                return
            with hold_lock(lock_fd, self.root / WRITE_LOCK):
                yield root.fd

    def _about_to_write_temp_files(self, root_fd: int) -> None:
        """Under the write lock: the store is no longer known to be free of temp files."""
        try:
            os.unlink(SWEPT_MARK, dir_fd=root_fd)
        except FileNotFoundError:
            return
        os.fsync(root_fd)  # durable before a temp file can exist

    def read(self, key: str, *, previous: bool = False) -> Secret | None:
        return self._read(key, _slot(previous))

    def _read(self, key: str, slot: str) -> Secret | None:
        try:
            fd = self._open_value(key, slot)
        except FileNotFoundError:
            return None
        if fd is not None:
            return Secret(read_open_file(fd, self._path(key, slot)))
        return self._read_walked(key, slot)

    def _read_walked(self, key: str, slot: str) -> Secret | None:
        """:meth:`_load_at` through the checked walk of :meth:`_key_dir`."""
        try:
            dir_fd = self._key_dir(key, create=False)
        except FileNotFoundError:
            return None
        try:
            return self._load_at(dir_fd, key, slot)
        finally:
            os.close(dir_fd)

    def _load_at(self, dir_fd: int, key: str, slot: str) -> Secret | None:
        value = _read_at(dir_fd, slot, self._path(key, slot))
        if value is None and _present_at(dir_fd, f"{slot}{SEALED_SUFFIX}"):
            # Switched from a sealed store back to a plain one: generating a new value here
            # would silently replace the sealed one.
            raise SealedValueUnreadable(
                f"{slot}{SEALED_SUFFIX} is sealed with systemd-creds, and [store] has no seal; "
                "set seal as it was to read it"
            )
        return value

    def _save_at(self, dir_fd: int, slot: str, value: Secret) -> None:
        atomic_write_at(dir_fd, slot, value.reveal())

    def create(self, key: str, value: Secret) -> Secret:
        dir_fd = self._key_dir(key, create=True)
        try:
            with self._writing() as root_fd:
                existing = self._load_at(dir_fd, key, "current")
                if existing is not None:
                    return existing
                self._about_to_write_temp_files(root_fd)
                self._save_at(dir_fd, "current", value)
        finally:
            os.close(dir_fd)
        return value

    def rotate(self, key: str, value: Secret) -> None:
        dir_fd = self._key_dir(key, create=True)
        try:
            with self._writing() as root_fd:
                old = self._load_at(dir_fd, key, "current")
                self._about_to_write_temp_files(root_fd)
                if old is not None:
                    # previous first: a crash in between leaves current == previous, never a loss.
                    self._save_at(dir_fd, "previous", old)
                    old.wipe()
                self._save_at(dir_fd, "current", value)
        finally:
            os.close(dir_fd)

    def lock_file(self) -> Path:
        ensure_private_dir(self.root)
        return self.root / LOCK_NAME

    def recover(self) -> None:
        """Remove temp files a killed run left (a full value each) anywhere in the store.

        Every writer removes ``ROOT/.swept`` (durably) before it makes a temp file, and the
        sweep puts it back: a store that has it holds no temp file, and is not walked."""
        with self._writing() as root_fd:
            with contextlib.suppress(FileNotFoundError):
                os.stat(SWEPT_MARK, dir_fd=root_fd, follow_symlinks=False)
                return
            with opened_dir(self.root) as root:
                _sweep(root)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(SWEPT_MARK, flags, 0o600, dir_fd=root_fd))
            os.fsync(root_fd)

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

    def _read(self, key: str, slot: str) -> Secret | None:
        name = f"{slot}{SEALED_SUFFIX}"
        try:
            fd = self._open_value(key, name)
        except FileNotFoundError:
            return None
        if fd is not None:
            return self._decrypt(read_open_file(fd, self._path(key, name)), name)
        return self._read_walked(key, slot)

    def _load_at(self, dir_fd: int, key: str, slot: str) -> Secret | None:
        name = f"{slot}{SEALED_SUFFIX}"
        try:
            sealed = read_file_at(dir_fd, name, self._path(key, name))
        except FileNotFoundError:
            return _read_at(dir_fd, slot, self._path(key, slot))
        return self._decrypt(sealed, name)

    def _save_at(self, dir_fd: int, slot: str, value: Secret) -> None:
        self._put_at(dir_fd, slot, self._encrypt(value))

    def _put_at(self, dir_fd: int, slot: str, sealed: bytes) -> None:
        """Write a sealed value, then remove the plaintext it replaces (if one was left)."""
        atomic_write_at(dir_fd, f"{slot}{SEALED_SUFFIX}", sealed)
        _drop_plaintext_at(dir_fd, slot)

    def rotate(self, key: str, value: Secret) -> None:
        sealed = self._encrypt(value)
        dir_fd = self._key_dir(key, create=True)
        try:
            with self._writing() as root_fd:
                self._about_to_write_temp_files(root_fd)
                old: bytes | None
                name = f"current{SEALED_SUFFIX}"
                try:
                    old = read_file_at(dir_fd, name, self._path(key, name))
                except FileNotFoundError:
                    plain = _read_at(dir_fd, "current", self._path(key, "current"))
                    old = None if plain is None else self._encrypt(plain)
                if old is not None:
                    # previous first: a crash in between leaves current == previous, never a loss.
                    self._put_at(dir_fd, "previous", old)
                self._put_at(dir_fd, "current", sealed)
        finally:
            os.close(dir_fd)

    def recover(self) -> None:
        """Remove temp files a killed run left, and seal plaintext values left from before
        ``seal`` was set (or by a crash between sealing a value and removing its plaintext)."""
        super().recover()
        if not self.root.is_dir():
            return
        with self._writing() as root_fd:
            sealed = 0
            for dirpath, _dirs, files in os.walk(self.root):
                slots = [slot for slot in ("previous", "current") if slot in files]
                if not slots:
                    continue
                with opened_dir(Path(dirpath)) as dir_fd:
                    for slot in slots:
                        if f"{slot}{SEALED_SUFFIX}" in files:
                            # A crash came between sealing it and removing the plaintext.
                            _drop_plaintext_at(dir_fd, slot)
                            continue
                        plain = Secret(read_file_at(dir_fd, slot, f"{dirpath}/{slot}"))
                        try:
                            self._about_to_write_temp_files(root_fd)
                            self._save_at(dir_fd, slot, plain)
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

    def _decrypt(self, sealed: bytes, name: str) -> Secret:
        code, out, err = self._run("decrypt", [], sealed)
        if code != 0:
            reason = _last_line(err) or f"exit {code}"
            raise SealedValueUnreadable(
                f"{name} cannot be decrypted on this machine (systemd-creds decrypt: "
                f"{reason}); it was sealed by another machine's host key or TPM2, or under "
                "other PCR values, and no new value is generated in its place"
            )
        return Secret(out)


def _drop_plaintext_at(dir_fd: int, slot: str) -> None:
    """Remove the plaintext ``slot`` once its sealed copy is durable (nothing if none is left)."""
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
    file = context.config_file or None
    root: Path | None = settings["path"]
    if root is None:
        raw = os.environ.get("CREDBRIDGE_STORE", DEFAULT_STORE)
        root = STORE_PATH.parse(raw, base=context.config_dir, file=None, key="CREDBRIDGE_STORE")
    seal = read_key(settings["seal"], true_is_host=False, file=file, key=f"{context.where}.seal")
    pcrs_key = f"{context.where}.tpm2_pcrs"
    pcrs = read_pcrs(settings["tpm2_pcrs"], file=file, key=pcrs_key)
    if seal is None:
        if pcrs is not None:
            raise ConfigError("binds a sealed store to PCRs; set seal too", file=file, key=pcrs_key)
        return FileStore(root)
    check_pcrs_key(pcrs, seal, naming=f'seal = "{seal}"', setting="seal", file=file, key=pcrs_key)
    return _sealed_store(root, seal, pcrs, context.where)


def _sealed_store(root: Path, seal: str, tpm2_pcrs: str | None, where: str) -> SealedFileStore:
    """A sealed store, refused in one line where this machine's systemd cannot seal as asked."""
    import shutil

    from credbridge.core import DeliveryError

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


def _read_at(dir_fd: int, name: str, path: str) -> Secret | None:
    try:
        return Secret(read_file_at(dir_fd, name, path))
    except FileNotFoundError:
        return None


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


def _sweep(dir_fd: int) -> None:
    removed = False
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
            removed = True
    if removed:
        os.fsync(dir_fd)  # gone for good before the store is marked swept
