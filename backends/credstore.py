"""``credstore`` — systemd credstore files and the unit's ``LoadCredential=`` drop-in.

Each unit target gets its own directory ``DIRECTORY/TARGET/`` holding one 0400 file per
credential. A delivery writes a complete new directory beside it and swaps the two with one
``renameat2(RENAME_EXCHANGE)``: readers see either the whole old set or the whole new one.
Runs serialise on ``DIRECTORY/.credbridge.lock``; under it, staging directories of a crashed
run (``.TARGET.staging-*``) are removed.
With ``encrypt`` set each value goes through ``systemd-creds encrypt --name=NAME
--with-key=KEY`` (value on stdin, never in argv) and the drop-in uses
``LoadCredentialEncrypted=``. ``encrypt`` names the key as ``--with-key=`` does (``"host"``,
``"tpm2"``, ``"host+tpm2"``, ``"auto"``; ``true`` is ``"host"``); a key the machine's
systemd-creds is too old for is refused before anything is resolved.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from credbridge.backends.hooks.credstore import SETTINGS
from credbridge.backends.systemd_creds import (
    check_pcrs_key,
    key_problem,
    read_key,
    read_pcrs,
)
from credbridge.core import (
    Change,
    ConfigError,
    Delivery,
    DeliveryError,
    Pending,
    PlanEntry,
    Secret,
    Sink,
    SinkContext,
    Staged,
)
from credbridge.core.config import credential_name_problem
from credbridge.core.faults import point
from credbridge.core.fsutil import (
    LOCK_NAME,
    check_path,
    ensure_private_dir,
    exchange_at,
    is_memory_backed,
    open_dir,
    opened_dir,
    read_file_at,
    remove_at,
    resolve_owner,
    symlink_error,
    write_new_file_at,
)
from credbridge.core.process import child_env
from credbridge.core.settings import account_setting, control_problem
from credbridge.core.vm import check_size, check_unit_total

log = logging.getLogger(__name__)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_STAGED_HERE: set[str] = set()
"""Staging directories this process made and has not committed or removed yet."""

DEFAULT_DIRECTORY = "/run/credstore"
DEFAULT_ENCRYPTED_DIRECTORY = "/etc/credstore.encrypted"


def unit_path_value(path: Path) -> str:
    """``path`` as the PATH half of ``LoadCredential=ID:PATH`` in a unit file.

    systemd reads that half verbatim up to the end of the line (no quotes, no backslash
    escapes: a quoted path is "not valid"), expands ``%`` specifiers, and ignores a path
    that is not absolute and normalized (no ``.``/``..`` parts). So: ``%`` is doubled,
    spaces and backslashes are kept as they are, and anything a line cannot carry is
    refused (the directory was checked for control characters when the config was read;
    this is the last line of defence for sinks built in code).
    """
    text = str(path)
    problem = control_problem(text)
    if problem is not None:
        raise DeliveryError(f"credstore path {text!r} {problem}; it cannot go into a unit file")
    if not path.is_absolute() or any(part in {".", ".."} for part in path.parts):
        raise DeliveryError(
            f"credstore path {text!r} must be absolute and normalized (no '.' or '..') "
            "for LoadCredential="
        )
    if text.endswith("\\"):
        raise DeliveryError(f"credstore path {text!r} ends in a backslash (a line continuation)")
    return text.replace("%", "%%")


class CredstoreSink(Sink):
    def __init__(self, context: SinkContext) -> None:
        settings = context.read_settings(SETTINGS)
        where = context.where
        label = context.config.label

        def key(name: str) -> str:
            return f"{where}.{name}"

        self.target = context.target
        encrypt = read_key(settings["encrypt"], true_is_host=True, file=label, key=key("encrypt"))
        self.encrypt = encrypt is not None
        base: Path = settings["directory"] or Path(
            DEFAULT_ENCRYPTED_DIRECTORY if self.encrypt else DEFAULT_DIRECTORY
        )
        if ".." in base.parts:
            # systemd ignores a LoadCredential= path with '..' ("not valid, ignoring").
            raise ConfigError(
                "must not contain '..' (systemd refuses such paths)",
                file=label,
                key=key("directory"),
            )
        self.base = base
        self.directory = base / context.target.name
        self.allow_persistent: bool = settings["allow_persistent"]
        self.owner = account_setting(settings["owner"], file=label, key=key("owner"))
        self.group = account_setting(settings["group"], file=label, key=key("group"))
        with_key: str | None = settings["with_key"]
        if isinstance(settings["encrypt"], str):
            if with_key not in {None, encrypt}:
                raise ConfigError(
                    f'names another key than encrypt = "{encrypt}"; give one',
                    file=label,
                    key=key("with_key"),
                )
            with_key = encrypt
        self.with_key = with_key or "host"
        self.tpm2_pcrs = read_pcrs(settings["tpm2_pcrs"], file=label, key=key("tpm2_pcrs"))
        if self.encrypt:
            check_pcrs_key(
                self.tpm2_pcrs,
                self.with_key,
                naming=f'with_key "{self.with_key}"',
                setting="encrypt",
                file=label,
                key=key("tpm2_pcrs"),
            )
        self.systemd_creds: str = settings["systemd_creds"]
        self.timeout: float = settings["timeout"]
        self.where = where
        self.label = label

    # ------------------------------------------------------------------ checks

    def _check_medium(self) -> None:
        if self.encrypt or self.allow_persistent:
            return
        if not is_memory_backed(self.base):
            raise DeliveryError(
                f"{self.base} is not on tmpfs or ramfs; refusing to write plaintext secrets to "
                f"persistent storage (set allow_persistent = true in {self.where}, "
                "or encrypt = true)"
            )

    def check(self) -> None:
        try:
            check_path(self.base)
            self._check_medium()
        except OSError as error:
            raise DeliveryError(f"cannot use {self.base}: {error.strerror or error}") from None
        if self.encrypt:
            self._check_key_supported()

    def _check_key_supported(self) -> None:
        """Refuse a key this machine's systemd-creds does not know, in one line naming the
        systemd it needs (before anything is resolved or generated)."""
        import shutil

        binary = shutil.which(self.systemd_creds)
        if binary is None:
            return  # no binary: systemd-creds will say
        problem = key_problem(binary, self.with_key, self.tpm2_pcrs, self.timeout)
        if problem is not None:
            raise DeliveryError(f"{self.where}: {problem}")

    def lock_files(self) -> list[Path]:
        try:
            ensure_private_dir(self.base)
        except OSError as error:
            raise DeliveryError(f"cannot prepare {self.base}: {error.strerror or error}") from None
        return [self.base / LOCK_NAME]

    def _trusted_owners(self) -> tuple[int, ...]:
        """Owners accepted for the live target directory: it is handed to ``owner``."""
        try:
            uid, _gid = resolve_owner(self.owner, None)
        except KeyError:
            return ()
        return (uid,) if uid != -1 else ()

    # ------------------------------------------------------------------ plan

    def _read_live(self, names: Iterable[str]) -> tuple[dict[str, bytes | None], list[str]]:
        """What the live directory holds now, read through a trusted chain without following
        a symlink (a symlinked target directory is refused, not read through)."""
        try:
            fd = open_dir(self.directory, also_trust=self._trusted_owners())
        except FileNotFoundError:
            return dict.fromkeys(names), []
        except NotADirectoryError:
            raise DeliveryError(
                f"{self.directory} is not a directory; refusing to replace it"
            ) from None
        try:
            found: dict[str, bytes | None] = {}
            for name in names:
                try:
                    if stat.S_ISDIR(os.lstat(name, dir_fd=fd).st_mode):
                        found[name] = None  # the placeholder of a missing optional credential
                        continue
                    found[name] = read_file_at(fd, name, str(self.directory / name))
                except FileNotFoundError:
                    found[name] = None
            files = [
                entry
                for entry in os.listdir(fd)
                if not stat.S_ISDIR(os.lstat(entry, dir_fd=fd).st_mode)
            ]
            return found, sorted(files)
        except OSError as error:
            raise DeliveryError(f"cannot read {self.directory}: {error.strerror}") from None
        finally:
            os.close(fd)

    def _check_limits(self, sizes: Mapping[str, int]) -> None:
        """systemd's limits, checked before anything is written: a unit whose credentials
        exceed them fails to start ("Argument list too long"), whatever credbridge wrote."""
        for name, size in sizes.items():
            try:
                check_size(name, size)
            except DeliveryError as error:
                raise DeliveryError(f"{self.target.name}: {error}") from None
        check_unit_total(self.target.name, sizes)

    def plan(self, credentials: Mapping[str, Secret | Pending]) -> list[PlanEntry]:
        self.check()
        # Values still to be generated count with their size known in advance (check, and
        # deliver before it generates anything): a set over a limit is refused before it exists.
        self._check_limits(
            {
                name: size
                for name, value in credentials.items()
                if (size := Pending.size_of(value)) is not None
            }
        )
        live, present = self._read_live(credentials)
        entries = []
        for name, value in credentials.items():
            current = live[name]
            if current is None:
                entries.append(
                    PlanEntry(name, Change.ADD, value.reason if isinstance(value, Pending) else "")
                )
            elif isinstance(value, Pending):
                entries.append(PlanEntry(name, Change.CHANGE, value.reason))
            elif self.encrypt:
                entries.append(self._plan_encrypted(name, current, value))
            elif Secret(current) == value:
                entries.append(PlanEntry(name, Change.KEEP))
            else:
                entries.append(PlanEntry(name, Change.CHANGE))
        for entry in present:
            if entry not in credentials:
                entries.append(PlanEntry(entry, Change.REMOVE))
        return entries

    # ------------------------------------------------------------------ stage

    def stage(self, deliveries: Sequence[Delivery]) -> Staged:
        """Write the new set beside the live one; called with :meth:`lock_files` held."""
        self._check_medium()
        self._check_limits({delivery.name: len(delivery.value) for delivery in deliveries})
        try:
            dir_uid, dir_gid = resolve_owner(self.owner, self.group)
            ensure_private_dir(self.base)
            base_fd = open_dir(self.base)
        except KeyError as error:
            raise ConfigError(
                f"unknown user or group {error.args[0]}", file=self.label, key=self.where
            ) from None
        except OSError as error:
            raise DeliveryError(f"cannot prepare {self.base}: {error.strerror or error}") from None
        name = f".{self.target.name}.staging-{os.urandom(6).hex()}"
        staging = self.base / name
        try:
            self._clean_stale(base_fd)
            os.mkdir(name, 0o700, dir_fd=base_fd)
            _STAGED_HERE.add(str(staging))
            fd = os.open(name, _DIR_FLAGS, dir_fd=base_fd)
            try:
                os.fchmod(fd, 0o700)
                for delivery in deliveries:
                    data = self._encrypt(delivery) if self.encrypt else delivery.value.reveal()
                    try:
                        uid, gid = resolve_owner(delivery.owner, delivery.group)
                    except KeyError as error:
                        raise DeliveryError(
                            f"{self.target.name}/{delivery.name}: unknown user or group "
                            f"{error.args[0]}"
                        ) from None
                    write_new_file_at(fd, delivery.name, data, mode=delivery.mode, uid=uid, gid=gid)
                delivered = {delivery.name for delivery in deliveries}
                for spec in self.target.credentials:
                    if spec.optional and spec.name not in delivered:
                        # An empty directory where the file would be: systemd loads a directory
                        # given to LoadCredential= file by file, so the unit starts without
                        # the credential (a missing file would fail it; see unit_settings).
                        os.mkdir(spec.name, 0o700, dir_fd=fd)
                if dir_uid != -1 or dir_gid != -1:
                    os.fchown(fd, dir_uid, dir_gid)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.fsync(base_fd)
            point("credstore.staged")
        except BaseException as error:
            with contextlib.suppress(OSError):
                remove_at(base_fd, name)
            os.close(base_fd)
            if isinstance(error, OSError):
                raise DeliveryError(
                    f"{self.target.name}: cannot write {staging}: {error.strerror or error}"
                ) from None
            raise
        os.close(base_fd)
        return _StagedDirectory(self.base, name, self.target.name)

    def _clean_stale(self, base_fd: int) -> None:
        """Remove staging dirs of crashed runs, any target's: with the base locked no other
        run is staging here (the ones this process made are kept)."""
        for entry in os.listdir(base_fd):
            if (
                entry.startswith(".")
                and ".staging-" in entry
                and str(self.base / entry) not in _STAGED_HERE
            ):
                log.info("removing %s left by an interrupted run", self.base / entry)
                remove_at(base_fd, entry)

    def _plan_encrypted(self, name: str, current: bytes, value: Secret) -> PlanEntry:
        """Compare with the decrypted current file, so an unchanged value counts as kept
        (``deliver --restart`` must not restart a unit for a fresh ciphertext)."""
        plain = self._decrypt(name, current)
        if plain is None:
            return PlanEntry(name, Change.CHANGE, "re-encrypted (the current file cannot be read)")
        try:
            return PlanEntry(name, Change.KEEP if plain == value else Change.CHANGE)
        finally:
            plain.wipe()

    def _decrypt(self, name: str, data: bytes) -> Secret | None:
        import shutil  # only encrypt = true needs these (see _encrypt)
        import subprocess

        binary = shutil.which(self.systemd_creds)
        if binary is None:
            return None
        argv = [binary, "decrypt", f"--name={name}", "-", "-"]
        try:
            result = subprocess.run(
                argv,
                input=data,
                capture_output=True,
                timeout=self.timeout,
                check=False,
                env=child_env(),
            )
        except (subprocess.TimeoutExpired, OSError):
            return None
        if result.returncode != 0:
            return None
        return Secret(result.stdout)

    def _encrypt(self, delivery: Delivery) -> bytes:
        # Imported here: only encrypt = true needs them, and they cost every run ~6 ms.
        import shutil
        import subprocess

        binary = shutil.which(self.systemd_creds)
        if binary is None:
            raise DeliveryError(
                f"{self.systemd_creds} not found; encrypt = true needs systemd-creds (systemd 250+)"
            )
        argv = [binary, "encrypt", f"--name={delivery.name}", f"--with-key={self.with_key}"]
        if self.tpm2_pcrs is not None:
            argv.append(f"--tpm2-pcrs={self.tpm2_pcrs}")
        argv += ["-", "-"]
        try:
            result = subprocess.run(
                argv,
                input=delivery.value.reveal(),
                capture_output=True,
                timeout=self.timeout,
                check=False,
                env=child_env(),
            )
        except subprocess.TimeoutExpired:
            raise DeliveryError(
                f"{self.target.name}/{delivery.name}: systemd-creds encrypt timed out"
            ) from None
        if result.returncode != 0:
            from credbridge.core.remote import Redactor

            # The tool read the value: its message is shown only if it quotes no part of it.
            redactor = Redactor(min_length=1)
            redactor.add(delivery.value)
            lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
            reason = redactor.detail(lines[-1]) if lines else ""
            raise DeliveryError(
                f"{self.target.name}/{delivery.name}: systemd-creds encrypt failed "
                f"(exit {result.returncode}): {reason or 'no message'}"
            )
        return result.stdout

    def location(self) -> str:
        return str(self.directory)

    # ------------------------------------------------------------------ unit

    def unit_settings(self) -> list[str]:
        lines = []
        directive = "LoadCredentialEncrypted" if self.encrypt else "LoadCredential"
        for spec in self.target.credentials:
            problem = credential_name_problem(spec.name)
            if problem is not None:
                raise DeliveryError(f"{self.target.name}/{spec.name}: {problem}")
            # An optional credential the source did not have is an empty directory at this path
            # (stage): systemd 252 and later load nothing from it and start the unit. The
            # empty default "SetCredential=NAME:" that later versions accept is "Invalid
            # syntax" to 252, and any non-empty default would hand the unit a made-up value.
            path = unit_path_value(self.directory / spec.name)
            lines.append(f"{directive}={spec.name}:{path}")
        return lines


class _StagedDirectory(Staged):
    def __init__(self, base: Path, staging: str, live: str) -> None:
        self.base = base
        self.staging = staging
        self.live = live
        self.state = "staged"  # -> "swapped" (old set in staging) | "placed" (no old set)

    def commit(self) -> None:
        live = self.base / self.live
        try:
            with opened_dir(self.base) as base_fd:
                try:
                    info: os.stat_result | None = os.lstat(self.live, dir_fd=base_fd)
                except FileNotFoundError:
                    info = None
                self._refuse_unless_directory(base_fd, info)
                point("credstore.commit.before-swap")
                if info is None:
                    self._place(base_fd)
                else:
                    exchange_at(base_fd, self.staging, self.live)
                    self.state = "swapped"
                    # Checking the live entry and swapping it are two steps: what the swap
                    # took out is checked again, and anything but a directory (a symlink put
                    # in between) goes back where it was and is refused, not replaced.
                    swapped_out = os.lstat(self.staging, dir_fd=base_fd)
                    if not stat.S_ISDIR(swapped_out.st_mode):
                        exchange_at(base_fd, self.staging, self.live)
                        self.state = "staged"
                        self._refuse_unless_directory(base_fd, swapped_out)
                point("credstore.commit.after-swap")
                os.fsync(base_fd)
        except OSError as error:
            if error.errno == errno.EINVAL:
                raise DeliveryError(
                    f"{self.base}: file system cannot swap directories atomically"
                ) from None
            raise DeliveryError(f"cannot commit {live}: {error.strerror or error}") from None

    def _refuse_unless_directory(self, base_fd: int, info: os.stat_result | None) -> None:
        """Refuse a live entry that is there but no directory; a symlink as the planning did."""
        if info is None or stat.S_ISDIR(info.st_mode):
            return
        if stat.S_ISLNK(info.st_mode):
            raise symlink_error(str(self.base / self.live), base_fd, self.live)
        raise DeliveryError(f"{self.base / self.live} is not a directory; refusing to replace it")

    def _place(self, base_fd: int) -> None:
        """The first set of a target: the staging directory becomes the live one."""
        try:
            os.rename(self.staging, self.live, src_dir_fd=base_fd, dst_dir_fd=base_fd)
        except OSError as error:
            # Something took the free name since it was checked (a directory cannot be
            # renamed over a symlink or a file: ENOTDIR): refused as above.
            if error.errno not in (errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY):
                raise
            self._refuse_unless_directory(base_fd, os.lstat(self.live, dir_fd=base_fd))
            raise
        self.state = "placed"

    def rollback(self) -> None:
        with opened_dir(self.base) as base_fd:
            if self.state == "swapped":
                exchange_at(base_fd, self.staging, self.live)
            elif self.state == "placed":
                os.rename(self.live, self.staging, src_dir_fd=base_fd, dst_dir_fd=base_fd)
            self.state = "staged"
            remove_at(base_fd, self.staging)
            _STAGED_HERE.discard(str(self.base / self.staging))
            os.fsync(base_fd)

    def finalize(self) -> None:
        with opened_dir(self.base) as base_fd:
            point("credstore.finalize")
            remove_at(base_fd, self.staging)
            _STAGED_HERE.discard(str(self.base / self.staging))
            os.fsync(base_fd)
