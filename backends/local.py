"""``file:``, ``env:`` and ``credential:`` — secrets already on this machine.

``credential:NAME`` reads ``$CREDENTIALS_DIRECTORY/NAME``, so credbridge can run inside a unit
that received its inputs through ``LoadCredential=`` (the hand-made launch script's trick).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

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
)
from credbridge.core.config import credential_name_problem
from credbridge.core.settings import expand_user

_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}


def _strip(locator: Locator, data: bytes) -> bytes:
    """``?strip=true`` drops trailing whitespace (a file written by ``echo`` ends in \\n)."""
    value = (locator.option("strip") or "false").lower()
    return data.rstrip() if value in _TRUE else data


def _check_strip(reference: Reference) -> None:
    value = (reference.option("strip") or "false").lower()
    if value not in _TRUE | _FALSE:
        raise BadReference(str(reference), "strip must be true or false")


_VERSION_KEY = os.urandom(32)


def content_version(value: bytes) -> str:
    """A version for a value that only changes with it: a keyed digest of the bytes.

    Keyed with a random key of this process, so that ``credbridge status`` can show it
    without offering a way to test guesses of the value (a plain SHA-256 of a short password
    would). Two reads of the same bytes in one process get the same version.
    """
    import hmac

    return "hmac-sha256:" + hmac.new(_VERSION_KEY, value, "sha256").hexdigest()[:32]


def read_file(path: Path, reference: str) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise NotFound(reference, f"no file {path}") from None
    except PermissionError:
        raise Forbidden(reference, f"permission denied reading {path}") from None
    except IsADirectoryError:
        raise InvalidValue(reference, f"{path} is a directory") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise InvalidValue(reference, f"{path}: too many symlinks") from None
        raise NotFound(reference, f"cannot read {path}: {error.strerror}") from None


class FileSource(DocumentSource):
    def __init__(self, config_dir: Path) -> None:
        super().__init__(concurrency=1)
        self.config_dir = config_dir

    def fetch_document(self, locator: Locator) -> Secret | SecretDocument:
        try:
            path = expand_user(locator.path)
        except ValueError as error:
            raise NotFound(str(locator), str(error)) from None
        if not path.is_absolute():
            path = self.config_dir / path
        value = _strip(locator, read_file(path, str(locator)))
        # A file has no version of its own (an mtime can stay while the bytes change).
        return Secret(value, lease=Lease(version=content_version(value)))


class EnvSource(DocumentSource):
    def __init__(self) -> None:
        super().__init__(concurrency=1)

    def fetch_document(self, locator: Locator) -> Secret | SecretDocument:
        value = os.environb.get(os.fsencode(locator.path))
        if value is None:
            raise NotFound(str(locator), f"environment variable {locator.path} is not set")
        return Secret(_strip(locator, value))


class CredentialSource(DocumentSource):
    def __init__(self) -> None:
        super().__init__(concurrency=1)

    def fetch_document(self, locator: Locator) -> Secret | SecretDocument:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise NotFound(
                str(locator),
                "CREDENTIALS_DIRECTORY is not set (run inside a unit with LoadCredential=)",
            )
        return Secret(_strip(locator, read_file(Path(directory) / locator.path, str(locator))))


def _validate_env(reference: Reference) -> None:
    _check_strip(reference)
    if "=" in reference.path or "\0" in reference.path:
        raise BadReference(str(reference), "not a valid environment variable name")


def _validate_credential(reference: Reference) -> None:
    _check_strip(reference)
    if credential_name_problem(reference.path) is not None:
        raise BadReference(str(reference), "not a valid systemd credential name")


def open_file(context: SourceContext) -> FileSource:
    return FileSource(context.config_dir)


def open_env(context: SourceContext) -> EnvSource:
    return EnvSource()


def open_credential(context: SourceContext) -> CredentialSource:
    return CredentialSource()


validate_file = _check_strip
validate_env = _validate_env
validate_credential = _validate_credential
