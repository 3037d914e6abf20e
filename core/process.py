"""The environment credbridge gives every child process it starts."""

from __future__ import annotations

import os
from collections.abc import Mapping

ENV_ALLOW = ("PATH", "HOME", "LANG", "TERM", "TZ", "TMPDIR", "USER", "LOGNAME")
"""Variables a child inherits; ``LC_*`` too. Everything else (tokens read by ``env:``
references, ``VAULT_TOKEN``, ...) stays in credbridge."""


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every child: an allow-list, so no source token is ever inherited."""
    env = {k: v for k, v in os.environ.items() if k in ENV_ALLOW or k.startswith("LC_")}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if extra:
        env.update(extra)
    return env
