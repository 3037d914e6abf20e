"""What ``credbridge agent`` knows and shows: its ``[agent]`` settings, the state of every
target and credential (never a value), and the state file ``credbridge status`` reads.

Apart from the loop (:mod:`credbridge.core.agent`), which changes these states; this module
only holds, renders and stores them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from credbridge.core.config import Config, keypath
from credbridge.core.errors import ConfigError
from credbridge.core.fsutil import atomic_write, ensure_private_dir
from credbridge.core.records import field, record
from credbridge.core.settings import duration_setting, number_setting
from credbridge.core.types import Lease, Request

if TYPE_CHECKING:
    from credbridge.core.engine import Session

log = logging.getLogger(__name__)

DEFAULT_REFRESH = 300.0
"""How often a value without a lease is re-read when no ``refresh`` is set (Vault Agent's
``static_secret_render_interval`` default)."""
DEFAULT_RENEW_AT = 2 / 3
DEFAULT_RETRY_MIN = 1.0
DEFAULT_RETRY_MAX = 300.0
STATE_DIR = ".credbridge-agent"
STATE_NAME = "state.json"
AGENT_SETTINGS = ("renew_at", "retry_min", "retry_max", "state")


# --------------------------------------------------------------------------- settings


@record(frozen=True)
class AgentSettings:
    """The ``[agent]`` table of the config."""

    renew_at: float = DEFAULT_RENEW_AT
    retry_min: float = DEFAULT_RETRY_MIN
    retry_max: float = DEFAULT_RETRY_MAX
    state: Path | None = None

    @classmethod
    def from_config(cls, config: Config) -> AgentSettings:
        table = config.agent
        for key in table:
            if key not in AGENT_SETTINGS:
                raise ConfigError(
                    f"unknown setting (expected one of: {', '.join(AGENT_SETTINGS)})",
                    file=config.label,
                    key=keypath("agent", key),
                )
        renew_at = DEFAULT_RENEW_AT
        if "renew_at" in table:
            renew_at = number_setting(
                table["renew_at"],
                file=config.label,
                key="agent.renew_at",
                minimum=0.1,
                maximum=0.9,
            )

        def duration(key: str, default: float) -> float:
            if key not in table:
                return default
            return duration_setting(table[key], file=config.label, key=f"agent.{key}")

        retry_min = duration("retry_min", DEFAULT_RETRY_MIN)
        retry_max = duration("retry_max", DEFAULT_RETRY_MAX)
        if retry_max < retry_min:
            raise ConfigError(
                "must not be shorter than agent.retry_min", file=config.label, key="agent.retry_max"
            )
        state = None
        if "state" in table:
            state = config.resolve_path(table["state"], "agent.state")
        return cls(renew_at, retry_min, retry_max, state)


def state_path(session: Session, settings: AgentSettings) -> Path:
    """The agent's state file: ``[agent] state``, else ``.credbridge-agent/state.json`` beside
    the store's lock file (the store is per config, so two agents never share one)."""
    if settings.state is not None:
        return settings.state
    return session.store().lock_file().parent / STATE_DIR / STATE_NAME


# --------------------------------------------------------------------------- state


@record
class CredentialState:
    """What the agent knows of one delivered credential (no value)."""

    target: str
    name: str
    reference: str
    request: Request
    refresh: float
    lease: Lease | None = None
    delivered_at: float | None = None
    checked_at: float | None = None
    next_at: float = 0.0
    """When, on the monotonic clock (``time.monotonic()``): a clock set back or forward
    changes no deadline."""
    action: str = "fetch"
    """``fetch`` (first delivery), ``refresh``, ``renew`` or ``reissue``: what ``next_at`` does."""
    last_error: str | None = None
    failures: int = 0
    expired_reported: bool = False

    def as_json(self) -> dict[str, Any]:
        lease = self.lease
        return {
            "reference": self.reference,
            "version": lease.version if lease else None,
            "lease_id": lease.lease_id if lease else None,
            "renewable": lease.renewable if lease else False,
            "issued_at": stamp(lease.issued_at if lease else None),
            "expires_at": stamp(lease.expires_at if lease else None),
            "delivered_at": stamp(self.delivered_at),
            "checked_at": stamp(self.checked_at),
            "next_refresh": stamp(time.time() + max(0.0, self.next_at - time.monotonic())),
            "next_action": self.action,
            "last_error": self.last_error,
        }


def stamp(moment: float | None) -> str | None:
    if moment is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


@record
class TargetState:
    name: str
    unit: str | None
    failures: int = 0
    last_error: str | None = None
    credentials: dict[str, CredentialState] = field(default_factory=dict)
    kind: str = "unit"
    live: bool = False
    """A VM target whose channel changes while it runs (virtiofs): updated in place."""
    stale: list[str] = field(default_factory=list)
    """A VM target on a channel fixed at boot: the changed values (``T/C``, never a value)
    its running VM does not have, because its ``on_change`` is ``none``."""
    stale_launch: int | None = None
    """The pid of the launch that holds the stale values: a new launch has the new ones."""

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "unit": self.unit,
            "kind": self.kind,
            "status": self.status(),
            "last_error": self.last_error,
            "credentials": {name: c.as_json() for name, c in self.credentials.items()},
        }
        if self.kind == "vm":
            data["channel"] = "live" if self.live else "boot"
            data["stale"] = list(self.stale)
        return data

    def status(self) -> str:
        now = time.time()
        expired = any(
            c.lease is not None and c.lease.expires_at is not None and c.lease.expires_at <= now
            for c in self.credentials.values()
        )
        if expired:
            return "expired"
        if self.last_error is not None:
            return "retrying"
        if self.stale:
            return "stale"
        if any(c.delivered_at is None and c.checked_at is None for c in self.credentials.values()):
            return "pending"
        return "ok"


def write_state(path: Path, snapshot: Mapping[str, Any]) -> None:
    """Write ``snapshot`` (no value in it) atomically, 0600 in a 0700 directory; a failure is
    logged, not raised (the agent goes on delivering)."""
    data = json.dumps(snapshot, indent=2).encode()
    try:
        ensure_private_dir(path.parent)
        atomic_write(path, data, mode=0o600)
    except OSError as error:
        log.warning("cannot write %s: %s", path, error.strerror or error)


def read_state(path: Path) -> Mapping[str, Any]:
    """The state an agent wrote (see :meth:`Agent.snapshot`)."""
    from credbridge.core.errors import NotFound
    from credbridge.core.fsutil import read_private_file

    try:
        raw = read_private_file(path)
    except FileNotFoundError:
        raise NotFound(str(path), "no agent state here: is 'credbridge agent' running?") from None
    except OSError as error:
        raise NotFound(
            str(path), f"cannot read the agent state: {error.strerror or error}"
        ) from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise NotFound(str(path), "not an agent state file") from None
    if not isinstance(data, dict) or not isinstance(data.get("targets"), dict):
        raise NotFound(str(path), "not an agent state file")
    if data.get("running"):
        try:
            os.kill(int(data["pid"]), 0)
        except ProcessLookupError:
            data["running"] = False
        except (PermissionError, ValueError, TypeError):
            pass
    return data
