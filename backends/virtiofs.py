"""``virtiofs`` — credentials as files in a per-VM directory shared read-only with the guest.

The directory lives in the launch's private runtime directory (tmpfs/ramfs, 0700), one 0400
file per credential, and is exported through virtiofsd, which the launcher starts, watches and
stops. It is wiped when the VM exits -- and, after a crash of credbridge, by the next launch.

In the guest, mount the tag read-only on ``/run/credbridge`` and let services load the files
as credentials (examples/guest/: ``run-credbridge.mount``, a service drop-in)::

    [Unit]
    RequiresMountsFor=/run/credbridge
    [Service]
    LoadCredential=db-password:/run/credbridge/db-password

Settings (the target's ``sink`` table): ``tag`` (default ``credbridge``, at most 36 bytes).
Names follow systemd's credential-name rules; each value at most 1 MiB (systemd's limit for
what one unit loads).

``credbridge agent`` updates the share of a running VM in place (:meth:`VirtiofsSink.update`):
every new file is staged first (a temp name beside it), then each is renamed over its old one
-- a reader never sees a partial file, and one that holds the old file open keeps reading the
old value -- and then :data:`GENERATION` is replaced, last: a guest that watches it sees a new
number only once the whole set is in place (docs/vm.md, "Values that change while the VM
runs"). virtiofsd runs with ``--cache=never``, so the guest sees each change at its next
lookup.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from credbridge.backends.hooks.virtiofs import SETTINGS
from credbridge.backends.vm_sink import ChannelSink
from credbridge.core import (
    ConfigError,
    Delivery,
    Secret,
    SinkContext,
)
from credbridge.core.errors import DeliveryError
from credbridge.core.fsutil import (
    atomic_write_at,
    check_dir,
    ensure_private_dir,
    is_temp_name,
    open_dir,
    read_file_at,
    temp_name,
    write_new_file,
    write_new_file_at,
)
from credbridge.core.vm import VirtiofsShare, VmChannel, check_name, check_size

SINK_NAME = "virtiofs"
DEFAULT_TAG = "credbridge"
TAG_MAX = 36  # virtio-fs config space: tag[36]
SUBDIR = "virtiofs"
_TAG = re.compile(r"[A-Za-z0-9_.-]+")
GENERATION = ".credbridge-generation"
"""A file of the share holding a number that grows with every update of a running VM's share
(none before the first): replaced after every credential file of the update."""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class VirtiofsSink(ChannelSink):
    changes_after_boot = True

    def __init__(self, context: SinkContext) -> None:
        tag: str = context.read_settings(SETTINGS)["tag"]
        if not _TAG.fullmatch(tag) or len(tag) > TAG_MAX:
            raise ConfigError(
                f"must be 1-{TAG_MAX} characters of letters, digits, '_.-'",
                file=context.config.label,
                key=f"{context.where}.tag",
            )
        self.tag = tag

    def share_dir(self, runtime_dir: Path) -> Path:
        return runtime_dir / SUBDIR / self.tag

    def validate(self, sizes: Mapping[str, int | None]) -> None:
        for name, size in sizes.items():
            check_name(name, "virtiofs")
            if name == GENERATION:
                raise DeliveryError(f"credential {name!r}: the name is the share's own, not free")
            if size is not None:
                check_size(name, size)

    def place(self, name: str) -> str:
        return f"virtiofs {self.tag}:/{name}"

    def prepare(self, deliveries: Sequence[Delivery], runtime_dir: Path) -> VmChannel:
        self.validate({d.name: len(d.value) for d in deliveries})
        ensure_private_dir(runtime_dir / SUBDIR)
        directory = self.share_dir(runtime_dir)
        ensure_private_dir(directory)
        for delivery in deliveries:
            write_new_file(directory / delivery.name, delivery.value.reveal(), mode=0o400)
        return VmChannel(
            sink=SINK_NAME,
            virtiofs=[VirtiofsShare(self.tag, directory)],
            names=[d.name for d in deliveries],
        )

    def update(self, deliveries: Sequence[Delivery], runtime_dir: Path) -> list[str]:
        self.validate({d.name: len(d.value) for d in deliveries})
        wanted = {d.name: d for d in deliveries}
        with _share_fd(runtime_dir, self.tag) as (dir_fd, owner):
            current = [
                name for name in os.listdir(dir_fd) if name != GENERATION and not is_temp_name(name)
            ]
            changed = [
                name for name, d in wanted.items() if not _holds(dir_fd, name, d.value, runtime_dir)
            ]
            removed = [name for name in current if name not in wanted]
            if not changed and not removed:
                return []
            uid, gid = owner
            staged: list[tuple[str, str]] = []
            try:
                for name in changed:
                    temp = temp_name(Path(), name).name
                    write_new_file_at(
                        dir_fd, temp, wanted[name].value.reveal(), mode=0o400, uid=uid, gid=gid
                    )
                    staged.append((temp, name))
            except BaseException:
                for temp, _name in staged:
                    with contextlib.suppress(OSError):
                        os.unlink(temp, dir_fd=dir_fd)
                raise
            for temp, name in staged:
                os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            for name in removed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)
            generation = _generation(dir_fd) + 1
            atomic_write_at(
                dir_fd, GENERATION, f"{generation}\n".encode(), mode=0o400, uid=uid, gid=gid
            )
        return sorted([*changed, *removed])

    def preview(self, names: Sequence[str], runtime_dir: Path) -> VmChannel:
        self.validate(dict.fromkeys(names))
        return VmChannel(
            sink=SINK_NAME,
            virtiofs=[VirtiofsShare(self.tag, self.share_dir(runtime_dir))],
            names=list(names),
        )


@contextlib.contextmanager
def _share_fd(runtime_dir: Path, tag: str) -> Iterator[tuple[int, tuple[int, int]]]:
    """The share directory of a running launch, and the owner its new files must have.

    The runtime directory's parent is reached as every trusted directory is; the runtime
    directory and the share below it may belong to the launch's user (``User=`` of the VM's
    unit: virtiofsd runs as that user and must read the files), who already holds every value
    of the share. No symlink is followed; every step is relative to an open directory."""
    fd = open_dir(runtime_dir.parent)
    try:
        launch_owner: int | None = None
        path = runtime_dir.parent
        for part in (runtime_dir.name, SUBDIR, tag):
            path = path / part
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
            info = os.fstat(fd)
            if launch_owner is None:
                launch_owner = info.st_uid
            check_dir(str(path), info, ancestor=False, also_trust=(launch_owner,))
        info = os.fstat(fd)
        same = info.st_uid == os.geteuid() and info.st_gid == os.getegid()
        yield fd, ((-1, -1) if same else (info.st_uid, info.st_gid))
    finally:
        os.close(fd)


def _holds(dir_fd: int, name: str, value: Secret, runtime_dir: Path) -> bool:
    """Whether the share's file ``name`` holds ``value`` already (compared in constant time)."""
    try:
        info = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_size != len(value):
        return False
    held = Secret(read_file_at(dir_fd, name, str(runtime_dir / name)))
    try:
        return held == value  # constant time
    finally:
        held.wipe()


def _generation(dir_fd: int) -> int:
    try:
        text = read_file_at(dir_fd, GENERATION, GENERATION).decode(errors="replace").strip()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else 0


def open_sink(context: SinkContext) -> VirtiofsSink:
    return VirtiofsSink(context)
