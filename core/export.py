"""``credbridge export``: a public part (a public key, a certificate) into a plain file.

Only values whose reference selects a public part (``SourceType.public``) are exported: the
file is world-readable (0644) and may live anywhere (``known_hosts``, a peer config, a CA
bundle). It is written atomically (temp file in the same directory, fsync, rename) and no
symlink is followed: not the file itself, nor any directory on the way to it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from credbridge.core import links
from credbridge.core.errors import BadReference, DeliveryError
from credbridge.core.fsutil import atomic_write
from credbridge.core.reference import parse_reference
from credbridge.core.resolution import Resolver

EXPORT_MODE = 0o644


def _check_path(path: Path) -> None:
    """The directory exists and no component of ``path`` (as given) is a symlink."""
    current = Path(path.anchor) if path.is_absolute() else Path()
    for part in path.parts[1 if path.is_absolute() else 0 :]:
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            if current == path:
                return
            raise DeliveryError(f"cannot export to {path}: {current} does not exist") from None
        if stat.S_ISLNK(info.st_mode):
            raise DeliveryError(
                f"cannot export to {path}: {current} is a symlink (export follows none)"
            )
        if current != path and not stat.S_ISDIR(info.st_mode):
            raise DeliveryError(f"cannot export to {path}: {current} is not a directory")
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise DeliveryError(f"cannot export to {path}: it exists and is not a regular file")


def export_public(session: Resolver, text: str, path: Path) -> int:
    """Resolve ``text`` (which must select a public part) and write it to ``path``; its size."""
    reference = parse_reference(text)
    if not links.is_link(reference):
        session.check_reference(reference)
    if not session.is_public(reference):
        raise BadReference(
            text,
            "selects a secret; export writes world-readable files, so only public parts "
            "(#public, #cert, #chain of a generated key) can be exported",
        )
    _check_path(path)
    value = session.resolve_one(reference)
    try:
        atomic_write(path, value.reveal(), mode=EXPORT_MODE)
    except OSError as error:
        if error.errno == errno.ELOOP:
            reason = "a symlink appeared on the way (export follows none)"
        else:
            reason = error.strerror or str(error)
        raise DeliveryError(f"cannot export to {path}: {reason}") from None
    finally:
        size = len(value)
        value.wipe()
    return size
