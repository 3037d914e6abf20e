"""The ``vault`` plugin: HashiCorp Vault and OpenBao (implementation: backends/vault.py).

Loading it costs this module only; ``hvac`` is imported when a ``vault:`` reference is resolved.
"""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.types import SourceType, lazy

IMPL = "credbridge.backends.vault"
DYNAMIC = "credbridge.backends.vault_dynamic"
# common_name .. ttl are the fields of a PKI issue (vault:pki/issue/ROLE?common_name=NAME).
OPTIONS = frozenset(
    {"version", "namespace", "kv", "common_name", "alt_names", "ip_sans", "uri_sans", "ttl"}
)
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
        summary=(
            "HashiCorp Vault / OpenBao KV v1 and v2 (vault:MOUNT/PATH#FIELD), PKI certificates "
            "and database credentials with leases, through hvac"
        ),
        options=OPTIONS,
        settings=SETTINGS,
        selectors=True,
        validate=lazy(f"{IMPL}:validate_reference"),
        public=lazy(f"{DYNAMIC}:selects_public"),
    )
