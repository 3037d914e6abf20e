"""Every generator draws fresh randomness: no two values alike, no byte value favoured (issue 26).

The other key tests check each key against the tool that consumes it (``age-keygen -y``,
``wg pubkey``, ``ssh-keygen -y``, ``openssl``), which a generator that always returns the same
key passes: every machine would get the same key. These tests draw many values of every
generator -- in one process, under different store ids, and in separate ``credbridge`` runs --
and check that they all differ and that their random bytes look uniform.

The uniformity check (:func:`assert_uniform`) is a sanity check, not a randomness test suite: it
counts each symbol (byte value, hex digit, password character) over a few thousand draws and
requires every count within ``(1 ± δ)·μ`` of its mean ``μ``. ``δ`` comes from the Chernoff
bounds of a binomial count, ``P(X ≥ (1+δ)μ) ≤ exp(-δ²μ/(2+δ))`` and ``P(X ≤ (1-δ)μ) ≤
exp(-δ²μ/2)``, summed over every symbol (a union bound) and set so that the sum is at most
``1e-9``: a correct generator fails one such check less than once in a billion runs. Every
sample here is large enough for ``δ < 0.75``, so a constant generator fails with certainty, and
so does one that never draws a symbol of its alphabet or draws one twice as often as it should.

"Never repeat" has its own false-failure chance, the birthday bound ``n²/2 / 2^bits``: every
value checked here has at least 122 random bits (a UUID), so for a few thousand values it is
below 1e-29; the 48-bit tokens of temp and staging names are checked over at most 400 names
(below 3e-10).
"""

from __future__ import annotations

import base64
import collections
import datetime
import json
import math
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest
from conftest import run_cli
from credbridge.backends import bech32, keygen
from credbridge.backends.generators import CHARSETS, generate
from credbridge.core.reference import parse_reference
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

FAILURE_PROBABILITY = 1e-9
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def chernoff_slack(mean: float, symbols: int, failure: float = FAILURE_PROBABILITY) -> float:
    """The smallest ``δ`` (in steps of 0.001) for which a correct generator's counts leave
    ``(1 ± δ)·mean`` with probability at most ``failure`` (union bound over ``symbols``)."""
    delta = 0.001
    while (
        symbols
        * (math.exp(-delta * delta * mean / (2 + delta)) + math.exp(-delta * delta * mean / 2))
        > failure
    ):
        delta += 0.001
    return delta


def assert_uniform(samples: Iterable[int | str], alphabet: Sequence[int | str], what: str) -> None:
    """Every symbol of ``alphabet`` about equally often in ``samples`` (see the module doc)."""
    counts = collections.Counter(samples)
    assert set(counts) <= set(alphabet), f"{what}: symbols outside the alphabet"
    total = sum(counts.values())
    mean = total / len(alphabet)
    delta = chernoff_slack(mean, len(alphabet))
    # Large enough that a symbol never drawn, or drawn twice as often as it should, fails.
    assert delta < 0.75, f"{what}: {total} samples are too few for {len(alphabet)} symbols"
    low, high = (1 - delta) * mean, (1 + delta) * mean
    outside = [s for s in alphabet if not low <= counts.get(s, 0) <= high]
    assert not outside, (
        f"{what}: {len(outside)} of {len(alphabet)} symbols drawn outside "
        f"[{low:.0f}, {high:.0f}] times in {total} (mean {mean:.0f}); "
        f"most common count {counts.most_common(1)[0][1]}"
    )


def assert_all_differ(values: Sequence[bytes | str | int], what: str) -> None:
    """No value twice (the message names counts only: these are secrets)."""
    repeated = len(values) - len(set(values))
    assert repeated == 0, f"{what}: {repeated} of {len(values)} values repeat an earlier one"


BYTE_VALUES = range(256)
HEX_DIGITS = "0123456789abcdef"


def draw(reference: str, count: int) -> list[bytes]:
    parsed = parse_reference(reference)
    return [generate(parsed).reveal() for _ in range(count)]


# --------------------------------------------------------------------------- random values


RAW_DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "bytes": lambda value: value,
    "hex": lambda value: bytes.fromhex(value.decode("ascii")),
    "base64": base64.b64decode,
}


