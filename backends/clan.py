"""``clan-vars:`` — secrets that clan vars already generated, read where clan keeps them.

Reference: ``clan-vars:GENERATOR/FILE`` (the machine from ``[sources.clan-vars] machine``) or
``clan-vars:MACHINE/GENERATOR/FILE``, with ``?strip=true`` to drop trailing newlines (what a
shell's ``$(cat FILE)`` drops).

clan's sops backend keeps each secret var as its own sops file, ``secret``, in the clan's
directory (clan-core ``clan_lib/vars/_types.py`` ``StoreBase.rel_dir``)::

    vars/per-machine/MACHINE/GENERATOR/FILE/secret     a machine's var
    vars/shared/GENERATOR/FILE/secret                  a shared var (``share = true``)

clan's ``age`` secret store (``clan.core.vars.settings.secretStore = "age"``, clan-core
``clan_lib/vars/secret_modules/age.py``) keeps the same var, age-encrypted (``age --armor``),
at ``secrets/clan-vars/per-machine/MACHINE/GENERATOR/FILE/FILE.age`` (and ``.../shared/...``).
Both stores are read; which one holds a var is seen from the tree, and it is decrypted with
``age --decrypt`` and the same key. An export's var (``vars/per-export/...``, clan-core's
``PerExport`` placement) is ``clan-vars:per-export/EXPORT/GENERATOR/FILE``.

Each sops var is a sops *binary* file (JSON: ``data`` plus ``sops`` metadata) whose data is
exactly the bytes the generator script wrote to ``$out/FILE`` — ``openssl rand -base64 32`` gives 45
bytes, newline included — encrypted to the age keys of the machines, users and groups linked
beside it. This is what sops-nix decrypts (``format = "binary"``) to
``/run/secrets/vars/per-machine/MACHINE/GENERATOR/FILE`` (older clans:
``/run/secrets/vars/GENERATOR/FILE``). The source finds the file clan wrote, reads it without
following symlinks through directories another user could change, and decrypts it through the
same sops runner as ``sops:`` (one sops run per file and run; the machine's age key from
``age_key_file``, usually ``/var/lib/sops-nix/key.txt`` where clan installs it). Nothing is
generated or written. Settings and the migration recipe: docs/sources/clan.md.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import subprocess
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from credbridge.backends.hooks.clan import SETTINGS
from credbridge.backends.sops_cli import SopsRunner, SopsSettings, setting_error
from credbridge.core import (
    BadReference,
    DocumentSource,
    Forbidden,
    InvalidValue,
    Locator,
    NotFound,
    Reference,
    Secret,
    SecretDocument,
    SourceContext,
    SourceError,
    Timeout,
    Unreachable,
)
from credbridge.core.fsutil import open_dir
from credbridge.core.process import child_env
from credbridge.core.reference import parse_flag

SCHEME = "clan-vars"
ENCRYPTED_VAR = "secret"
"""clan's sops backend: the encrypted var, one file per var (``secret_modules/sops.py``)."""
PUBLIC_VAR = "value"
"""clan's in-repo public vars: the plain value (``public_modules/in_repo.py``)."""
AGE_STORE = ("secrets", "clan-vars")
"""clan's age store: ``secrets/clan-vars/REL_DIR/FILE/FILE.age`` (``secret_modules/age.py``)."""
PER_EXPORT = "per-export"
"""The directory of an export's vars (clan-core ``_types.py`` ``PerExport``)."""
AGE_INSTALL_HINT = "install age (Debian: apt-get install age; NixOS: pkgs.age) or put it on PATH"
MAX_FILE_BYTES = 64 << 20


def _check_strip(reference: Reference) -> None:
    reference.flag_option("strip")


def _name_problem(name: str) -> str | None:
    if not name:
        return "an empty name"
    if name in {".", ".."} or "\x00" in name:
        return f"the name {name!r}"
    return None


def validate_reference(reference: Reference) -> None:
    _check_strip(reference)
    parts = reference.path.split("/")
    exported = len(parts) >= 4 and parts[0] == PER_EXPORT
    if len(parts) not in (2, 3) and not exported:
        raise BadReference(
            str(reference),
            "a clan var is GENERATOR/FILE, MACHINE/GENERATOR/FILE or "
            f"{PER_EXPORT}/EXPORT/GENERATOR/FILE",
        )
    for part in parts:
        problem = _name_problem(part)
        if problem is not None:
            raise BadReference(
                str(reference), f"{problem} is not a clan machine, generator or file"
            )


