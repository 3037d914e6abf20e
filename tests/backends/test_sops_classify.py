"""How each sops failure is typed and worded (backends/sops_cli.py ``classify``).

The end-to-end tests (tests/backends/test_sops.py) provoke what the real sops binary can be made to do
here (a wrong key, a tampered file, a missing file, a bad .sops.yaml). Some exit codes cannot
be provoked without a KMS, a terminal or a signal at the right moment; this table pins every
branch against sops's own exit codes (``cmd/sops/codes/codes.go``) and messages.
"""

from __future__ import annotations

import pytest
from credbridge.backends.sops_cli import classify
from credbridge.core.errors import Forbidden, InvalidValue, NotFound, Unreachable

WHAT = "secrets.yaml"
HAND = f"run sops decrypt on {WHAT} by hand to see sops's own message"
MAC = f"{WHAT} failed its integrity check"


@pytest.mark.parametrize(
    ("rc", "stderr", "kind", "problem"),
    [
        (-9, "", Unreachable, f"sops was killed by signal 9 while handling {WHAT}"),
        (-1, "", Unreachable, f"sops was killed by signal 1 while handling {WHAT}"),
        (128, "Error: no identity matched any of the recipients", Forbidden,
         f"no key could decrypt {WHAT}: the age key(s) given match none of its recipients"),
        (128, "failed to open SOPS_AGE_KEY_FILE", Forbidden,
         f"no key could decrypt {WHAT}: SOPS_AGE_KEY_FILE (or age_key_file) names a file that "
         "cannot be read"),
        (128, "malformed secret key", Forbidden,
         f"no key could decrypt {WHAT}: an age key given is malformed"),
        (128, "failed to parse input", Forbidden,
         f"no key could decrypt {WHAT}: an age key given is malformed"),
        (128, "| something | else |", Forbidden,
         f"no key could decrypt {WHAT}: none of its master keys (age, PGP, KMS) could be used"),
        (100, "", NotFound, f"no file {WHAT}"),
        (1, "Error: cannot operate on non-existent file", NotFound, f"no file {WHAT}"),
        (2, "", Forbidden, f"sops cannot read {WHAT} (permission denied?)"),
        (51, "", InvalidValue,
         f"{MAC} (MAC mismatch): tampered or edited without sops"),
        (52, "", InvalidValue,
         f"{MAC} (the MAC is missing): tampered or edited without sops"),
        (24, "", InvalidValue,
         f"{MAC} (a value or the MAC cannot be decrypted): tampered or corrupted"),
        (25, "", InvalidValue,
         f"{MAC} (a value or the MAC cannot be decrypted): tampered or corrupted"),
        (1, "Error unmarshalling input yaml", InvalidValue,
         f"{WHAT} cannot be read as yaml (the type comes from the extension; set ?type= or "
         "rename the file)"),
        (1, "Error parsing file", InvalidValue,
         f"{WHAT} cannot be read as yaml (the type comes from the extension; set ?type= or "
         "rename the file)"),
        (1, "invalid character 'x' looking for beginning of value", InvalidValue,
         f"{WHAT} cannot be read as yaml (the type comes from the extension; set ?type= or "
         "rename the file)"),
        (1, "error loading config: no matching creation rules found", InvalidValue,
         f"no .sops.yaml creation rule matches {WHAT} and no recipients were given (add a rule, "
         "set config, or set age_recipients in [store])"),
        (1, "config file not found", InvalidValue,
         f"no .sops.yaml creation rule matches {WHAT} and no recipients were given (add a rule, "
         "set config, or set age_recipients in [store])"),
        (5, "", InvalidValue, f"sops cannot read its .sops.yaml for {WHAT}"),
        (61, "", InvalidValue, f"sops cannot read its .sops.yaml for {WHAT}"),
        (3, "", Unreachable, f"sops failed on {WHAT} (exit 3, CouldNotWriteOutputFile); {HAND}"),
        (6, "", Unreachable,
         f"sops failed on {WHAT} (exit 6, ErrorInvalidKMSEncryptionContextFormat); {HAND}"),
        (23, "", Unreachable, f"sops failed on {WHAT} (exit 23, ErrorEncryptingTree); {HAND}"),
        (53, "", Unreachable, f"sops failed on {WHAT} (exit 53, unknown); {HAND}"),
        (62, "", Unreachable, f"sops failed on {WHAT} (exit 62, unknown); {HAND}"),
        (99, "", Unreachable, f"sops failed on {WHAT} (exit 99, unknown); {HAND}"),
        (101, "", Unreachable, f"sops failed on {WHAT} (exit 101, unknown); {HAND}"),
        (0, "", Unreachable, f"sops failed on {WHAT} (exit 0, unknown); {HAND}"),
    ],
)  # fmt: skip
def test_each_sops_failure_is_typed_and_worded(
    rc: int, stderr: str, kind: type[Exception], problem: str
) -> None:
    error = classify(rc, stderr.encode(), what=WHAT, kind="yaml")
    assert type(error) is kind
    assert error.problem == problem


@pytest.mark.parametrize(
    ("value", "decoded"),
    [
        ("plain", b"plain"),
        ("base64:AAEC/w==", b"\x00\x01\x02\xff"),
        (5, b"5"),
        (1.5, b"1.5"),
        (True, b"true"),
    ],
)
def test_store_values_decode_as_written_or_as_hand_edited_json(
    value: object, decoded: bytes
) -> None:
    from credbridge.backends.sops import decode_value

    assert decode_value(value, "key") == decoded


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("base64:AA$AA", "key is not valid base64 after 'base64:'"),  # "$" is not skipped
        ("base64:AAE", "key is not valid base64 after 'base64:'"),
        (None, "key is not a string"),
        (["a"], "key is not a string"),
    ],
)
def test_store_values_that_cannot_be_decoded_are_named(value: object, problem: str) -> None:
    from credbridge.backends.sops import decode_value

    with pytest.raises(InvalidValue) as error:
        decode_value(value, "key")
    assert error.value.problem == problem
