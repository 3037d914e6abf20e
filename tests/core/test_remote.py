"""credbridge.core.remote: the redactor shared by networked sources and the launchers."""

from __future__ import annotations

import base64
import json
import os
import pickle

import pytest
from credbridge.core import NotFound, PluginError, Secret, SecretDocument
from credbridge.core.remote import (
    MAX_WINDOWS_PER_FORM,
    WINDOW,
    WITHHELD,
    Redactor,
    caused_by,
    connection_reason,
    one_line,
    optional_import,
    renamed,
)

VALUE = b"s3cr3t-Value-0123456789-xyz"


@pytest.fixture
def redactor() -> Redactor:
    r = Redactor()
    r.add(Secret(VALUE))
    return r


@pytest.mark.parametrize("start", range(len(VALUE) - WINDOW + 1))
def test_every_8_byte_part_of_the_value_is_caught(redactor: Redactor, start: int) -> None:
    part = VALUE[start : start + WINDOW]
    assert redactor.quotes_secret(b"error near '" + part + b"' in request")
    assert redactor.detail("error near " + part.decode()) == WITHHELD


def test_seven_bytes_are_not_enough(redactor: Redactor) -> None:
    assert not redactor.quotes_secret(VALUE[3:10])
    assert redactor.detail("could not parse body") == "could not parse body"


@pytest.mark.parametrize("shift", [0, 1, 2])
def test_base64_of_any_part_is_caught(redactor: Redactor, shift: int) -> None:
    # The Base64 of a part of the value starting at any offset, standard and URL-safe.
    encoded = base64.b64encode(VALUE[shift + 3 : shift + 3 + 12]).rstrip(b"=")
    assert redactor.quotes_secret(encoded)
    assert redactor.quotes_secret(base64.urlsafe_b64encode(b"\xfb\xff" + VALUE)[4:20])
    whole = base64.b64encode(VALUE)
    assert redactor.quotes_secret(whole[5 : 5 + WINDOW])


def test_hex_both_cases_and_json_escapes_are_caught(redactor: Redactor) -> None:
    assert redactor.quotes_secret(VALUE.hex()[10:20])
    assert redactor.quotes_secret(VALUE.hex().upper()[10:20])
    slashed = Redactor()
    slashed.add("pa/ss/wo/rd/12")
    # A JSON answer may escape "/" as "\/": the unescaped text is checked too.
    assert slashed.quotes_secret(json.dumps("pa/ss/wo/rd/12").replace("/", "\\/"))
    assert slashed.quotes_secret('{"msg": "\\u0070a/ss/wo/r"}')


def test_short_values_match_whole_and_min_length() -> None:
    r = Redactor(min_length=1)
    r.add(b"abc")
    assert r.quotes_secret(b"xxabcxx") and not r.quotes_secret(b"ab c")
    default = Redactor()
    default.add("abc")  # shorter than min_length 4: not indexed
    assert not default and not default.quotes_secret("abc")
    default.add("abcd")
    assert default.quotes_secret("..abcd..")


def test_documents_index_every_leaf() -> None:
    r = Redactor()
    r.add_document(SecretDocument({"db": {"password": "leaf-password-1"}, "list": ["leaf-two-xx"]}))
    assert r.quotes_secret("password-1 is wrong")
    assert r.quotes_secret("leaf-two")


def test_the_index_holds_no_plaintext(redactor: Redactor) -> None:
    dumped = pickle.dumps((redactor._windows, redactor._short))  # the whole state
    for start in range(len(VALUE) - 3):
        assert VALUE[start : start + 4] not in dumped
    assert VALUE.hex().encode()[:8] not in dumped


