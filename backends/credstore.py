"""``credstore`` — systemd credstore files and the unit's ``LoadCredential=`` drop-in.

Each unit target gets its own directory ``DIRECTORY/TARGET/`` holding one 0400 file per
credential. A delivery writes a complete new directory beside it and swaps the two with one
``renameat2(RENAME_EXCHANGE)``: readers see either the whole old set or the whole new one.
With ``encrypt = true`` each value goes through ``systemd-creds encrypt --name=NAME`` (value on
stdin, never in argv) and the drop-in uses ``LoadCredentialEncrypted=``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

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
    SinkType,
    Staged,
    hookimpl,
)
from credbridge.core.fsutil import (
    ensure_private_dir,
    exchange,
    fsync_dir,
    is_memory_backed,
    read_private_file,
    remove_tree,
    resolve_owner,
    write_new_file,
)
from credbridge.core.process import child_env

DEFAULT_DIRECTORY = "/run/credstore"
DEFAULT_ENCRYPTED_DIRECTORY = "/etc/credstore.encrypted"
SETTINGS = frozenset(
    {
        "directory",
        "allow_persistent",
        "owner",
        "group",
        "encrypt",
        "with_key",
        "tpm2_pcrs",
        "systemd_creds",
        "timeout",
    }
)


def _unit_escape(path: str) -> str:
    """Escape a path for a unit file value: ``%`` starts a specifier there."""
    return path.replace("%", "%%")


class CredstoreSink(Sink):
    def __init__(self, context: SinkContext) -> None:
        settings = dict(context.settings)
        where = context.where
        label = context.config.label
        unknown = set(settings) - SETTINGS
        if unknown:
            raise ConfigError(
                f"unknown setting {sorted(unknown)[0]!r} (known: {', '.join(sorted(SETTINGS))})",
                file=label,
                key=where,
            )

        def fail(key: str, message: str) -> ConfigError:
            return ConfigError(message, file=label, key=f"{where}.{key}")

        def flag(key: str) -> bool:
            value = settings.get(key, False)
            if not isinstance(value, bool):
                raise fail(key, "must be true or false")
            return value

        def text(key: str, default: str | None) -> str | None:
            value = settings.get(key, default)
            if isinstance(value, int) and not isinstance(value, bool) and key in {"owner", "group"}:
                return str(value)
            if value is not None and not isinstance(value, str):
                raise fail(key, "must be a string")
            return value

        self.target = context.target
        self.encrypt = flag("encrypt")
        default_dir = DEFAULT_ENCRYPTED_DIRECTORY if self.encrypt else DEFAULT_DIRECTORY
        base = context.config.resolve_path(text("directory", default_dir) or default_dir)
        self.base = base
        self.directory = base / context.target.name
        self.allow_persistent = flag("allow_persistent")
        self.owner = text("owner", None)
        self.group = text("group", None)
        self.with_key = text("with_key", "auto") or "auto"
        pcrs = settings.get("tpm2_pcrs")
        if pcrs is not None and not isinstance(pcrs, str | int):
            raise fail("tpm2_pcrs", 'must be a string like "7" or "0+7"')
        self.tpm2_pcrs = None if pcrs is None else str(pcrs)
        self.systemd_creds = text("systemd_creds", "systemd-creds") or "systemd-creds"
        timeout = settings.get("timeout", 30)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise fail("timeout", "must be a positive number of seconds")
        self.timeout = float(timeout)
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

    # ------------------------------------------------------------------ plan

    def plan(self, credentials: Mapping[str, Secret | Pending]) -> list[PlanEntry]:
        self._check_medium()
        entries = []
        for name, value in credentials.items():
            path = self.directory / name
            try:
                current = read_private_file(path)
            except FileNotFoundError:
                entries.append(
                    PlanEntry(name, Change.ADD, value.reason if isinstance(value, Pending) else "")
                )
                continue
            except OSError as error:
                raise DeliveryError(f"cannot read {path}: {error.strerror}") from None
            if isinstance(value, Pending):
                entries.append(PlanEntry(name, Change.CHANGE, value.reason))
            elif self.encrypt:
                entries.append(self._plan_encrypted(name, current, value))
            elif Secret(current) == value:
                entries.append(PlanEntry(name, Change.KEEP))
            else:
                entries.append(PlanEntry(name, Change.CHANGE))
        if self.directory.is_dir():
            for entry in sorted(os.listdir(self.directory)):
                if entry not in credentials:
                    entries.append(PlanEntry(entry, Change.REMOVE))
        return entries

    # ------------------------------------------------------------------ stage

    def stage(self, deliveries: Sequence[Delivery]) -> Staged:
        self._check_medium()
        try:
            dir_uid, dir_gid = resolve_owner(self.owner, self.group)
            ensure_private_dir(self.base)
            self._clean_stale()
            staging = self.base / f".{self.target.name}.staging-{secrets.token_hex(6)}"
            ensure_private_dir(staging, uid=dir_uid, gid=dir_gid)
        except KeyError as error:
            raise ConfigError(
                f"unknown user or group {error.args[0]}", file=self.label, key=self.where
            ) from None
        except OSError as error:
            raise DeliveryError(f"cannot prepare {self.base}: {error.strerror or error}") from None
        try:
            for delivery in deliveries:
                data = self._encrypt(delivery) if self.encrypt else delivery.value.reveal()
                try:
                    uid, gid = resolve_owner(delivery.owner, delivery.group)
                except KeyError as error:
                    raise DeliveryError(
                        f"{self.target.name}/{delivery.name}: unknown user or group {error.args[0]}"
                    ) from None
                write_new_file(staging / delivery.name, data, mode=delivery.mode, uid=uid, gid=gid)
            fsync_dir(staging)
        except BaseException as error:
            remove_tree(staging)
            if isinstance(error, OSError):
                raise DeliveryError(
                    f"{self.target.name}: cannot write {staging}: {error.strerror or error}"
                ) from None
            raise
        return _StagedDirectory(staging, self.directory)

    def _clean_stale(self) -> None:
        """Remove staging dirs left by a crashed run for this target."""
        prefix = f".{self.target.name}.staging-"
        for entry in os.listdir(self.base):
            if entry.startswith(prefix):
                remove_tree(self.base / entry)

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
            reason = result.stderr.decode("utf-8", "replace").strip().splitlines()
            raise DeliveryError(
                f"{self.target.name}/{delivery.name}: systemd-creds encrypt failed "
                f"(exit {result.returncode}): {reason[-1] if reason else 'no message'}"
            )
        return result.stdout

    # ------------------------------------------------------------------ unit

    def unit_settings(self) -> list[str]:
        lines = []
        directive = "LoadCredentialEncrypted" if self.encrypt else "LoadCredential"
        for spec in self.target.credentials:
            path = _unit_escape(str(self.directory / spec.name))
            if spec.optional:
                # An empty default makes a missing optional file non-fatal for the unit.
                lines.append(f"SetCredential={spec.name}:")
            lines.append(f"{directive}={spec.name}:{path}")
        return lines


class _StagedDirectory(Staged):
    def __init__(self, staging: Path, live: Path) -> None:
        self.staging = staging
        self.live = live
        self.state = "staged"  # -> "swapped" (old set in staging) | "placed" (no old set)

    def commit(self) -> None:
        try:
            if os.path.lexists(self.live):
                if os.path.islink(self.live) or not self.live.is_dir():
                    raise DeliveryError(f"{self.live} is not a directory; refusing to replace it")
                exchange(self.staging, self.live)
                self.state = "swapped"
            else:
                os.rename(self.staging, self.live)
                self.state = "placed"
            fsync_dir(self.live.parent)
        except OSError as error:
            if error.errno == errno.EINVAL:
                raise DeliveryError(
                    f"{self.live.parent}: file system cannot swap directories atomically"
                ) from None
            raise DeliveryError(f"cannot commit {self.live}: {error.strerror or error}") from None

    def rollback(self) -> None:
        if self.state == "swapped":
            exchange(self.staging, self.live)
        elif self.state == "placed":
            os.rename(self.live, self.staging)
        self.state = "staged"
        remove_tree(self.staging)
        with contextlib.suppress(OSError):
            fsync_dir(self.live.parent)

    def finalize(self) -> None:
        remove_tree(self.staging)


@hookimpl
def credbridge_sinks() -> Iterable[SinkType]:
    yield SinkType(
        name="credstore",
        open=CredstoreSink,
        summary="systemd credstore files (0400, atomic set swap) + LoadCredential= drop-in",
        target_kinds=frozenset({"unit"}),
    )
