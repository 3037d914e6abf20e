"""The ``vault`` plugin: HashiCorp Vault and OpenBao (implementation: backends/vault.py).

Loading it costs this module only; ``hvac`` is imported when a ``vault:`` reference is resolved.
"""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.settings import Setting
from credbridge.core.types import SourceType, lazy

IMPL = "credbridge.backends.vault"
DYNAMIC = "credbridge.backends.vault_dynamic"
# common_name .. ttl are the fields of a PKI issue (vault:pki/issue/ROLE?common_name=NAME).
OPTIONS = frozenset(
    {"version", "namespace", "kv", "common_name", "alt_names", "ip_sans", "uri_sans", "ttl"}
)
DEFAULT_ADDRESS = "https://127.0.0.1:8200"
"""What the vault and bao CLIs use when nothing is set."""
SETTINGS = (
    Setting("address", "string", DEFAULT_ADDRESS, doc="server URL ($VAULT_ADDR, $BAO_ADDR)"),
    Setting("namespace", "string", doc="Vault Enterprise namespace ($VAULT_NAMESPACE)"),
    Setting("ca_cert", "path", doc="CA bundle to verify the server ($VAULT_CACERT)"),
    Setting("ca_path", "path", doc="directory of CA certificates ($VAULT_CAPATH)"),
    Setting("client_cert", "path", doc="TLS client certificate (with client_key)"),
    Setting("client_key", "path", doc="TLS client key (with client_cert)"),
    Setting("tls_verify", "bool", True, doc="verify the server certificate"),
    Setting("connect_timeout", "duration", 5.0, doc="seconds to connect"),
    Setting("read_timeout", "duration", 30.0, doc="seconds to wait for a response"),
    Setting("retries", "integer", 3, doc="retries of a failed request", minimum=0, maximum=10),
    Setting("backoff", "number", 0.25, doc="seconds before the first retry", maximum=86400),
    Setting("concurrency", "integer", doc="requests in flight", minimum=1, maximum=256),
    Setting("auth", "table", {}, doc="how to log in: method = token, approle, jwt, kubernetes"),
)
"""``[sources.vault]``; backends/vault_settings.py reads them (``VaultSettings.from_context``),
and declares the keys of the ``auth`` table."""


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
