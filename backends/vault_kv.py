"""The KV side of a ``vault:`` source: which mount holds a path, and reading a secret from it.

* :class:`Mounts` asks the server which mount holds a path and what that mount is
  (``GET /v1/sys/internal/ui/mounts/PATH``, which a normal token may read for paths it has
  access to): KV v1, KV v2, or an engine of :data:`~credbridge.backends.vault_dynamic.ENGINES`.
  Once per mount and run; a 403 there is told apart from "nothing is mounted" by a probe.
* :func:`read_secret` reads a secret (a pinned version on KV v2), with a lease that names the
  version read.
* :func:`not_found` says why a secret is not there: destroyed, deleted, no such version, or a
  reference written as KV v2's HTTP API path (``MOUNT/data/PATH``).

Other failures are typed by the source's
:data:`~credbridge.backends.vault_client.ErrorMapper`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from credbridge.backends.vault_client import ErrorMapper, HvacClient, hvac_failures
from credbridge.backends.vault_dynamic import ENGINES
from credbridge.core import Forbidden, InvalidValue, Lease, NotFound, SecretDocument, SourceError
from credbridge.core.remote import Redactor

log = logging.getLogger(__name__)


def split_path(path: str) -> list[str]:
    """The segments of a ``vault:`` path (``secret/app/db``: ``secret``, ``app``, ``db``)."""
    return path.strip("/").split("/")


@dataclass(frozen=True)
class Mount:
    path: str
    """With a trailing slash, as the server names it (``secret/``)."""
    version: int
    """The KV version (0 for the engines of :data:`vault_dynamic.ENGINES`)."""
    engine: str = "kv"
    """``kv``, or ``pki``/``database`` whose reads issue values with leases."""

    @property
    def engine_name(self) -> str:
        return f"KV v{self.version}" if self.engine == "kv" else self.engine


class Mounts:
    """The mounts one source has learnt, per namespace; safe to ask from any thread."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._lock = threading.Lock()
        self._known: dict[tuple[str | None, str], Mount] = {}
        self._asking: dict[tuple[str | None, str], threading.Lock] = {}

    def find(
        self, client: HvacClient, namespace: str | None, path: str, fail: ErrorMapper
    ) -> Mount:
        """The mount holding ``path`` and its engine, asked once per mount and run."""
        first = split_path(path)[0]
        with self._lock:
            asking = self._asking.setdefault((namespace, first), threading.Lock())
        with asking:
            with self._lock:
                known = [
                    m
                    for (ns, m_path), m in self._known.items()
                    if ns == namespace and (path + "/").startswith(m_path)
                ]
            if known:
                return max(known, key=lambda m: len(m.path))
            mount = self._ask(client, path, fail)
            with self._lock:
                self._known[(namespace, mount.path)] = mount
            log.debug("vault: %s is a %s mount", mount.path, mount.engine_name)
            return mount

    def _ask(self, client: HvacClient, path: str, fail: ErrorMapper) -> Mount:
        url = "/v1/sys/internal/ui/mounts/" + quote(path, safe="/")
        try:
            answer = client.adapter.get(url)
        except hvac_failures() as error:
            raise _mount_error(client, path, error, fail) from None
        try:
            data = answer["data"]
            mount_path = str(data["path"])
            engine = str(data["type"])
            options = data.get("options") or {}
        except (TypeError, KeyError):
            raise InvalidValue("", f"unexpected answer describing the mount of {path}") from None
        mount_path = mount_path if mount_path.endswith("/") else mount_path + "/"
        # Both names come from the server and end up in messages: the mount must be a part of
        # the path asked for, and an engine that is not KV is named only as server text (shown
        # once every value of the run is known).
        if not (path + "/").startswith(mount_path) or not mount_path.strip("/"):
            raise InvalidValue("", f"unexpected answer describing the mount of {path}")
        if engine in ENGINES:
            return Mount(mount_path, 0, engine)
        if engine not in {"kv", "generic"}:
            raise InvalidValue(
                "",
                f"{mount_path} is not a KV secrets engine (nor PKI or database)",
                server_text=self._redactor.defer(f"its type is {engine!r}"),
            )
        return Mount(mount_path, 2 if str(options.get("version", "1")) == "2" else 1)