def test_large_values_are_indexed_at_a_stride_with_bounded_memory() -> None:
    big = os.urandom(3 * MAX_WINDOWS_PER_FORM)
    r = Redactor()
    r.add(big)
    # raw, 3x2 Base64 forms at most, 2 hex forms: each bounded.
    assert len(r._windows) <= 9 * MAX_WINDOWS_PER_FORM
    stride = -(-(len(big) - WINDOW + 1) // MAX_WINDOWS_PER_FORM)
    assert r.quotes_secret(big[1000 : 1000 + WINDOW + stride - 1])


def test_many_values_one_lookup_per_window() -> None:
    r = Redactor()
    values = [os.urandom(32) for _ in range(500)]
    for value in values:
        r.add(value)
    assert all(r.quotes_secret(v[10:18]) for v in values[::50])
    assert not r.quotes_secret(b"an ordinary error message without secrets in it")


def test_detail_is_one_line_and_short(redactor: Redactor) -> None:
    assert redactor.detail("line one\nline two\r\n\tthree") == "line one line two three"
    assert len(redactor.detail("x" * 1000)) == 200
    assert redactor.quote(None) == "" and redactor.quote("  ") == ""
    assert redactor.quote("bad") == ": bad"
    # Two lines that are harmless alone but join into a part of a value are withheld.
    spaced = Redactor()
    spaced.add("abcd efgh")
    assert not spaced.quotes_secret("abcd\nefgh")
    assert one_line("abcd\nefgh") == "abcd efgh"
    assert spaced.detail("abcd\nefgh") == WITHHELD


def test_clear_forgets(redactor: Redactor) -> None:
    redactor.clear()
    assert not redactor.quotes_secret(VALUE)


def test_optional_import_names_the_extra() -> None:
    assert optional_import("json", extra="x", scheme="y") is json
    with pytest.raises(PluginError) as failure:
        optional_import("credbridge_no_such_module", extra="aws", scheme="aws-sm")
    assert str(failure.value) == (
        "aws-sm: references need the Python package 'credbridge_no_such_module', which is not "
        "installed (pip install 'credbridge[aws]')"
    )


def test_error_helpers() -> None:
    error = NotFound("", "no such thing")
    assert str(renamed(error, "x:y")) == "x:y: no such thing"
    inner = ConnectionRefusedError(111, "Connection refused")
    outer = RuntimeError("wrapped")
    outer.__cause__ = inner
    assert caused_by(outer, ConnectionRefusedError) is inner
    assert connection_reason(outer) == "connection refused"
    assert connection_reason(RuntimeError("??")) == "connection failed"


def test_a_one_byte_value_counts_when_asked_to() -> None:
    """The cloud-hypervisor launcher withholds an answer quoting even a 1-byte value."""
    r = Redactor(min_length=0)  # anything below 1 is 1
    r.add(b"k")
    assert r.quotes_secret(b"error near k") and not r.quotes_secret(b"error near j")


def test_one_line_keeps_a_line_of_exactly_the_limit() -> None:
    from credbridge.core.remote import one_line

    assert one_line("x" * 20, limit=20) == "x" * 20
    assert one_line("x" * 21, limit=20) == "x" * 17 + "..."
    assert one_line("a\nb", limit=20) == "a b"


def test_only_a_librarys_retry_warnings_are_demoted(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from credbridge.core.remote import demote_retry_warnings

    name = "credbridge-test-library"
    demote_retry_warnings(name, "Retrying")
    library = logging.getLogger(name)
    with caplog.at_level(logging.INFO):
        library.warning("Retrying (attempt 2) after connection broken")
        library.warning("Connection pool is full")
        library.error("Retrying failed for good")
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == name] == [
        ("WARNING", "Connection pool is full"),
        ("ERROR", "Retrying failed for good"),
    ]


def test_a_missing_dependency_of_a_client_library_is_named() -> None:
    from credbridge.core.remote import optional_import

    with pytest.raises(PluginError) as error:
        optional_import("credbridge_no_such_pkg.client", extra="vault", scheme="vault")
    assert str(error.value) == (
        "vault: references need the Python package 'credbridge_no_such_pkg', which is not "
        "installed (pip install 'credbridge[vault]')"
    )


def test_tls_reason_keeps_only_the_verification_reason() -> None:
    import ssl

    from credbridge.core.remote import tls_reason

    error = ssl.SSLCertVerificationError(
        1,
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate "
        "in certificate chain (_ssl.c:1006)",
    )
    assert tls_reason(error, ca_hint="set ca_cert") == (
        "certificate verify failed: self-signed certificate in certificate chain (set ca_cert)"
    )
    assert tls_reason(error) == (
        "certificate verify failed: self-signed certificate in certificate chain"
    )


@pytest.mark.parametrize(
    "text",
    [
        "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required",
        "[SSL: CERTIFICATE_REQUIRED] (_ssl.c:2580)",  # OpenSSL's code alone
        "peer says: certificate required",  # the words alone (another TLS stack)
    ],
)
def test_tls_reason_names_a_required_client_certificate_in_either_spelling(text: str) -> None:
    import ssl

    from credbridge.core.remote import tls_reason

    assert tls_reason(ssl.SSLError(1, text)) == "the server requires a client certificate"


def test_capped_library_loggers_keep_their_retry_lines_at_debug() -> None:
    import logging

    from credbridge.core.remote import cap_library_logging

    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.DEBUG)
    try:
        cap_library_logging(["cbtest-lib"], keep_debug=["cbtest-lib.retries"])
        assert logging.getLogger("cbtest-lib").level == logging.INFO
        assert logging.getLogger("cbtest-lib.retries").level == logging.DEBUG
    finally:
        root.setLevel(previous)