@pytest.mark.parametrize("kind", sorted(RAW_DECODERS))
def test_random_values_never_repeat_and_their_bytes_are_uniform(kind: str) -> None:
    """4,000 draws of 32 bytes: 128,000 bytes, mean 500 per byte value, δ = 0.352."""
    values = draw(f"generate:{kind}", 4000)
    assert_all_differ(values, f"generate:{kind}")
    raw = [RAW_DECODERS[kind](value) for value in values]
    assert {len(r) for r in raw} == {32}
    assert_uniform((byte for r in raw for byte in r), BYTE_VALUES, f"generate:{kind} bytes")


def test_one_byte_values_are_uniform() -> None:
    """``?bytes=1`` 64,000 times (mean 250 per byte value, δ = 0.514): the size option does
    not fix the drawn bytes."""
    values = draw("generate:bytes?bytes=1", 64000)
    assert {len(value) for value in values} == {1}
    assert_uniform((value[0] for value in values), BYTE_VALUES, "generate:bytes?bytes=1")


@pytest.mark.parametrize("charset", sorted(CHARSETS))
def test_passwords_never_repeat_and_use_their_charset_uniformly(charset: str) -> None:
    """1,000 passwords of 64 characters: 64,000 characters over at most 94 symbols (mean at
    least 680 per character, δ at most 0.292)."""
    values = draw(f"generate:password?charset={charset}&length=64", 1000)
    assert_all_differ(values, f"password {charset}")
    assert_uniform(
        (c for value in values for c in value.decode()), CHARSETS[charset], f"password {charset}"
    )


def test_uuids_are_version_4_never_repeat_and_their_random_digits_are_uniform() -> None:
    """4,000 UUIDs; the 30 hex digits that are not the version and variant (120,000 digits,
    mean 7,500 per digit, δ = 0.082)."""
    values = [value.decode() for value in draw("generate:uuid", 4000)]
    assert_all_differ(values, "generate:uuid")
    parsed = [uuid.UUID(value) for value in values]
    assert {u.version for u in parsed} == {4}
    random_digits = [digit for u in parsed for i, digit in enumerate(u.hex) if i not in (12, 16)]
    assert_uniform(random_digits, HEX_DIGITS, "generate:uuid digits")


# --------------------------------------------------------------------------- keys


def _scalar_bytes(parts: dict[str, str], kind: str) -> bytes:
    """The random private scalar of an X25519-family key, as 32 bytes."""
    if kind == "age":
        line = parts["key"].strip().splitlines()[-1]
        return bech32.decode(keygen.AGE_IDENTITY_HRP, line.lower())
    return base64.b64decode(parts["key"])


X25519_FAMILY: dict[str, Callable[[], dict[str, str]]] = {
    "wireguard": keygen.wireguard_key,
    "age": lambda: keygen.age_key(NOW),
    "x25519": lambda: keygen.raw_key("x25519"),
    "ed25519": lambda: keygen.raw_key("ed25519"),
}


@pytest.mark.parametrize("kind", sorted(X25519_FAMILY))
def test_curve25519_keys_never_repeat_and_their_scalars_are_uniform(kind: str) -> None:
    """2,000 keys; bytes 1 to 30 of each private scalar (0 and 31 are clamped for X25519):
    60,000 bytes, mean 234 per byte value, δ = 0.533. The public keys must differ too."""
    keys = [X25519_FAMILY[kind]() for _ in range(2000)]
    scalars = [_scalar_bytes(parts, kind) for parts in keys]
    assert {len(s) for s in scalars} == {32}
    assert_all_differ(scalars, f"{kind} private keys")
    assert_all_differ([parts["public"] for parts in keys], f"{kind} public keys")
    assert_uniform((b for s in scalars for b in s[1:31]), BYTE_VALUES, f"{kind} scalar bytes")


