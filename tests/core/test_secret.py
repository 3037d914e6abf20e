from __future__ import annotations

import copy
import logging
import pickle

import pytest
from credbridge.core import Secret, SecretDocument


def test_secret_is_masked_everywhere() -> None:
    secret = Secret(b"hunter2")
    for text in (
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        "%s" % secret,
        repr([secret]),
        repr({"k": secret}),
    ):
        assert "hunter2" not in text
    assert secret.reveal() == b"hunter2"
    assert "hunter2" not in repr(SecretDocument({"password": "hunter2"}))


def test_secret_not_in_logs_or_exceptions(caplog: pytest.LogCaptureFixture) -> None:
    secret = Secret(b"hunter2")
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("t").debug("value %s %r", secret, secret)
    assert "hunter2" not in caplog.text
    try:
        raise ValueError(secret)
    except ValueError as error:
        assert "hunter2" not in str(error)


def test_secret_cannot_be_pickled_and_wipes() -> None:
    secret = Secret(b"hunter2")
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    twin = copy.deepcopy(secret)
    assert twin == secret
    secret.wipe()
    with pytest.raises(ValueError, match="wiped"):
        secret.reveal()
    assert twin.reveal() == b"hunter2"


def test_equality_is_by_value_and_unhashable() -> None:
    assert Secret(b"a") == Secret(b"a")
    assert Secret(b"a") != Secret(b"b")
    with pytest.raises(TypeError):
        hash(Secret(b"a"))


def test_a_secret_is_truthy_even_when_empty() -> None:
    """An empty value is still a value: ``if value:`` must not treat it as missing."""
    empty = Secret(b"")
    assert len(empty) == 0
    assert bool(empty) is True
    assert (empty or None) is empty


WIPE_PROBE = """
import secrets, sys
from credbridge.core import Secret


def in_memory(shifted, shift):
    # Looks for the bytes that `shifted` is `shift` above without ever holding them itself
    # (it would find its own copy): every chunk read is shifted before the search.
    table = bytes((c + shift) % 256 for c in range(256))
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            if "rw" not in fields[1] or (len(fields) > 5 and fields[5].startswith("[v")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            if shifted in chunk.translate(table):
                return True
    return False


# Built byte by byte in a bytearray zeroed below: the Secret's buffer is the only copy made.
value = bytearray(48)
for index in range(len(value)):
    value[index] = b"0123456789abcdef"[secrets.randbelow(16)]
before = bytes((c + 1) % 256 for c in value)
after = bytes((c + 2) % 256 for c in value)
secret = Secret(value)
for index in range(len(value)):
    value[index] = 0
found_before = in_memory(before, 1)
secret.wipe()
print(found_before, in_memory(after, 2))
"""


def test_wipe_overwrites_the_value_in_memory() -> None:
    """In a child process (the suite's canary keeps copies of every value in this one): the
    value is in memory before the wipe (the search works) and nowhere after it."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", WIPE_PROBE], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["True", "False"], result.stdout + result.stderr


def test_a_selected_value_carries_its_documents_lease_and_no_value_shows_in_it() -> None:
    from credbridge.core import Lease, SecretDocument
    from credbridge.core.reference import select

    lease = Lease(version="7", lease_id="pki/issue/web/abc", expires_at=2.0e9, renewable=True)
    document = SecretDocument({"cert": "PEM-CERT", "key": "PEM-KEY"}, lease=lease)
    key = select(document, "key", "vault:pki/issue/web#key")
    assert key.reveal() == b"PEM-KEY"
    assert key.lease is lease
    raw = Secret(b'{"a": "x"}', lease=lease)
    assert select(raw, "a", "file:x#a").lease is lease
    assert copy.copy(raw).lease is lease
    assert "PEM" not in repr(lease) and "x" not in repr(raw)
    assert select(Secret(b"plain"), None, "env:X").lease is None