def _mount_error(client: HvacClient, path: str, error: Exception, fail: ErrorMapper) -> SourceError:
    import hvac.exceptions

    if not isinstance(error, hvac.exceptions.Forbidden):
        return fail(error, path)
    # The preflight check says 403 both for "no permission" and "nothing mounted there";
    # the raw path tells them apart ("no handler for route" means no mount).
    try:
        client.adapter.get("/v1/" + quote(path, safe="/"))
    except hvac.exceptions.InvalidPath as probe:
        if "no handler for route" in " ".join(map(str, probe.errors or [])):
            return NotFound("", f"no secrets engine is mounted at {split_path(path)[0]}/")
    except hvac_failures():
        # The probe only refines the message of the 403; its own failure changes nothing.
        log.debug("vault: mount probe of %s failed", path, exc_info=False)
    return Forbidden(
        "",
        f"permission denied on {path} (the token's policies grant nothing there, or the "
        "token is invalid or expired; a token that can read secrets but not mount "
        "metadata needs ?kv=1 or ?kv=2)",
    )


def read_secret(
    client: HvacClient, mount: Mount, secret_path: str, version: str | None, fail: ErrorMapper
) -> SecretDocument:
    """The key/value data of ``secret_path`` below the KV ``mount`` (``version``: ``None`` for
    the latest); on KV v2 with a lease whose version is the one read."""
    import hvac.exceptions

    where = f"{mount.path}{secret_path}"
    if version and mount.version == 1:
        raise InvalidValue(
            "", f"{mount.path} is a KV v1 mount; it keeps no versions (drop ?version)"
        )
    try:
        if mount.version == 2:
            response = client.secrets.kv.v2.read_secret_version(
                path=secret_path,
                version=int(version) if version else None,
                mount_point=mount.path.rstrip("/"),
                raise_on_deleted_version=True,
            )
            data = response["data"]["data"]
            # Which version was read, so a long-running agent can tell a change.
            written = response["data"].get("metadata") or {}
            lease = Lease(version=str(written["version"])) if "version" in written else None
        else:
            response = client.secrets.kv.v1.read_secret(
                path=secret_path, mount_point=mount.path.rstrip("/")
            )
            data = response["data"]
            lease = None  # KV v1 keeps no versions: a change shows only in the value
    except hvac_failures() as error:
        if isinstance(error, hvac.exceptions.InvalidPath):
            raise not_found(error, where, mount, version) from None
        raise fail(error, where) from None
    if not isinstance(data, Mapping):
        raise InvalidValue("", f"{where} holds no key/value data")
    return SecretDocument(dict(data), lease=lease)


def not_found(error: Any, where: str, mount: Mount, version: str | None) -> NotFound:
    """Why nothing is at ``where``, from the 404's body (KV v2 sends the version's metadata)."""
    metadata: Mapping[str, Any] = {}
    body = getattr(error, "json", None)
    if isinstance(body, Mapping):
        data = body.get("data")
        if isinstance(data, Mapping) and isinstance(data.get("metadata"), Mapping):
            metadata = data["metadata"]
    which = f"version {version} of {where}" if version else f"{where} (latest version)"
    if metadata.get("destroyed"):
        return NotFound("", f"{which} was destroyed")
    if metadata.get("deletion_time"):
        return NotFound("", f"{which} was deleted")
    if version:
        return NotFound("", f"no version {version} of {where}")
    kind = f" (KV v{mount.version} mount {mount.path})"
    api_path = kv2_api_path(where, mount)
    if api_path is not None:
        # `vault read MOUNT/data/PATH` (and the CSI driver, and policies) name KV v2's HTTP
        # API path; a reference names the secret as `vault kv get` does.
        return NotFound(
            "",
            f"no secret at {where}{kind}; if {where} is the API path that 'vault read' "
            f"takes, write vault:{api_path}",
        )
    return NotFound("", f"no secret at {where}{kind}")


def kv2_api_path(where: str, mount: Mount) -> str | None:
    """``secret/app`` for ``secret/data/app`` on a KV v2 mount ``secret/``, else None."""
    if mount.version != 2:
        return None
    below = where[len(mount.path) :]
    if not below.startswith("data/") or below == "data/":
        return None
    return mount.path + below[len("data/") :]