def test_fan_out_runs_a_single_task_inline_and_many_on_threads() -> None:
    import threading

    from credbridge.core.remote import fan_out

    seen: list[str] = []
    fan_out([lambda: seen.append(threading.current_thread().name)], workers=4, name="cbtest")
    assert seen == [threading.current_thread().name]
    seen.clear()
    fan_out([lambda: seen.append(threading.current_thread().name)] * 2, workers=4, name="cbtest")
    assert len(seen) == 2 and all(name.startswith("cbtest") for name in seen)


def test_short_values_are_indexed_with_their_base64_and_hex() -> None:
    r = Redactor(min_length=1)
    r.add(b"abc")
    assert r.quotes_secret(base64.b64encode(b"abc"))
    assert r.quotes_secret(b"abc".hex().encode())


def test_a_demoted_retry_warning_shows_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from credbridge.core.remote import demote_retry_warnings

    name = "credbridge-test-library-2"
    demote_retry_warnings(name, "Retrying")
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="credbridge"):
        logging.getLogger(name).warning("Retrying (attempt 2)")
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == name] == [
        ("DEBUG", "Retrying (attempt 2)")
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)",
         "the server does not speak TLS there (use an http:// address?)"),
        ("Hostname mismatch, certificate is not valid for 'x'. (_ssl.c:1006)",
         "the certificate is not valid for this host name"),
        ("[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required",
         "the server requires a client certificate"),
        ("[SSL: UNSAFE_LEGACY_RENEGOTIATION_DISABLED] unsafe legacy renegotiation",
         "unsafe legacy renegotiation disabled"),
        ("EOF occurred in violation of protocol", "handshake failed"),
    ],
)  # fmt: skip
def test_tls_reason_names_each_kind_of_failure(text: str, reason: str) -> None:
    import ssl

    from credbridge.core.remote import tls_reason

    assert tls_reason(ssl.SSLError(1, text)) == reason


def test_values_in_documents_and_json_escapes_are_indexed() -> None:
    r = Redactor(min_length=4)
    r.add_document(SecretDocument({"n": 12345678, "flag": True, "none": None, "s": ["€-value"]}))
    assert r.quotes_secret(b"got 12345678 back")  # numbers are values too
    assert not r.quotes_secret(b"True") and not r.quotes_secret(b"None")
    assert r.quotes_secret(b'"\\u20ac-value"')  # a JSON-escaped quote of the value


