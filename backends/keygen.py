"""Key material through ``cryptography``: SSH, WireGuard, age, TLS and raw Ed25519/X25519 keys.

Every function returns the named parts of one generation as text, each in the format the
tool that consumes it reads (and, where a tool makes such keys, exactly what it prints):

=============  ==========================================  ===================================
kind           ``key`` (private, the default part)           public parts
=============  ==========================================  ===================================
ssh-*          OpenSSH private key file (``ssh-keygen``)    ``public``: ``TYPE BASE64 COMMENT``
wireguard      base64 private key (``wg genkey``)           ``public`` (``wg pubkey``)
age            identity file (``age-keygen``)               ``public``: ``age1…`` recipient
tls-ca, tls    PKCS#8 PEM private key                       ``cert``, ``chain``, ``public`` PEM
ed25519/x25519 base64 of the raw 32-byte private key        ``public``: base64 of the raw key
=============  ==========================================  ===================================

This module imports ``cryptography`` at import time; :mod:`credbridge.backends.generators`
imports it only when a key is generated, so plain ``generate:`` values never pay for it.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import secrets
import struct
from collections.abc import Mapping, Sequence

from credbridge.backends import bech32
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Parts = dict[str, str]
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

CURVES: Mapping[str, ec.EllipticCurve] = {
    "p256": ec.SECP256R1(),
    "p384": ec.SECP384R1(),
    "p521": ec.SECP521R1(),
}
CLOCK_SKEW = datetime.timedelta(minutes=5)
"""Certificates start this much in the past, so a host whose clock lags still accepts them."""

_NO_ENCRYPTION = serialization.NoEncryption()


# --------------------------------------------------------------------------- SSH


def ssh_key(kind: str, *, comment: str = "", bits: int = 3072, curve: str = "p256") -> Parts:
    """``ssh-ed25519``, ``ssh-rsa`` or ``ssh-ecdsa``: what ``ssh-keygen -t TYPE`` writes."""
    private: PrivateKey
    if kind == "ssh-ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    elif kind == "ssh-rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif kind == "ssh-ecdsa":
        private = ec.generate_private_key(CURVES[curve])
    else:  # pragma: no cover - callers validate the kind
        raise ValueError(kind)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, _NO_ENCRYPTION
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = public.decode("ascii") + (f" {comment}" if comment else "")
    return {"key": _with_ssh_comment(pem, comment.encode()).decode("ascii"), "public": line + "\n"}


_OPENSSH_MAGIC = b"openssh-key-v1\x00"
_OPENSSH_BEGIN = b"-----BEGIN OPENSSH PRIVATE KEY-----"
_OPENSSH_END = b"-----END OPENSSH PRIVATE KEY-----"


def _sshstr(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _with_ssh_comment(pem: bytes, comment: bytes) -> bytes:
    """Put ``comment`` into an unencrypted OpenSSH private key, as ``ssh-keygen -C`` does.

    ``cryptography`` always writes an empty comment. The comment is the last string of the
    private section, before padding bytes 1, 2, 3, ... up to the 8-byte block size; with it
    in place ``ssh-keygen -y`` prints the public line including the comment. The result is
    wrapped at 70 columns like ``ssh-keygen``'s files (``cryptography`` wraps at 64).
    """
    lines = pem.strip().splitlines()
    if lines[0] != _OPENSSH_BEGIN or lines[-1] != _OPENSSH_END:
        raise ValueError("not an OpenSSH private key")
    blob = base64.b64decode(b"".join(lines[1:-1]))
    if not blob.startswith(_OPENSSH_MAGIC):
        raise ValueError("not an openssh-key-v1 blob")
    offset = len(_OPENSSH_MAGIC)
    for _ in range(3):  # cipher name, KDF name, KDF options
        (length,) = struct.unpack_from(">I", blob, offset)
        offset += 4 + length
    offset += 4  # number of keys (always 1 here)
    (length,) = struct.unpack_from(">I", blob, offset)
    offset += 4 + length  # public key blob
    head = blob[:offset]
    (length,) = struct.unpack_from(">I", blob, offset)
    section = blob[offset + 4 : offset + 4 + length]
    padding = section[-1]
    if not 1 <= padding <= 8 or section[-padding:] != bytes(range(1, padding + 1)):
        raise ValueError("unexpected padding in the private section")
    if section[-padding - 4 : -padding] != b"\x00\x00\x00\x00":
        raise ValueError("the private section already carries a comment")
    body = section[: -padding - 4] + _sshstr(comment)
    body += bytes(range(1, 8 - len(body) % 8 + 1))
    encoded = base64.b64encode(head + _sshstr(body))
    wrapped = [encoded[i : i + 70] for i in range(0, len(encoded), 70)]
    return b"\n".join([_OPENSSH_BEGIN, *wrapped, _OPENSSH_END]) + b"\n"


# --------------------------------------------------------------------------- X25519 family


def _clamped_scalar() -> bytes:
    """32 random bytes clamped like ``wg genkey`` prints them (same public key either way)."""
    scalar = bytearray(secrets.token_bytes(32))
    scalar[0] &= 248
    scalar[31] = (scalar[31] & 127) | 64
    return bytes(scalar)


def _x25519_public(scalar: bytes) -> bytes:
    return x25519.X25519PrivateKey.from_private_bytes(scalar).public_key().public_bytes_raw()


def wireguard_key() -> Parts:
    """What ``wg genkey`` prints, and ``wg pubkey`` for it (each line ends in a newline)."""
    scalar = _clamped_scalar()
    return {
        "key": base64.b64encode(scalar).decode("ascii") + "\n",
        "public": base64.b64encode(_x25519_public(scalar)).decode("ascii") + "\n",
    }


AGE_RECIPIENT_HRP = "age"
AGE_IDENTITY_HRP = "age-secret-key-"


def age_key(now: datetime.datetime) -> Parts:
    """An identity file as ``age-keygen`` writes it, and its ``age1…`` recipient."""
    scalar = secrets.token_bytes(32)
    recipient = bech32.encode(AGE_RECIPIENT_HRP, _x25519_public(scalar))
    identity = bech32.encode(AGE_IDENTITY_HRP, scalar).upper()
    created = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = f"# created: {created}\n# public key: {recipient}\n{identity}\n"
    return {"key": text, "public": recipient + "\n"}


def raw_key(kind: str) -> Parts:
    """``ed25519`` or ``x25519``: base64 of the raw 32-byte keys, no newline (like base64)."""
    if kind == "ed25519":
        signing = ed25519.Ed25519PrivateKey.generate()
        private_raw = signing.private_bytes_raw()
        public_raw = signing.public_key().public_bytes_raw()
    else:
        private_raw = _clamped_scalar()
        public_raw = _x25519_public(private_raw)
    return {
        "key": base64.b64encode(private_raw).decode("ascii"),
        "public": base64.b64encode(public_raw).decode("ascii"),
    }


# --------------------------------------------------------------------------- TLS


def _tls_private_key(algorithm: str) -> PrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(algorithm[3:]))
    return ec.generate_private_key(CURVES[algorithm])


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None  # Ed25519 signs the message itself
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def _pem_key(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, _NO_ENCRYPTION
    ).decode("ascii")


def _pem_public(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _general_names(sans: Sequence[tuple[str, str]]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for kind, value in sans:
        if kind == "IP":
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
        else:
            names.append(x509.DNSName(value))
    return names


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public: PublicKey,
    now: datetime.datetime,
    not_after: datetime.datetime,
    *,
    ca: bool,
) -> x509.CertificateBuilder:
    """What a CA's and a leaf's certificate share: names, key, validity, basic constraints and
    key usage (a CA signs leaves only, path length 0; an RSA leaf also enciphers keys)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=not ca and isinstance(public, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )


def tls_ca(*, cn: str, days: int, algorithm: str, now: datetime.datetime) -> Parts:
    """A CA key and its self-signed certificate (may sign leaves only: path length 0)."""
    key = _tls_private_key(algorithm)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    public = key.public_key()
    cert = (
        _builder(name, name, public, now, now + datetime.timedelta(days=days), ca=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, _hash_for(key))
    )
    pem = _pem_cert(cert)
    return {"key": _pem_key(key), "cert": pem, "chain": pem, "public": _pem_public(key)}


def tls_cert(
    *,
    cn: str,
    sans: Sequence[tuple[str, str]],
    days: int,
    algorithm: str,
    now: datetime.datetime,
    ca: Mapping[str, str] | None,
) -> Parts:
    """A key and a server/client certificate, signed by ``ca`` (a tls-ca's parts) or itself."""
    key = _tls_private_key(algorithm)
    public = key.public_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    not_after = now + datetime.timedelta(days=days)
    signer: PrivateKey = key
    issuer = subject
    ca_cert: x509.Certificate | None = None
    if ca is not None:
        ca_cert = x509.load_pem_x509_certificate(ca["cert"].encode("ascii"))
        loaded = serialization.load_pem_private_key(ca["key"].encode("ascii"), password=None)
        if not isinstance(
            loaded, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        ):
            raise ValueError("the CA key is of an unsupported type")
        signer = loaded
        issuer = ca_cert.subject
        # A certificate outliving its CA would be rejected by verifiers anyway.
        not_after = min(not_after, ca_cert.not_valid_after_utc)
    builder = (
        _builder(subject, issuer, public, now, not_after, ca=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(_general_names(sans)), critical=False
        )
    if ca_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    cert = builder.sign(signer, _hash_for(signer))
    pem = _pem_cert(cert)
    chain = pem + (_pem_cert(ca_cert) if ca_cert is not None else "")
    return {"key": _pem_key(key), "cert": pem, "chain": chain, "public": _pem_public(key)}