def _private_number(pem: str) -> bytes:
    """The random part of a private key, as bytes: the seed of an Ed25519 key, the scalar of
    an ECDSA key, the modulus of an RSA key."""
    data = pem.encode()
    key = (
        serialization.load_ssh_private_key(data, password=None)
        if "OPENSSH" in pem
        else serialization.load_pem_private_key(data, password=None)
    )
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.private_bytes_raw()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.private_numbers().private_value.to_bytes((key.curve.key_size + 7) // 8, "big")
    assert isinstance(key, rsa.RSAPrivateKey)
    modulus = key.private_numbers().public_numbers.n
    return modulus.to_bytes((modulus.bit_length() + 7) // 8, "big")


SSH_FAST = {  # options, keys drawn: p384 and p521 take 5-20 times as long as p256
    "ssh-ed25519": ({}, 2000),
    "ssh-ecdsa p256": ({"curve": "p256"}, 2000),
    "ssh-ecdsa p384": ({"curve": "p384"}, 50),
    "ssh-ecdsa p521": ({"curve": "p521"}, 50),
}


@pytest.mark.parametrize("variant", sorted(SSH_FAST))
def test_ssh_keys_never_repeat_and_their_private_numbers_are_uniform(variant: str) -> None:
    """Keys never repeat; for the 2,000 ssh-ed25519 and ssh-ecdsa p256 keys, every byte but
    the most significant of each private number (the Ed25519 seed; the ECDSA scalar, uniform
    below the group order: only its top byte is skewed) is counted: 62,000 bytes, mean 242
    per byte value, δ = 0.524. The other curves draw through the same call as p256, so 50
    keys each show the curve option does not fix the key."""
    kind = variant.split()[0]
    options, count = SSH_FAST[variant]
    keys = [keygen.ssh_key(kind, **options) for _ in range(count)]
    numbers = [_private_number(parts["key"]) for parts in keys]
    assert_all_differ(numbers, f"{variant} private keys")
    assert_all_differ([parts["public"] for parts in keys], f"{variant} public keys")
    if count >= 2000:
        assert_uniform((b for n in numbers for b in n[1:]), BYTE_VALUES, f"{variant} key bytes")


def _assert_distinct_moduli(pems: Sequence[str], what: str) -> None:
    """Different RSA keys, sharing no prime (a weak generator's typical failure: the gcd of
    two moduli then factors both)."""
    moduli = [int.from_bytes(_private_number(pem), "big") for pem in pems]
    assert_all_differ(moduli, what)
    for index, first in enumerate(moduli):
        for second in moduli[index + 1 :]:
            assert math.gcd(first, second) == 1, f"{what}: two keys share a prime"


def test_ssh_rsa_keys_differ() -> None:
    """Two 3072-bit keys (about a second each here): RSA keys are too slow to draw by the
    thousand, and every size goes through the same call, so two differing keys that share no
    prime are what this can check."""
    keys = [keygen.ssh_key("ssh-rsa", bits=3072) for _ in range(2)]
    _assert_distinct_moduli([parts["key"] for parts in keys], "ssh-rsa")


TLS_FAST = {"p256": 100, "p384": 20, "ed25519": 100}  # keys drawn of each kind


def _serial(parts: dict[str, str]) -> int:
    return x509.load_pem_x509_certificate(parts["cert"].encode()).serial_number


@pytest.mark.parametrize("algorithm", sorted(TLS_FAST))
def test_tls_keys_and_serials_never_repeat(algorithm: str) -> None:
    """CAs, certificates signed by one of them and self-signed ones: keys and serial numbers
    all differ (a CA that issues two certificates with one serial breaks revocation). The
    serials' bytes are counted below, over 2,000 certificates."""
    count = TLS_FAST[algorithm]
    cas = [keygen.tls_ca(cn="ca", days=30, algorithm=algorithm, now=NOW) for _ in range(count)]
    signer = cas[0]
    certs = [
        keygen.tls_cert(
            cn="host.example",
            sans=[("DNS", "host.example")],
            days=30,
            algorithm=algorithm,
            now=NOW,
            ca=signer,
        )
        for _ in range(count)
    ]
    self_signed = [
        keygen.tls_cert(cn="h", sans=[], days=30, algorithm=algorithm, now=NOW, ca=None)
        for _ in range(count)
    ]
    for what, batch in (("tls-ca", cas), ("tls signed", certs), ("tls self-signed", self_signed)):
        assert_all_differ([_private_number(parts["key"]) for parts in batch], f"{what} keys")
        assert_all_differ([_serial(parts) for parts in batch], f"{what} serials")


def test_tls_serial_bytes_are_uniform() -> None:
    """2,000 serial numbers (CAs and certificates alike): bytes 1 to 19 of each serial as 20
    bytes (the first is at most 0x7f: 160 random bits shifted right once, a positive number of
    at most 159 bits): 38,000 bytes, mean 148 per byte value, δ = 0.690."""
    serials = [
        _serial(keygen.tls_ca(cn="ca", days=30, algorithm="ed25519", now=NOW)) for _ in range(1000)
    ]
    ca = keygen.tls_ca(cn="ca", days=30, algorithm="ed25519", now=NOW)
    serials += [
        _serial(keygen.tls_cert(cn="h", sans=[], days=30, algorithm="ed25519", now=NOW, ca=ca))
        for _ in range(1000)
    ]
    assert_all_differ(serials, "tls serials")
    assert_uniform(
        (b for s in serials for b in s.to_bytes(20, "big")[1:]), BYTE_VALUES, "tls serial bytes"
    )


def test_tls_rsa_keys_differ() -> None:
    """Two rsa3072 certificates: different keys sharing no prime, different serials."""
    certs = [
        keygen.tls_cert(cn="h", sans=[], days=30, algorithm="rsa3072", now=NOW, ca=None)
        for _ in range(2)
    ]
    _assert_distinct_moduli([parts["key"] for parts in certs], "tls rsa3072")
    assert_all_differ([_serial(parts) for parts in certs], "tls rsa3072 serials")


# --------------------------------------------------------------------------- names


def test_temp_file_names_never_repeat_and_their_digits_are_uniform(tmp_path: Path) -> None:
    """4,000 temp names: 48,000 hex digits, mean 3,000 per digit, δ = 0.130. The token has 48
    bits, so only the first 400 are checked for repeats (a fair chance of one is at most
    400²/2 / 2⁴⁸ ≈ 3e-10). Nothing relies on the names being unguessable (they are made with
    ``O_EXCL`` in directories only root or this user can write), but a repeated name would
    collide with a crash leftover."""
    from credbridge.core.fsutil import is_temp_name, temp_name

    names = [temp_name(tmp_path, "current").name for _ in range(4000)]
    assert_all_differ(names[:400], "temp names")
    assert all(is_temp_name(name) for name in names)
    tokens = [name.split(".")[2] for name in names]
    assert_uniform((c for token in tokens for c in token), HEX_DIGITS, "temp name digits")


def test_staging_directory_names_never_repeat(tmp_path: Path, tmpfs_dir: Path) -> None:
    """Staging the same target again while the first staging is still there (a library user
    delivering twice, or a second sink instance) makes a second directory, not a collision."""
    from credbridge.core import Delivery, Secret
    from credbridge.core.config import load_config
    from credbridge.core.engine import Session

    config_path = tmp_path / "c.toml"
    config_path.write_text(
        f'[sinks.credstore]\ndirectory = "{tmpfs_dir / "cs"}"\n'
        '[targets."app.service".credentials]\ndb = "generate:hex"\n'
    )
    with Session(load_config(config_path)) as session:
        sink = session.sink(session.config.target("app.service"))
        delivery = Delivery("db", Secret(b"value-0123456789"), 0o400, None, None)
        staged = [sink.stage([delivery]) for _ in range(50)]
        try:
            names = [entry.name for entry in (tmpfs_dir / "cs").iterdir()]
            assert len([name for name in names if ".staging-" in name]) == 50
        finally:
            for item in staged:
                item.rollback()


# --------------------------------------------------------------------------- real runs


GENERATED = {
    "base64": "generate:base64",
    "hex": "generate:hex",
    "bytes": "generate:bytes",
    "password": "generate:password",
    "uuid": "generate:uuid",
    "ssh-ed25519": "generate:ssh-ed25519",
    "ssh-ecdsa": "generate:ssh-ecdsa",
    "wireguard": "generate:wireguard",
    "age": "generate:age",
    "ed25519": "generate:ed25519",
    "x25519": "generate:x25519",
    "tls-ca": "generate:tls-ca?cn=ca",
    "tls": "generate:tls?cn=host.example",
}
"""Every generator but ssh-rsa and the rsa TLS keys: RSA keys take about a second each and
draw through the same random generator as the others (their own test is above)."""


def _store_values(store: Path) -> dict[str, bytes]:
    return {
        str(path.parent.relative_to(store)): path.read_bytes() for path in store.rglob("current")
    }


def _parts(value: bytes) -> dict[str, str]:
    if value.startswith(b'{"credbridge-document":'):
        parts: dict[str, str] = json.loads(value)["parts"]
        return parts
    return {"key": value.decode("latin-1")}


def test_real_runs_generate_different_values_under_every_id(
    tmp_path: Path, tmpfs_dir: Path
) -> None:
    """Two ``credbridge deliver`` runs, each with its own store, each generating every kind
    three times under different store ids (two by ``?id=``, one by the credential's name), and
    two CA-signed certificates: every private key, public key and certificate serial of a
    kind differs, within a run and across the runs."""
    lines = ['[targets."app.service".credentials]']
    for kind, reference in GENERATED.items():
        joiner = "&" if "?" in reference else "?"
        lines += [
            f'"{kind}-a" = "{reference}{joiner}id=ids/{kind}-a"',
            f'"{kind}-b" = "{reference}{joiner}id=ids/{kind}-b"',
            f'"{kind}-c" = "{reference}"',
        ]
    lines += [
        '"signed-a" = "generate:tls?cn=a.example&ca=ids/tls-ca-a"',
        '"signed-b" = "generate:tls?cn=b.example&ca=ids/tls-ca-a"',
    ]
    runs: list[dict[str, bytes]] = []
    for run in ("one", "two"):
        root = tmp_path / run
        root.mkdir()
        config = root / "c.toml"
        config.write_text(
            f'[store]\npath = "{root / "store"}"\n'
            f'[sinks.credstore]\ndirectory = "{tmpfs_dir / run}"\n' + "\n".join(lines) + "\n"
        )
        result = run_cli("-c", str(config), "deliver")
        assert result.returncode == 0, result.stderr.decode()
        runs.append(_store_values(root / "store"))
    assert len(runs[0]) == len(runs[1]) == 3 * len(GENERATED) + 2
    families = {
        kind: [f"ids/{kind}-a", f"ids/{kind}-b", f"app.service/{kind}-c"] for kind in GENERATED
    }
    families["tls"] += ["app.service/signed-a", "app.service/signed-b"]
    for kind, keys in families.items():
        documents = [_parts(run[key]) for run in runs for key in keys]
        assert_all_differ([parts["key"] for parts in documents], f"{kind} over ids and runs")
        if "public" in documents[0]:
            assert_all_differ([p["public"] for p in documents], f"{kind} public over ids and runs")
        if "cert" in documents[0]:
            assert_all_differ([_serial(p) for p in documents], f"{kind} serials over ids and runs")


def test_statistics_helpers_refuse_a_constant_and_a_partial_alphabet() -> None:
    """The checks above can fail: a constant, a generator that never draws one symbol, and a
    repeated value are each refused; a fair sample of the same size is not."""
    fair = os.urandom(64000)
    assert_uniform(fair, BYTE_VALUES, "fair")
    with pytest.raises(AssertionError, match="symbols drawn outside"):
        assert_uniform(bytes(64000), BYTE_VALUES, "constant")
    with pytest.raises(AssertionError, match="symbols drawn outside"):
        assert_uniform(bytes(b % 255 for b in fair), BYTE_VALUES, "no 255")
    with pytest.raises(AssertionError, match="repeat an earlier one"):
        assert_all_differ([b"a", b"b", b"a"], "repeated")
    # The slack is the smallest that keeps a fair sample's failure under 1e-9.
    for mean, symbols in ((250, 256), (500, 256), (7500, 16)):
        delta = chernoff_slack(mean, symbols)
        bound = symbols * (
            math.exp(-delta * delta * mean / (2 + delta)) + math.exp(-delta * delta * mean / 2)
        )
        tighter = delta - 0.001
        above = symbols * (
            math.exp(-tighter * tighter * mean / (2 + tighter))
            + math.exp(-tighter * tighter * mean / 2)
        )
        assert bound <= FAILURE_PROBABILITY < above
