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
KUBERNETES_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path

AUTH_METHODS = ("token", "approle", "jwt", "kubernetes")
AUTH_METHOD = Setting("method", "choice", "token", doc="how to log in", choices=AUTH_METHODS)
_ROLE = Setting("role", "string", doc="the role to log in as")


def _mount(method: str) -> Setting:
    return Setting("mount", "string", method, doc=f"where the {method} auth method is enabled")


AUTH_SETTINGS: dict[str, tuple[Setting, ...]] = {
    "token": (
        AUTH_METHOD,
        Setting("token", "string", doc="the token itself, inline (avoid)"),
        Setting("token_file", "path", doc="a file holding the token"),
        Setting("token_ref", "string", doc="a reference to the token"),
    ),
    "approle": (
        AUTH_METHOD,
        _mount("approle"),
        Setting("role_id", "string", doc="a reference to the role ID (required)"),
        Setting("secret_id", "string", doc="a reference to the secret ID"),
    ),
    "jwt": (
        AUTH_METHOD,
        _mount("jwt"),
        _ROLE,
        Setting("jwt", "string", doc="a reference to the JWT (required)"),
    ),
    "kubernetes": (
        AUTH_METHOD,
        _mount("kubernetes"),
        _ROLE,
        Setting("jwt", "string", f"file:{KUBERNETES_TOKEN}", doc="a reference to the pod's token"),
    ),
}
"""The ``[sources.vault.auth]`` keys of each ``method`` (docs/sources/vault.md)."""

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
    Setting(
        "auth",
        "table",
        {},
        doc="how to log in: method = token, approle, jwt, kubernetes",
        fields=AUTH_SETTINGS,
        selector="method",
    ),
)
"""``[sources.vault]``, the ``auth`` table's keys included; backends/vault_settings.py reads
them (``VaultSettings.from_context``)."""


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
