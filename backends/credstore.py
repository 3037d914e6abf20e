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
from credbridge.core.settings import (
    account_setting,
    control_problem,
    refuse_unknown,
    seconds_setting,
)
from credbridge.core.vm import check_size, check_unit_total

log = logging.getLogger(__name__)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_STAGED_HERE: set[str] = set()
"""Staging directories this process made and has not committed or removed yet."""

DEFAULT_DIRECTORY = "/run/credstore"
DEFAULT_ENCRYPTED_DIRECTORY = "/etc/credstore.encrypted"

#: The keys ``encrypt`` names, as ``systemd-creds --with-key=`` spells them (``true`` = host).
ENCRYPT_KEYS = ("host", "tpm2", "host+tpm2", "auto")
#: The first systemd whose ``systemd-creds encrypt`` takes each ``--with-key=`` value
#: (systemd-creds itself is new in 250; ``tpm2-absent`` came in 251 and was renamed ``null``
#: in 256, which keeps the old name as an alias: ../shared/research/systemd-versions.md).
KEY_MIN_SYSTEMD = {
    "host": 250,
    "tpm2": 250,
    "host+tpm2": 250,
    "tpm2+host": 250,
    "auto": 250,
    "auto-initrd": 250,
    "tpm2-absent": 251,
    "null": 256,
}
#: The first systemd proven to unseal a TPM2 credential bound to no PCR (``--tpm2-pcrs=``)
#: when a unit starts: 252 encrypts it and then cannot decrypt it (the versions in between are
#: untested, so they are refused too).
UNBOUND_TPM2_MIN_SYSTEMD = 257
#: Keys that seal to a TPM2, so ``tpm2_pcrs`` means something for them.
TPM2_KEYS = frozenset({"tpm2", "host+tpm2", "tpm2+host", "auto", "auto-initrd"})


def systemd_creds_version(binary: str, timeout: float) -> int | None:
    """The systemd version of ``binary`` (``systemd-creds --version``), None if unreadable."""
    import subprocess  # only encrypting sinks run it

    try:
        result = subprocess.run(
            [binary, "--version"],
            capture_output=True,
            timeout=timeout,
            check=False,
            env=child_env(),
        )
    except (subprocess.TimeoutExpired, OSError):
        return None
    words = result.stdout.decode("utf-8", "replace").split()
    if result.returncode != 0 or len(words) < 2 or words[0] != "systemd":
        return None
    number = words[1].split(".")[0]
    return int(number) if number.isdigit() else None


def key_problem(
    binary: str,
    key: str,
    tpm2_pcrs: str | None,
    timeout: float,
    *,
    setting: str = "with_key",
) -> str | None:
    """Why ``binary`` (a systemd-creds) cannot seal with ``key`` and ``tpm2_pcrs`` so that
    this machine decrypts it again, naming the systemd version needed; ``None`` if it can, or
    if the key or the version is unknown (systemd-creds itself will then say)."""
    needed = KEY_MIN_SYSTEMD.get(key)
    if needed is None:
        return None
    version = systemd_creds_version(binary, timeout)
    if version is None:
        return None
    if version < needed:
        return f'{setting} "{key}" needs systemd {needed} or later; {binary} is systemd {version}'
    if tpm2_pcrs == "" and key in TPM2_KEYS and version < UNBOUND_TPM2_MIN_SYSTEMD:
        # 252 seals it, but PID 1 then fails the unit: "TPM2 PCR bank invalid or not
        # supported" (tests/backends/test_tpm_guest.py); 257 unseals it.
        return (
            f'tpm2_pcrs = "" (bound to no PCR) needs systemd {UNBOUND_TPM2_MIN_SYSTEMD} or '
            f"later to be decrypted; {binary} is systemd {version} (bind to PCRs, e.g. "
            'tpm2_pcrs = "7")'
        )
    return None


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
        settings = dict(context.settings)
        where = context.where
        label = context.config.label
        refuse_unknown(settings, SETTINGS, what="sink 'credstore'", file=label, where=where)

        def fail(key: str, message: str) -> ConfigError:
            return ConfigError(message, file=label, key=f"{where}.{key}")

        def flag(key: str) -> bool:
            value = settings.get(key, False)
            if not isinstance(value, bool):
                raise fail(key, "must be true or false")
            return value

        def text(key: str, default: str | None) -> str | None:
            value = settings.get(key, default)
            if key in {"owner", "group"}:
                return account_setting(value, file=label, key=f"{where}.{key}")
            if value is not None and not isinstance(value, str):
                raise fail(key, "must be a string")
            if value is not None and (problem := control_problem(value)) is not None:
                raise fail(key, f"value {problem}")
            return value

        self.target = context.target
        encrypt = settings.get("encrypt", False)
        if not isinstance(encrypt, bool) and encrypt not in ENCRYPT_KEYS:
            choices = ", ".join(f'"{k}"' for k in ENCRYPT_KEYS)
            raise fail("encrypt", f"must be true, false or one of {choices}")
        self.encrypt = encrypt is not False
        default_dir = DEFAULT_ENCRYPTED_DIRECTORY if self.encrypt else DEFAULT_DIRECTORY
        base = context.config.resolve_path(
            text("directory", default_dir) or default_dir, f"{where}.directory"
        )
        if ".." in base.parts:
            # systemd ignores a LoadCredential= path with '..' ("not valid, ignoring").
            raise fail("directory", "must not contain '..' (systemd refuses such paths)")
        self.base = base
        self.directory = base / context.target.name
        self.allow_persistent = flag("allow_persistent")
        self.owner = text("owner", None)
        self.group = text("group", None)
        with_key = text("with_key", None)
        if isinstance(encrypt, str) and with_key is not None and with_key != encrypt:
            raise fail("with_key", f'names another key than encrypt = "{encrypt}"; give one')
        self.with_key = encrypt if isinstance(encrypt, str) else (with_key or "host")
        pcrs = settings.get("tpm2_pcrs")
        if isinstance(pcrs, bool) or (pcrs is not None and not isinstance(pcrs, str | int)):
            raise fail("tpm2_pcrs", 'must be a string like "7" or "0+7"')
        if isinstance(pcrs, str) and control_problem(pcrs) is not None:
            raise fail("tpm2_pcrs", 'must be a string like "7" or "0+7"')
        self.tpm2_pcrs = None if pcrs is None else str(pcrs)
        if self.tpm2_pcrs is not None and self.encrypt and self.with_key not in TPM2_KEYS:
            # systemd-creds would accept and ignore them: the values would not be bound.
            raise fail(
                "tpm2_pcrs",
                f'binds a TPM2 key; with_key "{self.with_key}" does not use the TPM2 '
                '(encrypt = "tpm2", "host+tpm2" or "auto")',
            )
        self.systemd_creds = text("systemd_creds", "systemd-creds") or "systemd-creds"
        self.timeout = seconds_setting(
            settings.get("timeout", 30), file=label, key=f"{where}.timeout"
        )
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
