"""A throw-away certificate authority for TLS tests (OpenBao listeners, client certificates),
made by credbridge's own generators (``backends/keygen.py``, what ``generate:tls-ca`` and
``generate:tls-cert`` deliver), so the real OpenBao also checks what they make::

    ca = TestCA("credbridge test CA")
    cert, key = ca.issue("127.0.0.1")   # SAN IP 127.0.0.1 (server and client use)
    cert, key = ca.issue("credbridge")  # a client certificate
"""

from __future__ import annotations

import datetime

from credbridge.backends.keygen import tls_ca, tls_cert


class TestCA:
    __test__ = False  # not a pytest test class

    def __init__(self, common_name: str = "credbridge test CA") -> None:
        now = datetime.datetime.now(datetime.UTC)
        self._parts = tls_ca(cn=common_name, days=1, algorithm="p256", now=now)

    @property
    def pem(self) -> bytes:
        return self._parts["cert"].encode()

    def issue(self, common_name: str) -> tuple[bytes, bytes]:
        """A certificate (PEM) and its PKCS#8 key; a name that is an IP address gets it as
        its subject alternative name."""
        sans = [("IP", common_name)] if common_name[0].isdigit() else []
        parts = tls_cert(
            cn=common_name,
            sans=sans,
            days=1,
            algorithm="p256",
            now=datetime.datetime.now(datetime.UTC),
            ca=self._parts,
        )
        return parts["cert"].encode(), parts["key"].encode()
