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
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from credbridge.backends.hooks.virtiofs import SETTINGS
from credbridge.backends.vm_sink import ChannelSink
from credbridge.core import (
    ConfigError,
    Delivery,
    SinkContext,
)
from credbridge.core.fsutil import ensure_private_dir, write_new_file
from credbridge.core.vm import VirtiofsShare, VmChannel, check_name, check_size

SINK_NAME = "virtiofs"
DEFAULT_TAG = "credbridge"
TAG_MAX = 36  # virtio-fs config space: tag[36]
SUBDIR = "virtiofs"
_TAG = re.compile(r"[A-Za-z0-9_.-]+")


class VirtiofsSink(ChannelSink):
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

    def preview(self, names: Sequence[str], runtime_dir: Path) -> VmChannel:
        self.validate(dict.fromkeys(names))
        return VmChannel(
            sink=SINK_NAME,
            virtiofs=[VirtiofsShare(self.tag, self.share_dir(runtime_dir))],
            names=list(names),
        )


def open_sink(context: SinkContext) -> VirtiofsSink:
    return VirtiofsSink(context)