def test_a_value_at_the_very_end_or_alone_is_caught() -> None:
    short = Redactor(min_length=1)
    short.add(b"abc")
    long = Redactor()
    long.add(b"0123456789abcdef")
    for redactor, value in ((short, b"abc"), (long, b"0123456789abcdef")):
        assert redactor.quotes_secret(b"error: " + value)
        assert redactor.quotes_secret(value)


def test_fan_out_with_one_worker_runs_inline() -> None:
    import threading

    from credbridge.core.remote import fan_out

    seen: list[str] = []
    fan_out([lambda: seen.append(threading.current_thread().name)] * 3, workers=1, name="cbt")
    assert seen == [threading.current_thread().name] * 3


@pytest.mark.parametrize("offset", range(9))
def test_any_9_byte_piece_of_a_100_kb_value_is_caught(offset: int) -> None:
    """Up to 65,536 windows per form (docs: a 100 kB form is indexed every 2 bytes, so any
    9-byte run is caught wherever it starts)."""
    big = os.urandom(50_000).hex().encode()
    r = Redactor()
    r.add(big, derived=False)
    start = 40_000 + offset
    assert r.quotes_secret(b"error near " + big[start : start + 9] + b" here")


@pytest.mark.parametrize(
    "text", ["[SSL: WRONG_VERSION_NUMBER] (_ssl.c:1006)", "ssl: wrong version number"]
)
def test_tls_reason_names_plain_http_in_either_spelling(text: str) -> None:
    import ssl

    from credbridge.core.remote import tls_reason

    assert tls_reason(ssl.SSLError(1, text)) == (
        "the server does not speak TLS there (use an http:// address?)"
    )


def test_a_redactor_is_true_once_it_holds_any_value() -> None:
    empty = Redactor()
    assert not empty
    long_only = Redactor()
    long_only.add(b"a value longer than a window", derived=False)
    short_only = Redactor()
    short_only.add(b"abcd", derived=False)
    assert long_only and short_only


def test_an_empty_value_is_never_indexed_whatever_min_length() -> None:
    """An empty string is part of every reply: indexed, it would withhold them all."""
    r = Redactor(min_length=0)
    r.add(b"")
    assert not r
    assert r.detail("a harmless reply") == "a harmless reply"


def test_a_server_text_is_shown_only_when_disclosed_and_clean() -> None:
    """A pending server text is no part of the message (an error that leaves resolution early
    never shows it); disclose() shows it when no value of the run is in it, else withholds it,
    and copies (renamed, for_credential, retyped) carry it until then."""
    from credbridge.core import Forbidden, Unreachable
    from credbridge.core.remote import WITHHELD, Redactor, disclose, renamed

    token = Redactor()
    token.add("token-abcdefghijkl")
    clean = Unreachable("vault:a", "answered 400", server_text=token.defer("bad input"))
    late = Unreachable("vault:b", "answered 400", server_text=token.defer("near late-value-123"))
    leaks_token = Forbidden("vault:c", "login failed", server_text=token.defer("token-abcdefgh"))
    assert str(clean) == "vault:a: answered 400"
    assert "late-value" not in str(late)
    copies = [renamed(clean, "vault:a#x"), late.for_credential("t", "c"), leaks_token.retyped("")]
    assert all(copy.server_text is not None for copy in copies)
    values = Redactor()
    values.add(Secret(b"late-value-123"))
    disclose([clean, late, leaks_token, *copies], values)
    assert str(clean) == "vault:a: answered 400: bad input"
    assert str(late) == f"vault:b: answered 400: {WITHHELD}"
    assert str(leaks_token) == f"vault:c: login failed: {WITHHELD}"
    assert str(copies[0]) == "vault:a#x: answered 400: bad input"
    assert str(copies[1]).endswith(f"answered 400: {WITHHELD}")
    assert all(error.server_text is None for error in (clean, late, leaks_token, *copies))
    disclose([clean], values)  # once only
    assert str(clean) == "vault:a: answered 400: bad input"
    assert token.defer("  \n ") is None