@dataclass(frozen=True)
class VarPath:
    """Where a var may be: a machine's (``per-machine``) and the shared one (``shared``), or
    an export's (``per-export/EXPORT``)."""

    generator: str
    file: str
    machine: str | None
    export: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        return f"{self.generator}/{self.file}"

    def placements(self) -> list[tuple[str, ...]]:
        """clan's ``rel_dir`` of each place the var may be (``Placement.rel_prefix()``)."""
        if self.export is not None:
            return [(PER_EXPORT, *self.export)]
        if self.machine is None:
            return [("shared",)]
        return [("per-machine", self.machine), ("shared",)]

    def candidates(self) -> list[tuple[str, ...]]:
        """The var's directory in clan's sops store (``vars/REL_DIR/GENERATOR/FILE``)."""
        return [("vars", *p, self.generator, self.file) for p in self.placements()]

    def age_candidates(self) -> list[tuple[str, ...]]:
        """The var's directory in clan's age store (``secrets/clan-vars/REL_DIR/...``)."""
        return [(*AGE_STORE, *p, self.generator, self.file) for p in self.placements()]


class _Missing(Exception):
    """A component of a var's path does not exist."""


class ClanVarsSource(DocumentSource):
    """Reads secret vars from a clan directory; decrypts each file once per run."""

    def __init__(
        self, runner: SopsRunner, directory: Path, machine: str | None, concurrency: int
    ) -> None:
        super().__init__(concurrency=concurrency)
        self.runner = runner
        self.directory = directory
        self.machine = machine
        self._lock = threading.Lock()
        self._files: dict[Path, Future[Secret | SourceError]] = {}
        self._age_store: bool | None = None

    # ------------------------------------------------------------------ finding the var

    def var_path(self, locator: Locator) -> VarPath:
        parts = locator.path.split("/")
        if len(parts) >= 4:
            return VarPath(parts[-2], parts[-1], None, tuple(parts[1:-2]))
        if len(parts) == 3:
            return VarPath(parts[1], parts[2], parts[0])
        return VarPath(parts[0], parts[1], self.machine)

    def fetch_document(self, locator: Locator) -> Secret | SecretDocument:
        var = self.var_path(locator)
        path, encrypted, store = self._find(var)
        value = self._decrypt(path, encrypted, store).reveal()
        strip = parse_flag(locator.option("strip") or "")
        # A shell's command substitution removes trailing newlines, and nothing else.
        return Secret(value.rstrip(b"\n") if strip else value)

    def _find(self, var: VarPath) -> tuple[Path, bytes, str]:
        """The one file clan keeps for ``var``, its (encrypted) bytes and its store.

        A var is in clan's sops store (``vars/.../secret``) or its age store
        (``secrets/clan-vars/.../FILE.age``); whichever file is there says which.
        """
        found: list[tuple[Path, bytes, str]] = []
        public: list[Path] = []
        age = self._has_age_store()
        for candidate, age_candidate in zip(var.candidates(), var.age_candidates(), strict=True):
            before = len(found)
            with contextlib.suppress(_Missing):
                found.append((*self._read(candidate, ENCRYPTED_VAR), "sops"))
            if age:
                with contextlib.suppress(_Missing):
                    found.append((*self._read(age_candidate, f"{var.file}.age"), "age"))
            if len(found) == before and self._exists(candidate, PUBLIC_VAR):
                public.append(self.directory.joinpath(*candidate, PUBLIC_VAR))
        if len(found) == 1:
            return found[0]
        if found:
            both = " and ".join(str(p) for p, _, _ in found)
            if len({store for _, _, store in found}) == len(found):
                raise InvalidValue(
                    "",
                    f"clan var {var.name} is in both of clan's secret stores ({both}); clan "
                    "reads the one clan.core.vars.settings.secretStore names (the other is "
                    "stale): remove it, or name the file with sops: or file:",
                )
            raise InvalidValue(
                "",
                f"clan var {var.name} is both a machine's and a shared var ({both}); clan keeps "
                "one of them (the other is stale): remove it, or name the file with sops:",
            )
        if public:
            raise InvalidValue(
                "",
                f"clan var {var.name} is a public var ({public[0]}), not a secret; "
                f"read it with file:{public[0]}",
            )
        # Name the files of the store(s) this clan uses: the age store if its tree is there.
        paths = [str(self.directory.joinpath(*c, ENCRYPTED_VAR)) for c in var.candidates()]
        age_paths = [
            str(self.directory.joinpath(*c, f"{var.file}.age")) for c in var.age_candidates()
        ]
        if age:
            sops_tree = self._exists((), "vars", directory=True)
            paths = [*paths, *age_paths] if sops_tree else age_paths
        if len(paths) > 1:
            raise NotFound(
                "",
                f"no clan var {var.name}: none of {', '.join(paths)} exists"
                if len(paths) > 2
                else f"no clan var {var.name}: neither {' nor '.join(paths)} exists",
            )
        if var.machine is not None or var.export is not None:
            raise NotFound("", f"no clan var {var.name}: {paths[0]} does not exist")
        raise NotFound(
            "",
            f"no clan var {var.name}: {paths[0]} does not exist; for a machine's var set "
            "machine in [sources.clan-vars] or write MACHINE/GENERATOR/FILE",
        )

    def _has_age_store(self) -> bool:
        """Whether the clan has an age store (``secrets/clan-vars``); looked at once per run."""
        with self._lock:
            known = self._age_store
        if known is None:
            known = self._exists(AGE_STORE[:1], AGE_STORE[1], directory=True)
            with self._lock:
                self._age_store = known
        return known

    def _exists(self, components: tuple[str, ...], leaf: str, *, directory: bool = False) -> bool:
        try:
            self._read(components, leaf, content=False, directory=directory)
        except (_Missing, SourceError):
            return False
        return True

    def _read(
        self,
        components: tuple[str, ...],
        leaf: str,
        *,
        content: bool = True,
        directory: bool = False,
    ) -> tuple[Path, bytes]:
        """Open ``DIRECTORY/COMPONENTS.../LEAF`` one component at a time, following no symlink.

        Each directory on the way must not be writable by every user, nor belong to a user
        other than root or this process's user: anyone who could put a file there could
        choose the value, since the recipients' public keys are in the repository. The clan
        directory and every directory above it are walked from ``/`` as the store is
        (:func:`~credbridge.core.fsutil.open_dir`: refused with exit 13 when another user owns
        one, or it is group- or world-writable, or a symlink).
        """
        path = self.directory
        try:
            fd = open_dir(self.directory)
        except FileNotFoundError:
            raise NotFound("", f"the clan directory {self.directory} does not exist") from None
        except NotADirectoryError:
            raise InvalidValue(
                "", f"the clan directory {self.directory} is not a directory"
            ) from None
        except PermissionError:
            raise Forbidden("", f"permission denied opening {self.directory}") from None
        try:
            trusted = {0, os.geteuid()}
            for name in components:
                path = path / name
                child = self._open_child(fd, name, path, directory=True)
                os.close(fd)
                fd = child
                self._check_directory(fd, path, trusted)
            path = path / leaf
            child = self._open_child(fd, leaf, path, directory=directory)
            os.close(fd)
            fd = child
            info = os.fstat(fd)
            if directory:
                return path, b""
            if not stat.S_ISREG(info.st_mode):
                raise InvalidValue("", f"{path} is not a regular file")
            if info.st_uid not in trusted:
                raise Forbidden("", f"{path} belongs to another user (uid {info.st_uid})")
            if not content:
                return path, b""
            if info.st_size > MAX_FILE_BYTES:
                raise InvalidValue("", f"{path} is larger than {MAX_FILE_BYTES >> 20} MiB")
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return path, b"".join(chunks)
        finally:
            os.close(fd)

    @staticmethod
    def _open_child(parent: int, name: str, path: Path, *, directory: bool) -> int:
        # O_NONBLOCK: a FIFO planted as the file must not hang the run (fstat refuses it next).
        kind = os.O_DIRECTORY if directory else os.O_NONBLOCK
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | kind
        try:
            return os.open(name, flags, dir_fd=parent)
        except FileNotFoundError:
            raise _Missing from None
        except PermissionError:
            raise Forbidden("", f"permission denied opening {path}") from None
        except OSError as error:
            if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise NotFound("", f"cannot open {path}: {error.strerror}") from None
        # O_NOFOLLOW fails with ELOOP on a symlinked file, ENOTDIR on a symlinked directory.
        try:
            mode = os.lstat(name, dir_fd=parent).st_mode
        except FileNotFoundError:
            raise _Missing from None
        if stat.S_ISLNK(mode):
            raise Forbidden("", f"{path} is a symlink; clan never links a var's path")
        raise InvalidValue("", f"{path} is not a directory")

    @staticmethod
    def _check_directory(fd: int, path: Path, trusted: set[int]) -> None:
        info = os.fstat(fd)
        if info.st_uid not in trusted:
            raise Forbidden("", f"{path} belongs to another user (uid {info.st_uid})")
        if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
            raise Forbidden("", f"{path} is writable by every user")

    # ------------------------------------------------------------------ decrypting

    def _decrypt(self, path: Path, encrypted: bytes, store: str) -> Secret:
        """One sops (or age) run per file and run; later callers (any thread) share its
        outcome."""
        with self._lock:
            future = self._files.get(path)
            owner = future is None
            if future is None:
                future = self._files[path] = Future()
        if owner:
            try:
                # The bytes checked above go to sops through stdin: no second open by path.
                if store == "age":
                    raw = self._age_decrypt(path, encrypted)
                else:
                    args = ["decrypt", "--input-type", "binary", "--output-type", "binary"]
                    raw = self.runner.run(
                        [*args, "/dev/stdin"],
                        what=str(path),
                        file=path,
                        kind="binary",
                        stdin=encrypted,
                    )
                future.set_result(Secret(raw))
            except SourceError as error:
                future.set_result(error)
            except BaseException as error:  # noqa: BLE001 - re-raised by future.result()
                future.set_exception(error)
        outcome = future.result()
        if isinstance(outcome, SourceError):
            raise type(outcome)(outcome.reference, outcome.problem)
        return Secret(outcome.reveal())

    def _age_decrypt(self, path: Path, encrypted: bytes) -> bytes:
        """``age --decrypt -i KEY`` on ``encrypted`` (stdin), with the key sops would use."""
        binary = shutil.which("age", path=os.environ.get("PATH", os.defpath))
        if binary is None:
            raise Unreachable(
                "", f"no age binary for {path} (clan's age store); {AGE_INSTALL_HINT}"
            )
        environment = self.runner.environment()
        key = environment.get("SOPS_AGE_KEY_FILE")
        if key is None:
            config = environment.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
            default = os.path.join(config, "sops", "age", "keys.txt")
            key = default if os.path.exists(default) else None
        environment.clear()
        if key is None:
            raise Forbidden(
                "",
                f"no key could decrypt {path}: no age key was found (set age_key or "
                "age_key_file in [sources.clan-vars]; clan's age store installs the machine's "
                "key as /etc/secret-vars/key.txt)",
            )
        try:
            process = subprocess.Popen(
                [binary, "--decrypt", "-i", key],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=child_env(),
                pass_fds=self.runner.pass_fds(),
                start_new_session=True,
            )
        except OSError as error:
            raise Unreachable(
                "", f"cannot start age ({binary}): {error.strerror}; {AGE_INSTALL_HINT}"
            ) from None
        timeout = self.runner.settings.timeout
        with process:
            try:
                stdout, stderr = process.communicate(encrypted, timeout=timeout)
            except BaseException as error:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                if isinstance(error, subprocess.TimeoutExpired):
                    raise Timeout(
                        "", f"age did not finish with {path} within {timeout:g}s"
                    ) from None
                raise
        if process.returncode != 0:
            raise classify_age(process.returncode, stderr, what=str(path))
        return stdout

    def close(self) -> None:
        with self._lock:
            for future in self._files.values():
                if future.done() and future.exception() is None:
                    value = future.result()
                    if isinstance(value, Secret):
                        value.wipe()
            self._files.clear()
            self._age_store = None


