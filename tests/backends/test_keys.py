"""Key generators, checked with the real tools that consume the keys (Debian packages).

openssh-client (``ssh-keygen -y``, ``-Y sign``/``-Y verify``), wireguard-tools (``wg pubkey``),
age (``age-keygen -y``, ``age -r``/``age -d -i``) and openssl (``x509``, ``verify``, ``pkey``).
Every value goes through the real ``credbridge`` command, as a user would get it.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from credbridge.backends import bech32
from support.canary import Canary

TOOLS = {
    "ssh-keygen": "openssh-client",
    "wg": "wireguard-tools",
    "age": "age",
    "age-keygen": "age",
    "openssl": "openssl",
}


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (apt-get install {TOOLS[tool]})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run(argv: list[str], *, input: bytes | None = None, cwd: Path | None = None) -> bytes:
    result = subprocess.run(argv, input=input, capture_output=True, cwd=cwd, check=False)
    assert result.returncode == 0, f"{argv}: {result.stderr.decode(errors='replace')}"
    return result.stdout


class Keys:
    """``credbridge get`` against one store (a fresh one per test)."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.env = {"CREDBRIDGE_STORE": str(store)}

    def get(self, reference: str, *args: str) -> bytes:
        result = run_cli("get", *args, reference, env=self.env)
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout

    def write(self, reference: str, path: Path) -> Path:
        """A private part as the tools want it: a 0600 file."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(self.get(reference))
        return path


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "store")


# --------------------------------------------------------------------------- SSH


@pytest.mark.parametrize(
    ("kind", "options", "prefix"),
    [
        ("ssh-ed25519", "", "ssh-ed25519 "),
        ("ssh-rsa", "", "ssh-rsa "),
        ("ssh-rsa", "bits=4096&", "ssh-rsa "),
        ("ssh-ecdsa", "", "ecdsa-sha2-nistp256 "),
        ("ssh-ecdsa", "curve=p384&", "ecdsa-sha2-nistp384 "),
        ("ssh-ecdsa", "curve=p521&", "ecdsa-sha2-nistp521 "),
    ],
)
def test_ssh_keys_with_ssh_keygen(
    keys: Keys, tmp_path: Path, kind: str, options: str, prefix: str
) -> None:
    ssh_keygen = need("ssh-keygen")
    base = f"generate:{kind}?{options}comment=root%40vm&id=host/{kind}"
    private = keys.write(base, tmp_path / "key")
    public = keys.get(base + "#public")
    assert public.startswith(prefix.encode()) and public.endswith(b" root@vm\n")
    assert private.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    # ssh-keygen reproduces the public line from the private key, comment included.
    assert run([ssh_keygen, "-y", "-f", str(private)]) == public
    if "bits=4096" in options:
        assert b"4096 SHA256:" in run([ssh_keygen, "-l", "-f", str(private)])
    elif kind == "ssh-rsa":
        assert b"3072 SHA256:" in run([ssh_keygen, "-l", "-f", str(private)])
    # A signature made with the private key verifies against the public line.
    data = tmp_path / "data"
    data.write_bytes(b"signed by a generated key\n")
    run([ssh_keygen, "-Y", "sign", "-f", str(private), "-n", "file", str(data)])
    signers = tmp_path / "allowed_signers"
    signers.write_bytes(b"operator@example " + public)
    verify = [ssh_keygen, "-Y", "verify", "-f", str(signers), "-I", "operator@example"]
    verified = subprocess.run(
        [*verify, "-n", "file", "-s", f"{data}.sig"],
        input=data.read_bytes(),
        capture_output=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    assert b"Good" in verified.stdout


def test_ssh_key_without_comment(keys: Keys, tmp_path: Path) -> None:
    ssh_keygen = need("ssh-keygen")
    private = keys.write("generate:ssh-ed25519?id=bare", tmp_path / "key")
    public = keys.get("generate:ssh-ed25519?id=bare#public")
    assert re.fullmatch(rb"ssh-ed25519 [A-Za-z0-9+/]+=*\n", public)
    assert run([ssh_keygen, "-y", "-f", str(private)]) == public


# --------------------------------------------------------------------------- WireGuard


def test_wireguard_with_wg(keys: Keys) -> None:
    wg = need("wg")
    private = keys.get("generate:wireguard?id=vm1/wg")
    public = keys.get("generate:wireguard?id=vm1/wg#public")
    assert run([wg, "pubkey"], input=private) == public
    raw = base64.b64decode(private.strip(), validate=True)
    assert len(private) == 45 and len(raw) == 32  # 44 base64 characters and a newline
    # Clamped like `wg genkey` prints it.
    assert raw[0] & 7 == 0 and raw[31] & 128 == 0 and raw[31] & 64 == 64
    # `wg genkey` output has the same shape.
    genkey = run([wg, "genkey"])
    assert len(genkey) == len(private) and genkey.endswith(b"\n")


# --------------------------------------------------------------------------- age


def test_age_identity_with_age(keys: Keys, tmp_path: Path) -> None:
    age, age_keygen = need("age"), need("age-keygen")
    identity = keys.write("generate:age?id=ops/age", tmp_path / "identity.txt")
    recipient = keys.get("generate:age?id=ops/age#public")
    assert re.fullmatch(rb"age1[02-9ac-hj-np-z]{58}\n", recipient)
    lines = identity.read_bytes().splitlines()
    assert lines[0].startswith(b"# created: ")
    assert lines[1] == b"# public key: " + recipient.strip()
    assert re.fullmatch(rb"AGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{58}", lines[2])
    assert run([age_keygen, "-y", str(identity)]) == recipient
    secret = b"encrypted to a generated recipient\n"
    sealed = run([age, "-r", recipient.decode().strip()], input=secret)
    assert run([age, "-d", "-i", str(identity)], input=sealed) == secret


def test_bech32_agrees_with_age_keygen(tmp_path: Path) -> None:
    """Our bech32 decodes what age-keygen wrote, and re-encodes it to the same strings."""
    age_keygen = need("age-keygen")
    out = tmp_path / "k.txt"
    run([age_keygen, "-o", str(out)])
    text = out.read_text().splitlines()
    identity = text[2]
    recipient = text[1].removeprefix("# public key: ")
    scalar = bech32.decode("age-secret-key-", identity)
    assert len(scalar) == 32
    assert bech32.encode("age-secret-key-", scalar).upper() == identity
    assert bech32.encode("age", bech32.decode("age", recipient)) == recipient


# BIP-173 test vectors (https://github.com/bitcoin/bips/blob/master/bip-0173.mediawiki).
BIP173_VALID = [
    "A12UEL5L",
    "a12uel5l",
    "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    "11" + "q" * 82 + "c8247j",
    "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
    "?1ezyfcl",
]
BIP173_INVALID = [
    "\x201nwldj5",  # HRP character out of range
    "\x7f1axkwrx",
    "\x801eym55h",
    "pzry9x0s0muk",  # no separator
    "1pzry9x0s0muk",  # empty HRP
    "x1b4n0q5v",  # invalid data character
    "li1dgmt3",  # too short checksum
    "de1lg7wt\xff",  # invalid character in checksum
    "A1G7SGD8",  # checksum calculated with the uppercase HRP
    "10a06t8",  # empty HRP
    "1qzzfhee",  # empty HRP
]


@pytest.mark.parametrize("text", BIP173_VALID)
def test_bech32_valid_vectors(text: str) -> None:
    hrp, words = bech32.decode_words(text)
    assert hrp == text[: text.lower().rfind("1")].lower()
    assert all(0 <= w < 32 for w in words)


@pytest.mark.parametrize("text", BIP173_INVALID)
def test_bech32_invalid_vectors(text: str) -> None:
    with pytest.raises(bech32.Bech32Error):
        bech32.decode_words(text)


def test_bech32_round_trip_and_checksum() -> None:
    for size in (0, 1, 20, 32, 33, 64):
        data = os.urandom(size)
        encoded = bech32.encode("age", data)
        assert bech32.decode("age", encoded) == data
        assert bech32.decode("age", encoded.upper()) == data
    encoded = bech32.encode("age", bytes(32))
    flipped = encoded[:-1] + ("q" if encoded[-1] != "q" else "p")
    with pytest.raises(bech32.Bech32Error):
        bech32.decode("age", flipped)
    with pytest.raises(bech32.Bech32Error):
        bech32.decode("other", encoded)


# --------------------------------------------------------------------------- raw keys

# PKCS#8 prefixes of a raw 32-byte Ed25519 seed / X25519 scalar (RFC 8410), for openssl.
PKCS8_PREFIX = {
    "ed25519": bytes.fromhex("302e020100300506032b657004220420"),
    "x25519": bytes.fromhex("302e020100300506032b656e04220420"),
}


@pytest.mark.parametrize("kind", ["ed25519", "x25519"])
def test_raw_keys_with_openssl(keys: Keys, tmp_path: Path, kind: str) -> None:
    openssl = need("openssl")
    private = keys.get(f"generate:{kind}?id=raw/{kind}")
    public = keys.get(f"generate:{kind}?id=raw/{kind}#public")
    seed = base64.b64decode(private, validate=True)
    assert len(seed) == 32 and not private.endswith(b"\n")
    der = tmp_path / "key.der"
    der.write_bytes(PKCS8_PREFIX[kind] + seed)
    spki = run([openssl, "pkey", "-inform", "DER", "-in", str(der), "-pubout", "-outform", "DER"])
    assert base64.b64encode(spki[-32:]) == public


# --------------------------------------------------------------------------- TLS


def openssl_text(openssl: str, cert: Path) -> str:
    return run([openssl, "x509", "-noout", "-text", "-in", str(cert)]).decode()


def enddate(openssl: str, cert: Path) -> datetime.datetime:
    out = run([openssl, "x509", "-noout", "-enddate", "-in", str(cert)]).decode().strip()
    when = out.removeprefix("notAfter=")
    return datetime.datetime.strptime(when, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=datetime.UTC)


@pytest.mark.parametrize("algorithm", ["p256", "ed25519", "rsa3072"])
def test_tls_signed_by_ca_with_openssl(keys: Keys, tmp_path: Path, algorithm: str) -> None:
    openssl = need("openssl")
    ca_ref = f"generate:tls-ca?cn=Test%20CA&days=30&key={algorithm}&id=pki/ca"
    leaf_ref = (
        f"generate:tls?cn=web.example&san=DNS:web.example,DNS:*.web.example,IP:10.0.0.1"
        f"&ca=pki/ca&days=7&key={algorithm}&id=pki/web"
    )
    ca = tmp_path / "ca.pem"
    ca.write_bytes(keys.get(ca_ref + "#cert"))
    cert = tmp_path / "cert.pem"
    cert.write_bytes(keys.get(leaf_ref + "#cert"))
    key = keys.write(leaf_ref, tmp_path / "key.pem")
    chain = keys.get(leaf_ref + "#chain")
    assert chain == cert.read_bytes() + ca.read_bytes()
    assert keys.get(ca_ref + "#chain") == ca.read_bytes()

    ca_text = openssl_text(openssl, ca)
    assert "Subject: CN = Test CA" in ca_text
    assert "CA:TRUE, pathlen:0" in ca_text
    assert "Certificate Sign, CRL Sign" in ca_text
    text = openssl_text(openssl, cert)
    assert "Subject: CN = web.example" in text
    assert "Issuer: CN = Test CA" in text
    assert "DNS:web.example, DNS:*.web.example, IP Address:10.0.0.1" in text
    assert "CA:FALSE" in text
    assert "TLS Web Server Authentication" in text
    now = datetime.datetime.now(datetime.UTC)
    assert abs(enddate(openssl, cert) - (now + datetime.timedelta(days=7))) < datetime.timedelta(
        minutes=5
    )
    assert abs(enddate(openssl, ca) - (now + datetime.timedelta(days=30))) < datetime.timedelta(
        minutes=5
    )
    verified = run([openssl, "verify", "-CAfile", str(ca), str(cert)])
    assert verified.strip().endswith(b": OK")
    # The key, the certificate and #public are one generation.
    from_key = run([openssl, "pkey", "-in", str(key), "-pubout"])
    from_cert = run([openssl, "x509", "-noout", "-pubkey", "-in", str(cert)])
    assert from_key == from_cert == keys.get(leaf_ref + "#public")
    ca_key = keys.write(ca_ref, tmp_path / "ca-key.pem")
    assert run([openssl, "pkey", "-in", str(ca_key), "-pubout"]) == keys.get(ca_ref + "#public")


def test_tls_self_signed_and_clamped_to_ca(keys: Keys, tmp_path: Path) -> None:
    openssl = need("openssl")
    cert = tmp_path / "self.pem"
    ref = "generate:tls?cn=db.internal&id=pki/db"
    cert.write_bytes(keys.get(ref + "#cert"))
    text = openssl_text(openssl, cert)
    assert "Subject: CN = db.internal" in text and "Issuer: CN = db.internal" in text
    assert "DNS:db.internal" in text  # no san=: the CN as the one name
    assert "Public Key Algorithm: id-ecPublicKey" in text and "prime256v1" in text
    assert keys.get(ref + "#chain") == cert.read_bytes()
    # A certificate never outlives the CA that signed it.
    ca = tmp_path / "ca.pem"
    ca.write_bytes(keys.get("generate:tls-ca?cn=Short&days=2&id=pki/short#cert"))
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(keys.get("generate:tls?cn=x.example&ca=pki/short&days=365&id=pki/x#cert"))
    assert enddate(openssl, leaf) == enddate(openssl, ca)
    assert run([openssl, "verify", "-CAfile", str(ca), str(leaf)]).strip().endswith(b": OK")


def test_tls_ca_must_exist(keys: Keys) -> None:
    result = run_cli("get", "generate:tls?cn=a.example&ca=pki/none&id=pki/a", env=keys.env)
    assert result.returncode == 5
    assert b"no tls-ca in the store under 'pki/none'" in result.stderr
    assert not (keys.store / "pki" / "a").exists()


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ("generate:ssh-ed25519#cert", "has no part 'cert'"),
        ("generate:ssh-rsa?bits=2048", "bits='2048' is not one of 3072, 4096"),
        ("generate:ssh-ecdsa?curve=p192", "is not one of p256, p384, p521"),
        ("generate:wireguard?comment=x", "does not apply to generate:wireguard"),
        ("generate:tls-ca", "needs a common name"),
        ("generate:tls?cn=a&san=URI:x", "is not DNS:HOSTNAME or IP:ADDRESS"),
        ("generate:tls?cn=a&san=IP:300.1.1.1", "not an IP address"),
        ("generate:tls?cn=a&key=dsa", "is not one of"),
        ("generate:tls?cn=a&ca=../x", "invalid store key"),
        ("generate:tls?cn=a&days=0", "outside 1..36500"),
        ("generate:base64#public", "take no '#selector'"),
        ("generate:ssh-ed25519?comment=a%0Ab", "control character"),
    ],
)
def test_bad_key_references(reference: str, problem: str) -> None:
    result = run_cli("get", reference)
    assert result.returncode == 4, result.stderr
    err = result.stderr.decode()
    assert problem in err and "Traceback" not in err and err.count("\n") == 1


def test_plain_commands_do_not_import_cryptography(tmp_path: Path, tmpfs_dir: Path) -> None:
    config = tmp_path / "credbridge.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "store"}"\n[sinks.credstore]\ndirectory = "{tmpfs_dir}"\n'
        '[targets."app.service".credentials]\na = "generate:base64"\n'
    )
    probe = (
        "import sys\n"
        "from credbridge.core.cli import cli\n"
        "try:\n"
        f"    cli(['-c', {str(config)!r}, 'deliver'], prog_name='credbridge')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "assert 'cryptography' not in sys.modules, 'cryptography was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()


# --------------------------------------------------------------------------- store semantics


def test_one_document_per_key_generated_once(keys: Keys, tmp_path: Path) -> None:
    ssh_keygen = need("ssh-keygen")
    ref = "generate:ssh-ed25519?id=vm/host"
    first = keys.get(ref)
    assert keys.get(ref) == first  # generated once
    stored = keys.store / "vm" / "host" / "current"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o400
    document = json.loads(stored.read_bytes())
    assert document["credbridge-document"] == 1
    assert document["kind"] == "ssh-ed25519"
    assert set(document["parts"]) == {"key", "public"}
    assert document["parts"]["key"].encode() == first
    # stored: reads the same document; #key is the default part.
    assert keys.get("stored:vm/host") == first
    assert keys.get("stored:vm/host#key") == first
    private = tmp_path / "key"
    private.write_bytes(first)
    private.chmod(0o600)
    assert run([ssh_keygen, "-y", "-f", str(private)]) == keys.get("stored:vm/host#public")


def test_rotate_keeps_the_previous_document_whole(
    keys: Keys, tmp_path: Path, tmpfs_dir: Path
) -> None:
    wg = need("wg")
    config = tmp_path / "credbridge.toml"
    config.write_text(
        f'[store]\npath = "{keys.store}"\n[sinks.credstore]\ndirectory = "{tmpfs_dir}"\n'
        '[targets."wg.service".credentials]\n'
        'private = "generate:wireguard?id=vm/wg"\n'
        'public = { ref = "generate:wireguard?id=vm/wg#public", mode = "0444" }\n'
    )
    assert run_cli("-c", str(config), "deliver").returncode == 0
    delivered = tmpfs_dir / "wg.service"
    old_private = (delivered / "private").read_bytes()
    old_public = (delivered / "public").read_bytes()
    assert stat.S_IMODE((delivered / "public").stat().st_mode) == 0o444
    assert stat.S_IMODE((delivered / "private").stat().st_mode) == 0o400
    rotated = run_cli("-c", str(config), "rotate", "wg.service", "public")
    assert rotated.returncode == 0, rotated.stderr
    assert run_cli("-c", str(config), "deliver").returncode == 0
    new_private = (delivered / "private").read_bytes()
    new_public = (delivered / "public").read_bytes()
    assert new_private != old_private and new_public != old_public
    assert run([wg, "pubkey"], input=new_private) == new_public
    previous = "stored:vm/wg?version=previous"
    assert keys.get(previous) == old_private
    assert keys.get(previous + "#public") == old_public
    assert run([wg, "pubkey"], input=keys.get(previous)) == keys.get(previous + "#public")


def test_kind_change_is_refused_until_rotate(keys: Keys) -> None:
    keys.get("generate:base64?id=app/x")
    changed = run_cli("get", "generate:ssh-ed25519?id=app/x", env=keys.env)
    assert changed.returncode == 5
    assert b"holds a random value, not a ssh-ed25519 key; 'credbridge rotate'" in changed.stderr
    keys.get("generate:age?id=app/y")
    back = run_cli("get", "generate:hex?id=app/y", env=keys.env)
    assert back.returncode == 5
    assert b"holds a age key, not a generate:hex value" in back.stderr
    assert b"AGE-SECRET" not in back.stdout + back.stderr


def test_stored_public_of_a_random_value_is_refused(keys: Keys) -> None:
    keys.get("generate:base64?id=app/r")
    result = run_cli("get", "stored:app/r#public", env=keys.env)
    assert result.returncode == 5
    assert b"not a key" in result.stderr


def test_concurrent_runs_agree_on_one_generation(keys: Keys, tmp_path: Path) -> None:
    """Eight real processes race to create one key, half reading #key and half #public.

    Every process must see the same document: one private key, and the public half of
    exactly that key.
    """
    ssh_keygen = need("ssh-keygen")
    ref = "generate:ssh-ed25519?id=race/host&comment=race"
    env = dict(os.environ, CREDBRIDGE_STORE=str(keys.store))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "credbridge.core.cli",
                "get",
                ref + ("#public" if i % 2 else ""),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for i in range(8)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outputs]
    privates = {out for i, (out, _) in enumerate(outputs) if i % 2 == 0}
    publics = {out for i, (out, _) in enumerate(outputs) if i % 2 == 1}
    assert len(privates) == 1 and len(publics) == 1
    private = tmp_path / "key"
    private.write_bytes(privates.pop())
    private.chmod(0o600)
    assert run([ssh_keygen, "-y", "-f", str(private)]) == publics.pop()


def test_concurrent_deliveries_of_a_ca_and_its_certificate(tmp_path: Path, tmpfs_dir: Path) -> None:
    """Four `credbridge deliver` processes at once: one CA, one certificate it signed."""
    openssl = need("openssl")
    store = tmp_path / "store"
    procs = []
    for index in range(4):
        config = tmp_path / f"c{index}.toml"
        config.write_text(
            f'[store]\npath = "{store}"\n[sinks.credstore]\ndirectory = "{tmpfs_dir / str(index)}"\n'
            '[targets."web.service".credentials]\n'
            'key = "generate:tls?cn=web.example&ca=pki/ca&id=pki/web"\n'
            'cert = "generate:tls?cn=web.example&ca=pki/ca&id=pki/web#cert"\n'
            'ca = "generate:tls-ca?cn=Race%20CA&id=pki/ca#cert"\n'
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "credbridge.core.cli", "-c", str(config), "deliver"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    sets = [
        {n: (tmpfs_dir / str(i) / "web.service" / n).read_bytes() for n in ("key", "cert", "ca")}
        for i in range(4)
    ]
    assert all(s == sets[0] for s in sets)
    base = tmpfs_dir / "0" / "web.service"
    assert run([openssl, "verify", "-CAfile", str(base / "ca"), str(base / "cert")]).endswith(
        b": OK\n"
    )
    from_key = run([openssl, "pkey", "-in", str(base / "key"), "-pubout"])
    assert from_key == run([openssl, "x509", "-noout", "-pubkey", "-in", str(base / "cert")])


# --------------------------------------------------------------------------- public parts


def test_world_readable_mode_only_for_public_parts(tmp_path: Path, tmpfs_dir: Path) -> None:
    def load(body: str) -> subprocess.CompletedProcess[bytes]:
        config = tmp_path / "credbridge.toml"
        config.write_text(
            f'[store]\npath = "{tmp_path / "store"}"\n'
            f'[sinks.credstore]\ndirectory = "{tmpfs_dir}"\n[targets."a.service".credentials]\n'
            + body
        )
        return run_cli("-c", str(config), "deliver")

    for body in (
        'k = { ref = "generate:ssh-ed25519?id=k", mode = "0444" }\n',
        'k = { ref = "generate:ssh-ed25519?id=k#key", mode = "0444" }\n',
        'k = { ref = "stored:k", mode = "0444" }\n',
        'k = { ref = "generate:base64", mode = "0444" }\n',
        'k = { ref = "env:HOME", mode = "0444" }\n',
        'p = "generate:ssh-ed25519?id=k"\nk = { ref = "target:a.service/p", mode = "0444" }\n',
    ):
        result = load(body)
        assert result.returncode == 3, (body, result.stderr)
        err = result.stderr.decode()
        assert 'targets."a.service".credentials.k.mode' in err
        assert "would make a secret world-readable" in err
    for body, names in (
        ('k = { ref = "generate:ssh-ed25519?id=k#public", mode = "0444" }\n', ["k"]),
        (
            'c = { ref = "generate:tls-ca?cn=CA&id=ca#cert", mode = "0444" }\n'
            'ch = { ref = "generate:tls-ca?cn=CA&id=ca#chain", mode = "0444" }\n'
            'l = { ref = "target:a.service/c", mode = "0444" }\n',
            ["c", "ch", "l"],
        ),
        ('p = { ref = "stored:ca#public", mode = "0444" }\n', ["p"]),
    ):
        result = load(body)
        assert result.returncode == 0, (body, result.stderr)
        for name in names:
            path = tmpfs_dir / "a.service" / name
            assert stat.S_IMODE(path.stat().st_mode) == 0o444


def run_on_terminal(args: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """Run the CLI with a pseudo-terminal as stdout; return its code, terminal output, stderr."""
    primary, secondary = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "credbridge.core.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=subprocess.PIPE,
        env=dict(os.environ, **env),
    )
    os.close(secondary)
    _out, err = proc.communicate(timeout=60)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO once the terminal's other side is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    return proc.returncode, b"".join(chunks), err


def test_get_refuses_a_secret_on_a_terminal(keys: Keys) -> None:
    ref = "generate:ssh-ed25519?id=tty/key"
    code, shown, err = run_on_terminal(["get", ref], keys.env)
    assert code == 2, err
    assert b"refusing to print a secret to a terminal" in err and b"--reveal" in err
    assert b"PRIVATE KEY" not in shown
    assert not (keys.store / "tty").exists()  # refused before anything was generated
    code, shown, err = run_on_terminal(["get", ref + "#public"], keys.env)
    assert code == 0, err
    assert shown.startswith(b"ssh-ed25519 AAAA")
    code, shown, err = run_on_terminal(["get", "--reveal", ref], keys.env)
    assert code == 0, err
    assert b"BEGIN OPENSSH PRIVATE KEY" in shown
    code, _shown, err = run_on_terminal(["get", "generate:base64"], keys.env)
    assert code == 2 and b"refusing" in err
    # Pipes are fine.
    assert keys.get(ref).startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")


def test_export_public_parts(keys: Keys, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / "known_hosts.d-vm"
    ref = "generate:ssh-ed25519?id=vm/host&comment=vm#public"
    old_umask = os.umask(0o077)  # the file is 0644 whatever the umask
    try:
        result = run_cli("export", ref, str(target), env=keys.env)
    finally:
        os.umask(old_umask)
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == keys.get(ref)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in out.iterdir()] == [target.name]  # no temp file left
    # Replaced atomically by a later export (new inode, never a partial file).
    inode = target.stat().st_ino
    again = run_cli("export", "generate:tls-ca?cn=CA&id=ca#cert", str(target), env=keys.env)
    assert again.returncode == 0, again.stderr
    assert target.stat().st_ino != inode
    assert target.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")


@pytest.mark.parametrize(
    "reference",
    ["generate:ssh-ed25519?id=vm/host", "stored:vm/host", "generate:wireguard?id=w#key"],
)
def test_export_refuses_secrets(keys: Keys, tmp_path: Path, reference: str) -> None:
    keys.get("generate:ssh-ed25519?id=vm/host")
    target = tmp_path / "out"
    result = run_cli("export", reference, str(target), env=keys.env)
    assert result.returncode == 4, result.stderr
    assert b"selects a secret" in result.stderr
    assert not target.exists()


def test_export_follows_no_symlink(keys: Keys, tmp_path: Path) -> None:
    ref = "generate:ssh-ed25519?id=vm/host#public"
    victim = tmp_path / "victim"
    victim.write_text("unchanged\n")
    link = tmp_path / "link"
    link.symlink_to(victim)
    result = run_cli("export", ref, str(link), env=keys.env)
    assert result.returncode == 9, result.stderr
    assert b"is a symlink" in result.stderr
    assert victim.read_text() == "unchanged\n" and link.is_symlink()
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    (tmp_path / "dirlink").symlink_to(real_dir)
    result = run_cli("export", ref, str(tmp_path / "dirlink" / "pub"), env=keys.env)
    assert result.returncode == 9, result.stderr
    assert b"dirlink is a symlink" in result.stderr
    assert not any(real_dir.iterdir())


def test_plans_and_checks_show_public_parts_only(
    tmp_path: Path, tmpfs_dir: Path, canary: Canary
) -> None:
    config = tmp_path / "credbridge.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "store"}"\n[sinks.credstore]\ndirectory = "{tmpfs_dir}"\n'
        '[targets."vm.service".credentials]\n'
        'host-key = "generate:ssh-ed25519?id=vm/host"\n'
        'host-pub = "generate:ssh-ed25519?id=vm/host#public"\n'
        'cert = "generate:tls?cn=vm.example&id=vm/tls#cert"\n'
    )
    # Before anything exists: nothing is generated, nothing is shown.
    plan = run_cli("-c", str(config), "deliver", "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    assert all(e["public"] is None for e in json.loads(plan.stdout)["entries"])
    assert not (tmp_path / "store").exists()
    assert run_cli("-c", str(config), "deliver").returncode == 0
    delivered = tmpfs_dir / "vm.service"
    private = (delivered / "host-key").read_bytes()
    public = (delivered / "host-pub").read_bytes().decode()
    cert = (delivered / "cert").read_bytes().decode()
    canary.declare_public(public)  # shown by check and --dry-run --json, by design
    canary.declare_public(cert)

    outputs = []
    plan = run_cli("-vv", "-c", str(config), "deliver", "--dry-run", "--json")
    entries = {e["credential"]: e for e in json.loads(plan.stdout)["entries"]}
    assert entries["host-pub"]["public"] == public
    assert entries["cert"]["public"] == cert
    assert entries["host-key"]["public"] is None
    outputs.append(plan.stdout + plan.stderr)
    check = run_cli("-vv", "-c", str(config), "check")
    assert check.returncode == 0, check.stderr
    lines = {line.split("\t")[1]: line for line in check.stdout.decode().splitlines()}
    assert lines["vm.service/host-pub"].endswith(f"readable, public: {public.strip()}")
    assert lines["vm.service/cert"].endswith(f"readable, public: {cert.count(chr(10))} lines")
    assert lines["vm.service/host-key"].endswith("\treadable")
    outputs.append(check.stdout + check.stderr)
    check_json = run_cli("-c", str(config), "check", "--json")
    results = {r["credential"]: r for r in json.loads(check_json.stdout)["results"]}
    assert results["host-pub"]["public"] == public and results["host-key"]["public"] is None
    outputs.append(check_json.stdout)
    for args in (["deliver", "--dry-run"], ["deliver"], ["deliver", "--json"]):
        result = run_cli("-vv", "-c", str(config), *args)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
    body = b"".join(private.splitlines()[1:-1])  # the base64 of the private key
    for output in outputs:
        assert b"PRIVATE KEY" not in output
        for line in private.splitlines()[1:-1]:
            assert line not in output
        assert body[:40] not in output
