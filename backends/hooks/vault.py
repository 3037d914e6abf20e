"""The ``vault`` plugin: HashiCorp Vault and OpenBao (implementation: backends/vault.py).

Loading it costs this module only; ``hvac`` is imported when a ``vault:`` reference is resolved.
"""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.types import SourceType, lazy

IMPL = "credbridge.backends.vault"
OPTIONS = frozenset({"version", "namespace", "kv"})
SETTINGS = frozenset(
    {
        "address",
        "namespace",
        "ca_cert",
        "ca_path",
        "client_cert",
        "client_key",
        "tls_verify",
        "connect_timeout",
        "read_timeout",
        "retries",
        "backoff",
        "concurrency",
        "auth",
    }
)


@hookimpl
def credbridge_sources() -> Iterator[SourceType]:
    yield SourceType(
        scheme="vault",
        open=lazy(f"{IMPL}:open_source"),
        summary="HashiCorp Vault / OpenBao KV v1 and v2 (vault:MOUNT/PATH#FIELD), through hvac",
        options=OPTIONS,
        settings=SETTINGS,
        selectors=True,
        validate=lazy(f"{IMPL}:validate_reference"),
    )