def classify_age(rc: int, stderr: bytes, *, what: str) -> SourceError:
    """One typed line for a failed ``age --decrypt``; age's stderr is matched, never repeated."""
    text = stderr.decode("utf-8", "replace").lower()
    if rc < 0:
        return Unreachable("", f"age was killed by signal {-rc} while decrypting {what}")
    if "no identity matched" in text:
        return Forbidden(
            "", f"no key could decrypt {what}: the age key(s) given match none of its recipients"
        )
    if "failed to open file" in text or "permission denied" in text:
        return Forbidden(
            "", f"no key could decrypt {what}: the age key file (age_key_file) cannot be read"
        )
    if "identity" in text or "error at line" in text:
        return Forbidden("", f"no key could decrypt {what}: an age key given is malformed")
    if "header" in text or "armor" in text:
        return InvalidValue("", f"{what} is not an age-encrypted file")
    if "payload" in text or "authenticate" in text:
        return InvalidValue("", f"{what} failed its integrity check: tampered or corrupted")
    return Unreachable(
        "", f"age failed on {what} (exit {rc}); run age --decrypt on it by hand to see why"
    )


def open_source(context: SourceContext) -> ClanVarsSource:
    values = context.read_settings(SETTINGS)
    fail = setting_error(context)
    sops_settings = SopsSettings.read(
        values, fail=fail, forbidden_schemes=frozenset({SCHEME, "sops"})
    )
    if values["directory"] is None:
        raise fail(
            "directory",
            "clan-vars needs directory, the clan's directory (the flake holding vars/ and sops/)",
        )
    machine: str | None = values["machine"]
    if machine is not None and (_name_problem(machine) or "/" in machine):
        raise fail("machine", "must be a clan machine name")
    workers = values["concurrency"] or min(context.concurrency, max(2, os.cpu_count() or 2))
    return ClanVarsSource(
        SopsRunner(sops_settings, context.resolve),
        Path(os.path.abspath(values["directory"])),
        machine,
        workers,
    )
